"""Post-processing on hand-built logits with known answers."""

import pytest
import torch

from m2f_lightning.inference import (
    instance_inference,
    panoptic_inference,
    postprocess,
    resize_to_original,
    semantic_inference,
)

BIG = 10.0  # a confident logit


def class_logits(*rows: tuple[int, float], num_classes: int = 3) -> torch.Tensor:
    """One row per query: (class, logit); other classes and no-object at 0."""
    out = torch.zeros(len(rows), num_classes + 1)
    for q, (c, v) in enumerate(rows):
        out[q, c] = v
    return out


def box(h, w, y0, y1, x0, x1, inside=BIG, outside=-BIG) -> torch.Tensor:
    m = torch.full((h, w), outside)
    m[y0:y1, x0:x1] = inside
    return m


def test_semantic_is_class_prob_times_mask_prob_summed() -> None:
    """Every score equals Σ_q softmax(class logits of q)[c] · sigmoid(mask logit of q at the
    pixel), computed here with plain Python floats (no-object dropped after the softmax)."""
    import math

    g = torch.Generator().manual_seed(0)
    mask_cls = 2 * torch.randn(5, 4, generator=g)  # 5 queries, 3 classes + no-object
    mask_pred = 3 * torch.randn(5, 3, 2, generator=g)
    scores = semantic_inference(mask_cls, mask_pred)
    assert scores.shape == (3, 3, 2)
    for c in range(3):
        for y in range(3):
            for x in range(2):
                expected = 0.0
                for q in range(5):
                    row = [math.exp(v) for v in mask_cls[q].tolist()]
                    prob = row[c] / sum(row)
                    expected += prob / (1 + math.exp(-float(mask_pred[q, y, x])))
                assert float(scores[c, y, x]) == pytest.approx(expected, rel=1e-5)


def test_panoptic_overlap_threshold_and_stuff_merging() -> None:
    h, w = 8, 8
    mask_cls = class_logits((0, BIG), (0, BIG), (1, BIG), (1, BIG), (2, 0.5), num_classes=3)
    mask_pred = torch.stack(
        [
            box(h, w, 0, 4, 0, 4),  # thing A
            box(h, w, 0, 4, 4, 8),  # thing B
            box(h, w, 4, 8, 0, 4),  # stuff 1, part one
            box(h, w, 4, 8, 4, 8),  # stuff 1, part two → merged with the first
            box(h, w, 0, 8, 0, 8),  # low score → dropped before anything else
        ]
    )
    seg, segments = panoptic_inference(
        mask_cls, mask_pred, thing_ids=[0], object_mask_threshold=0.8
    )
    assert [s["category_id"] for s in segments] == [0, 0, 1]
    assert [s["isthing"] for s in segments] == [True, True, False]
    assert (seg[4:] == segments[2]["id"]).all()
    assert seg[0, 0] != seg[0, 7]


def test_panoptic_drops_a_mostly_hidden_segment_and_leaves_void() -> None:
    h, w = 8, 8
    mask_cls = class_logits((0, BIG), (0, BIG + 1))
    big = box(h, w, 0, 6, 0, 6)
    small_on_top = box(h, w, 0, 6, 0, 5, inside=BIG * 2)  # covers 5/6 of the first query
    seg, segments = panoptic_inference(mask_cls, torch.stack([big, small_on_top]), thing_ids=[0])
    assert len(segments) == 1  # the first query keeps only 1/6 of its mask < 0.8
    assert (seg[6:] == 0).all()  # void where nothing is kept


def test_panoptic_nothing_above_threshold_is_all_void() -> None:
    seg, segments = panoptic_inference(class_logits((0, 0.1)), box(4, 4, 0, 4, 0, 4)[None], [0])
    assert segments == [] and (seg == 0).all()


def test_instance_topk_scores_and_thing_filter() -> None:
    mask_cls = class_logits((0, BIG), (1, BIG), num_classes=2)
    mask_pred = torch.stack([box(4, 4, 0, 2, 0, 2), box(4, 4, 0, 4, 0, 4, inside=0.5)])
    out = instance_inference(mask_cls, mask_pred, topk=4)
    assert len(out["scores"]) == 4
    top = out["scores"].argmax()
    assert out["labels"][top] == 0  # confident class and confident mask
    assert out["masks"][top].sum() == 4
    only_things = instance_inference(mask_cls, mask_pred, topk=4, thing_ids=[1])
    assert set(only_things["labels"].tolist()) == {1}
    expected = torch.softmax(mask_cls[1], -1)[1] * torch.sigmoid(torch.tensor(0.5))
    assert only_things["scores"].max().item() == pytest.approx(expected.item(), rel=1e-5)


def test_resize_crops_padding_before_resizing() -> None:
    logits = torch.full((1, 8, 8), -BIG)
    logits[0, :6, :4] = BIG  # the valid region of a 24x16 image padded to 32x32, at 1/4
    out = resize_to_original(
        logits, image_size=(24, 16), padded_size=(32, 32), original_size=(48, 32)
    )
    assert out.shape == (1, 48, 32)
    assert (out > 0).float().mean() > 0.95


def test_postprocess_returns_every_result_of_the_panoptic_task() -> None:
    q, k = 4, 3
    outputs = {
        "pred_logits": torch.randn(2, q, k + 1),
        "pred_masks": torch.randn(2, q, 8, 8),
        "padded_size": (32, 32),
    }
    results = postprocess(
        outputs, [(32, 30), (20, 32)], [(64, 60), (40, 64)], "panoptic", thing_ids=[0]
    )
    assert results[1]["sem_seg"].shape == (3, 40, 64)
    assert results[1]["panoptic_seg"].shape == (40, 64)
    assert results[0]["instances"]["masks"].shape[1:] == (64, 60)
    # the full-resolution path equals resizing first and running the plain functions
    full = resize_to_original(outputs["pred_masks"][0], (32, 30), (32, 32), (64, 60))
    assert torch.allclose(
        results[0]["sem_seg"], semantic_inference(outputs["pred_logits"][0], full), atol=1e-5
    )
    inst = instance_inference(outputs["pred_logits"][0], full, thing_ids=[0])
    assert torch.allclose(results[0]["instances"]["scores"], inst["scores"], atol=1e-6)
    with pytest.raises(ValueError, match="unknown task"):
        postprocess(outputs, [(32, 32)] * 2, [(32, 32)] * 2, "depth")
