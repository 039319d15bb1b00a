"""Post-processing on hand-built logits with known answers, equality with the straightforward
full-resolution computation (a copy of the previous implementation, below), and bounded memory
on a large image."""

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from m2f_lightning import inference
from m2f_lightning.inference import (
    SemanticScores,
    _RowResizer,
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
    assert isinstance(results[1]["sem_seg"], SemanticScores)
    assert results[1]["sem_seg"].shape == (3, 40, 64)
    assert results[1]["panoptic_seg"].shape == (40, 64)
    assert results[0]["instances"]["masks"].shape[1:] == (64, 60)
    # the full-resolution path equals resizing first and running the plain functions
    full = resize_to_original(outputs["pred_masks"][0], (32, 30), (32, 32), (64, 60))
    assert torch.allclose(
        results[0]["sem_seg"].full(), semantic_inference(outputs["pred_logits"][0], full), atol=1e-5
    )
    inst = instance_inference(outputs["pred_logits"][0], full, thing_ids=[0])
    assert torch.allclose(results[0]["instances"]["scores"], inst["scores"], atol=1e-6)
    with pytest.raises(ValueError, match="unknown task"):
        postprocess(outputs, [(32, 32)] * 2, [(32, 32)] * 2, "depth")


# ---- the previous implementation, verbatim: everything at the original size at once ----


def reference_postprocess(
    outputs: dict[str, Any],
    image_sizes: Sequence[Sequence[int]],
    original_sizes: Sequence[Sequence[int]],
    task: str,
    thing_ids: Iterable[int] = (),
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    topk: int = 100,
) -> list[dict[str, Any]]:
    """The previous `postprocess`: [Q, H, W] logits and [K, H, W] scores at the original size,
    resized 16 queries at a time by `resize_to_original` (the plain F.interpolate order)."""

    def full_resolution(logits, image_size, original_size):
        if len(logits) == 0:
            return logits.new_zeros((0, *original_size))
        return torch.cat(
            [
                resize_to_original(chunk, image_size, padded_size, original_size)
                for chunk in logits.split(16)
            ]
        )

    thing_ids = list(thing_ids)
    padded_size = outputs["padded_size"]
    results = []
    for i, (image_size, original_size) in enumerate(zip(image_sizes, original_sizes, strict=True)):
        mask_cls, mask_logits = outputs["pred_logits"][i], outputs["pred_masks"][i]
        result: dict[str, Any] = {}
        if task in ("panoptic", "semantic"):
            probs = F.softmax(mask_cls.float(), dim=-1)[:, :-1]
            sem = None
            for start in range(0, len(mask_logits), 16):
                chunk = resize_to_original(
                    mask_logits[start : start + 16], image_size, padded_size, original_size
                )
                part = torch.einsum("qc,qhw->chw", probs[start : start + 16], chunk.sigmoid())
                sem = part if sem is None else sem + part
            result["sem_seg"] = sem
        if task == "panoptic":
            num_classes = mask_cls.shape[-1] - 1
            scores, labels = F.softmax(mask_cls.float(), dim=-1).max(-1)
            keep = labels.ne(num_classes) & (scores > object_mask_threshold)
            kept = full_resolution(mask_logits[keep], image_size, original_size)
            result["panoptic_seg"], result["segments_info"] = panoptic_inference(
                mask_cls[keep], kept, thing_ids, object_mask_threshold, overlap_threshold
            )
        if task in ("panoptic", "instance"):
            pairs = inference._topk_pairs(mask_cls, topk, thing_ids if task == "panoptic" else None)
            unique_q, inverse = torch.unique(pairs[2], return_inverse=True)
            full = full_resolution(mask_logits[unique_q], image_size, original_size)[inverse]
            result["instances"] = inference._score_instances(pairs[0], pairs[1], full)
        results.append(result)
    return results


def realistic_outputs(
    num_queries: int = 40,
    num_classes: int = 12,
    mask_size: tuple[int, int] = (50, 76),
    padded_size: tuple[int, int] = (200, 304),
    seed: int = 0,
) -> dict[str, Any]:
    """Outputs shaped like a trained model's: each query a soft blob (logits ±10 inside/outside,
    with noise) on a grid cell of its own, so that masks overlap at their borders only; two
    thirds of the queries confident of a class, the rest of no-object."""
    g = torch.Generator().manual_seed(seed)
    h, w = mask_size
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    side = int(num_queries**0.5) + 1
    cell = torch.tensor([h / side, w / side])
    grid = torch.randperm(side * side, generator=g)[:num_queries]
    centre = (torch.stack([grid // side, grid % side], 1) + 0.5) * cell
    centre = centre + (torch.rand(num_queries, 2, generator=g) - 0.5) * cell / 2
    radius = cell.min() * (0.4 + 0.5 * torch.rand(num_queries, generator=g))
    dist = ((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2).sqrt()
    masks = 10 * (1 - dist / radius[:, None, None]) + torch.randn(num_queries, h, w, generator=g)
    logits = torch.randn(num_queries, num_classes + 1, generator=g)
    classes = torch.randint(0, num_classes, (num_queries,), generator=g)
    confident = torch.arange(num_queries) % 3 != 2
    logits[confident, classes[confident]] += 5 + 3 * torch.rand(int(confident.sum()), generator=g)
    logits[~confident, -1] += 8
    return {"pred_logits": logits[None], "pred_masks": masks[None], "padded_size": padded_size}


# (image size after the test-time resize, original size): two resizes, one, a portrait crop
SIZES = [((200, 300), (480, 720)), ((200, 304), (200, 304)), ((190, 133), (1001, 701))]


@pytest.fixture(params=["whole", "bands"])
def banding(request, monkeypatch) -> str:
    """'bands': every image is resized a few rows (or two queries) at a time, as a large one."""
    if request.param == "bands":
        monkeypatch.setattr(inference.resize, "FULL_FRAME_BYTES", 0)
        monkeypatch.setattr(inference.resize, "CHUNK_BYTES", 2_000_000)
    return request.param


@pytest.mark.parametrize("image_size,original_size", SIZES)
def test_row_resizer_is_bit_identical_to_resize_to_original(image_size, original_size) -> None:
    logits = torch.randn(5, 50, 76) * 6
    expected = resize_to_original(logits, image_size, (200, 304), original_size)
    resizer = _RowResizer(logits, image_size, (200, 304), original_size)
    for step in (1, 7, 64):
        bands = [
            resizer.rows(start, min(start + step, original_size[0]))
            for start in range(0, original_size[0], step)
        ]
        assert torch.equal(torch.cat(bands, dim=1), expected)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("maps", [1, 3, 4])
def test_row_resizer_is_bit_identical_on_any_thread_count(threads, maps, monkeypatch) -> None:
    """On one thread PyTorch resizes inputs of exactly 3 channels by another kernel (other
    rounding): the bands must still equal the whole resize, whatever the number of maps."""
    if threads > 1 and os.environ.get("M2F_TEST_THREADS") == "1":
        pytest.skip("mutation runs stay on one thread (forked workers and OpenMP)")
    monkeypatch.setattr(inference.resize, "_MODE", {})  # probe again on this thread count
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        logits = torch.randn(maps, 50, 76, generator=torch.Generator().manual_seed(maps)) * 6
        expected = resize_to_original(logits, (200, 300), (200, 304), (480, 720))
        resizer = _RowResizer(logits, (200, 300), (200, 304), (480, 720))
        bands = [resizer.rows(start, min(start + 37, 480)) for start in range(0, 480, 37)]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(torch.cat(bands, dim=1), expected)


@pytest.mark.parametrize("image_size,original_size,seed", [(*s, i) for i, s in enumerate(SIZES)])
def test_panoptic_and_instances_equal_the_full_resolution_computation(
    banding, image_size, original_size, seed
) -> None:
    """Bit for bit: id map, segments_info (ids, classes, scores), instance masks, scores, labels."""
    outputs = realistic_outputs(seed=seed)
    things = list(range(6))
    new = postprocess(outputs, [image_size], [original_size], "panoptic", things)[0]
    old = reference_postprocess(outputs, [image_size], [original_size], "panoptic", things)[0]
    assert len(old["segments_info"]) >= 3  # the inputs exercise the panoptic rules
    assert new["segments_info"] == old["segments_info"]
    assert torch.equal(new["panoptic_seg"], old["panoptic_seg"])
    for key in ("masks", "scores", "labels"):
        assert torch.equal(new["instances"][key], old["instances"][key]), key
    new = postprocess(outputs, [image_size], [original_size], "instance", topk=50)[0]
    old = reference_postprocess(outputs, [image_size], [original_size], "instance", topk=50)[0]
    for key in ("masks", "scores", "labels"):
        assert torch.equal(new["instances"][key], old["instances"][key]), key


@pytest.mark.parametrize("image_size,original_size", SIZES)
def test_semantic_equals_the_full_resolution_computation(
    banding, image_size, original_size
) -> None:
    """Whole image: scores and class map bit for bit. In bands the sum over queries is a matrix
    product of another shape, so scores may differ in the last bits (≤ 1e-6) and the class map
    only where the two best classes are that close."""
    outputs = realistic_outputs(seed=2)
    # the panoptic path's scores (mask logits resized first): the semantic-only path follows the
    # official order instead (tests/test_fidelity_eval.py)
    new = postprocess(outputs, [image_size], [original_size], "panoptic")[0]["sem_seg"]
    old = reference_postprocess(outputs, [image_size], [original_size], "panoptic")[0]["sem_seg"]
    assert new.shape == old.shape
    class_map = new.argmax(0)
    assert class_map.dtype == torch.int64 and class_map.shape == old.shape[1:]
    if banding == "whole":
        assert torch.equal(new.full(), old)
        assert torch.equal(class_map, old.argmax(0))
        return
    assert torch.allclose(new.full(), old, rtol=0, atol=1e-6)
    top2 = old.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-5
    assert torch.equal(class_map[clear], old.argmax(0)[clear])
    assert (class_map != old.argmax(0)).sum() <= (~clear).sum()


def test_semantic_scores_move_and_reject_other_dims() -> None:
    outputs = realistic_outputs()
    scores = postprocess(outputs, [(200, 300)], [(400, 600)], "panoptic")[0]["sem_seg"]
    class_map = scores.argmax(0)
    assert scores.argmax(0) is class_map  # computed once
    assert torch.equal(scores.cpu().argmax(0), class_map)
    with pytest.raises(ValueError, match="class dimension"):
        scores.argmax(1)


BOUNDED_MEMORY_SCRIPT = """
import json, resource, sys, torch
from m2f_lightning.inference import postprocess
from tests.test_inference import realistic_outputs
q, k, h, w = 50, 20, 2000, 3000
outputs = realistic_outputs(q, k, (200, 300), (800, 1200), seed=3)
torch.sigmoid(torch.randn(64, 800, 1200))  # warm the allocator and kernels up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = postprocess(outputs, [(800, 1200)], [(h, w)], sys.argv[1], range(10), topk=10)[0]
if "sem_seg" in result:
    result["sem_seg"].argmax(0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": peak - before, "full": q * h * w * 4}))
"""


@pytest.mark.parametrize("task", ["panoptic", "semantic"])  # panoptic includes instances
def test_a_large_image_is_post_processed_in_bounded_memory(task) -> None:
    """2000×3000 original size, 50 queries, 20 classes: [Q, H, W] float32 logits would be 1.2 GB
    and [K, H, W] scores 480 MB; the peak resident memory grows by far less (the results are a
    24 MB id map, ten 6 MB bool masks and a 48 MB class map)."""
    run = subprocess.run(
        [sys.executable, "-c", BOUNDED_MEMORY_SCRIPT, task],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["growth"] < measured["full"] / 6, measured
