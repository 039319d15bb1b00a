"""Post-processing invariants on random logits (hypothesis): panoptic segments partition the
labelled pixels, the full-resolution paths equal the low-resolution functions resized."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from m2f_lightning import inference
from m2f_lightning.inference import (
    instance_inference,
    panoptic_inference,
    postprocess,
    resize_to_original,
    semantic_inference,
)

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def logits(draw, max_queries: int = 6, max_classes: int = 4, max_side: int = 6):
    """(class logits [Q, K+1], mask logits [Q, H, W], thing ids) with confident values."""
    q = draw(st.integers(1, max_queries))
    k = draw(st.integers(1, max_classes))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mask_cls = 4 * torch.randn(q, k + 1, generator=g)
    mask_pred = 4 * torch.randn(q, h, w, generator=g)
    things = draw(st.sets(st.integers(0, k - 1)))
    return mask_cls, mask_pred, sorted(things)


@SETTINGS
@given(logits(), st.floats(0.0, 0.95), st.floats(0.0, 1.0))
def test_panoptic_segments_partition_the_labelled_pixels(sample, object_threshold, overlap) -> None:
    mask_cls, mask_pred, things = sample
    seg, segments = panoptic_inference(mask_cls, mask_pred, things, object_threshold, overlap)
    ids = [s["id"] for s in segments]
    assert ids == list(range(1, len(segments) + 1))  # unique, consecutive
    # one id per pixel: segments cannot overlap; every labelled pixel belongs to a listed one
    assert set(seg.unique().tolist()) - {0} == set(ids)
    assert sum(int((seg == i).sum()) for i in ids) == int((seg > 0).sum())
    probs = mask_cls.softmax(-1)
    stuff_seen = set()
    for s in segments:
        assert int((seg == s["id"]).sum()) > 0
        assert s["isthing"] == (s["category_id"] in things)
        assert s["score"] > object_threshold
        assert s["category_id"] < mask_cls.shape[1] - 1  # never no-object
        if not s["isthing"]:  # one segment per stuff class
            assert s["category_id"] not in stuff_seen
            stuff_seen.add(s["category_id"])
        # its score is one query's best class probability for that class
        best, label = probs.max(-1)
        assert any(
            abs(float(best[q]) - s["score"]) < 1e-6 and int(label[q]) == s["category_id"]
            for q in range(len(best))
        )
        # every pixel of a segment lies inside its query's mask (sigmoid >= 0.5)
        assert (mask_pred.sigmoid().max(0).values[seg == s["id"]] >= 0.5).all()


@SETTINGS
@given(logits(), st.integers(1, 30))
def test_instances_are_the_top_k_query_class_pairs(sample, topk) -> None:
    mask_cls, mask_pred, _ = sample
    out = instance_inference(mask_cls, mask_pred, topk=topk)
    q, k1 = mask_cls.shape
    probs = mask_cls.softmax(-1)[:, :-1]
    n = min(topk, q * (k1 - 1))
    assert len(out["scores"]) == len(out["labels"]) == len(out["masks"]) == n
    # the class probabilities of the chosen pairs are the n largest
    chosen = sorted(probs.flatten().tolist(), reverse=True)[:n]
    for score, label, mask in zip(out["scores"], out["labels"], out["masks"], strict=True):
        assert 0 <= int(label) < k1 - 1
        assert float(score) <= max(chosen) + 1e-6
        if mask.any():  # score = class prob × mean mask prob inside the binarised mask
            matching = [
                float(probs[i, label]) * float(mask_pred[i].sigmoid()[mask].mean())
                for i in range(q)
                if torch.equal(mask_pred[i] > 0, mask)
            ]
            assert any(abs(m - float(score)) < 1e-5 for m in matching)
        else:
            assert float(score) == pytest.approx(0.0, abs=1e-6)


@SETTINGS
@given(
    st.integers(1, 40),
    st.integers(1, 5),
    st.tuples(st.integers(4, 9), st.integers(4, 9)),
    st.tuples(st.integers(3, 20), st.integers(3, 20)),
    st.sampled_from(["panoptic", "semantic", "instance"]),
    st.integers(0, 1000),
)
def test_full_resolution_results_equal_the_low_resolution_functions(
    queries, classes, low, original, task, seed
) -> None:
    """postprocess (which upsamples QUERY_CHUNK queries at a time, and only the top-k queries)
    gives what the per-image functions give on logits resized to the original size at once."""
    g = torch.Generator().manual_seed(seed)
    hp, wp = 4 * low[0], 4 * low[1]  # padded input size
    image_size = (hp - seed % 3, wp - seed % 4)
    outputs = {
        "pred_logits": 3 * torch.randn(1, queries, classes + 1, generator=g),
        "pred_masks": 3 * torch.randn(1, queries, *low, generator=g),
        "padded_size": (hp, wp),
    }
    things = list(range(0, classes, 2))
    (got,) = postprocess(outputs, [image_size], [original], task, things, topk=7)
    full = resize_to_original(outputs["pred_masks"][0], image_size, (hp, wp), original)
    mask_cls = outputs["pred_logits"][0]
    if task == "panoptic":  # semantic-only: the official order, tests/test_fidelity_eval.py
        torch.testing.assert_close(got["sem_seg"].full(), semantic_inference(mask_cls, full))
    if task == "panoptic":
        seg, segments = panoptic_inference(mask_cls, full, things)
        assert torch.equal(got["panoptic_seg"], seg)
        assert got["segments_info"] == segments
    if task in ("panoptic", "instance"):
        want = instance_inference(mask_cls, full, 7, things if task == "panoptic" else None)
        for key in ("masks", "labels"):
            assert torch.equal(got["instances"][key], want[key]), key
        torch.testing.assert_close(got["instances"]["scores"], want["scores"])


def test_the_chunk_size_is_smaller_than_the_query_counts_tested() -> None:
    assert inference.QUERY_CHUNK < 40  # so the property above crosses chunk boundaries
