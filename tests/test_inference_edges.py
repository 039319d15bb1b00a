"""Edge cases of post-processing, written from the mutants that survived tests/test_inference.py,
tests/test_inference_properties.py and tests/test_tiling.py (SURVIVORS_A_TRIAGE.md): exact ties
with the thresholds (object score, mask probability 0.5, logit 0, overlap fraction), one-pixel
and invisible segments, stuff merging in the id map, the instance score formula and order,
settings forwarded by `predict_results`, and the lazy class scores' interface.

Each panoptic scene is built at the mask logits' resolution, so that `postprocess` (the
full-resolution path) runs without any resize and must give exactly what `panoptic_inference`
gives, and what is worked out by hand here."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from m2f_lightning import inference
from m2f_lightning.inference import (
    InferenceSettings,
    instance_inference,
    panoptic_inference,
    postprocess,
    predict_results,
    semantic_inference,
)
from m2f_lightning.inference.resize import _RowResizer
from tests.test_inference import BIG, realistic_outputs, reference_postprocess

NEVER = -1000.0  # a class logit whose softmax probability is exactly 0 in float32


def prob(logits: list[float], c: int) -> float:
    """Softmax probability of entry c, in Python floats."""
    exps = [math.exp(v) for v in logits]
    return exps[c] / sum(exps)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def outputs_at_mask_size(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> dict:
    """A one-image batch whose padded, image and original sizes are all the mask size."""
    return {
        "pred_logits": mask_cls[None],
        "pred_masks": mask_pred[None],
        "padded_size": tuple(mask_pred.shape[-2:]),
    }


@pytest.fixture(params=["plain", "full_resolution"])
def panoptic(request):
    """`panoptic_inference`, or `postprocess(..., "panoptic")` at the mask size: (id map,
    segments_info) of (class logits, mask logits, thing ids, object threshold, overlap)."""

    def run(mask_cls, mask_pred, things, object_mask_threshold=0.8, overlap_threshold=0.8):
        if request.param == "plain":
            return panoptic_inference(
                mask_cls, mask_pred, things, object_mask_threshold, overlap_threshold
            )
        size = tuple(mask_pred.shape[-2:])
        (result,) = postprocess(
            outputs_at_mask_size(mask_cls, mask_pred),
            [size],
            [size],
            "panoptic",
            things,
            object_mask_threshold,
            overlap_threshold,
        )
        return result["panoptic_seg"], result["segments_info"]

    return run


@pytest.fixture(params=["plain", "full_resolution"])
def instances(request):
    """`instance_inference`, or `postprocess(..., "instance")` at the mask size."""

    def run(mask_cls, mask_pred, topk=100):
        if request.param == "plain":
            return instance_inference(mask_cls, mask_pred, topk=topk)
        size = tuple(mask_pred.shape[-2:])
        outputs = outputs_at_mask_size(mask_cls, mask_pred)
        return postprocess(outputs, [size], [size], "instance", topk=topk)[0]["instances"]

    return run


# ---- panoptic ----


def test_a_query_exactly_at_the_object_threshold_is_dropped(panoptic) -> None:
    mask_cls = torch.tensor([[0.0, NEVER, NEVER]])  # class 0 with probability exactly 1.0
    mask_pred = torch.full((1, 2, 2), BIG)
    seg, segments = panoptic(mask_cls, mask_pred, [0], object_mask_threshold=1.0)
    assert segments == [] and (seg == 0).all()  # "above the threshold": 1.0 is not
    seg, segments = panoptic(mask_cls, mask_pred, [0], object_mask_threshold=0.99)
    assert [s["category_id"] for s in segments] == [0] and (seg == 1).all()


def test_a_pixel_at_mask_probability_one_half_belongs_to_the_segment(panoptic) -> None:
    """sigmoid(0) = 0.5 exactly: inside the query's own mask (≥ 0.5)."""
    mask_cls = torch.tensor([[BIG, 0.0, 0.0]])
    mask_pred = torch.full((1, 3, 4), -BIG)
    mask_pred[0, :2, 1:3] = 0.0
    seg, segments = panoptic(mask_cls, mask_pred, [0])
    assert len(segments) == 1
    expected = torch.zeros(3, 4, dtype=torch.int32)
    expected[:2, 1:3] = 1
    assert torch.equal(seg, expected)


def test_a_one_pixel_segment_is_kept(panoptic) -> None:
    mask_cls = torch.tensor([[BIG, 0.0, 0.0], [0.0, BIG, 0.0]])
    mask_pred = torch.full((2, 3, 3), -BIG)
    mask_pred[0, 1, 1] = BIG  # a one-pixel thing
    mask_pred[1, 0, :] = BIG  # a three-pixel stuff segment
    seg, segments = panoptic(mask_cls, mask_pred, [0])
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segments] == [
        (1, 0, True),
        (2, 1, False),
    ]
    expected = torch.zeros(3, 3, dtype=torch.int32)
    expected[1, 1], expected[0, :] = 1, 2
    assert torch.equal(seg, expected)


def test_a_query_that_wins_only_pixels_outside_its_own_mask_is_no_segment(panoptic) -> None:
    """Query A has the highest score × probability at pixel 0 (probability 0.40 < 0.5: void)
    and its own mask at pixel 1 is won by B: A is visible nowhere, only B is a segment."""
    mask_cls = torch.tensor([[BIG, 0.0], [BIG, 0.0]])  # two things of class 0, equal scores
    mask_pred = torch.tensor([[[-0.4, 0.4]], [[-BIG, BIG]]])  # [2 queries, 1 row, 2 columns]
    seg, segments = panoptic(mask_cls, mask_pred, [0])
    assert [(s["id"], s["category_id"]) for s in segments] == [(1, 0)]
    assert seg.tolist() == [[0, 1]]


def test_a_segment_visible_on_exactly_the_overlap_fraction_is_kept(panoptic) -> None:
    """A's own mask is pixels 0 and 1; B (more confident) wins pixel 1: A keeps 1/2 of it."""
    mask_cls = torch.tensor([[BIG, 0.0], [BIG, 0.0]])
    mask_pred = torch.tensor([[[BIG, BIG, -BIG]], [[-BIG, 2 * BIG, BIG]]])
    seg, segments = panoptic(mask_cls, mask_pred, [0], overlap_threshold=0.5)
    assert [s["id"] for s in segments] == [1, 2]
    assert seg.tolist() == [[1, 2, 2]]
    seg, segments = panoptic(mask_cls, mask_pred, [0], overlap_threshold=0.51)
    assert [s["id"] for s in segments] == [1]  # A dropped; B is now segment 1
    assert seg.tolist() == [[0, 1, 1]]


def test_stuff_queries_of_one_class_share_one_id_in_the_int32_id_map(panoptic) -> None:
    """Queries: thing 0, stuff 1, stuff 1, thing 0 on four columns → ids 1, 2, 2, 3 (not the
    query order), with each segment's score the query's class probability."""
    rows = [[BIG, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 5.0, 0.0], [3.0, 0.0, 0.0]]
    mask_cls = torch.tensor(rows)
    mask_pred = torch.full((4, 2, 4), -BIG)
    for q in range(4):
        mask_pred[q, :, q] = BIG
    seg, segments = panoptic(mask_cls, mask_pred, [0])
    assert seg.dtype == torch.int32
    assert seg.tolist() == [[1, 2, 2, 3]] * 2
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segments] == [
        (1, 0, True),
        (2, 1, False),
        (3, 0, True),
    ]
    for s, q in zip(segments, [0, 1, 3], strict=True):  # the merged stuff keeps its first score
        assert s["score"] == pytest.approx(max(prob(rows[q], c) for c in range(3)), rel=1e-6)


# ---- instances ----


def test_instances_come_in_descending_order_of_class_probability(instances) -> None:
    """Every (query, class) pair is returned (top-k ≥ pairs) best class probability first; each
    query's mask is a row of its own, so the masks say which query each pair is."""
    g = torch.Generator().manual_seed(0)
    mask_cls = 3 * torch.randn(6, 4, generator=g)  # 6 queries, 3 classes + no-object
    mask_pred = torch.full((6, 6, 5), -BIG)
    for q in range(6):
        mask_pred[q, q] = BIG
    out = instances(mask_cls, mask_pred)
    rows = mask_cls.tolist()
    pairs = sorted(((prob(rows[q], c), q, c) for q in range(6) for c in range(3)), reverse=True)
    assert out["labels"].tolist() == [c for _, _, c in pairs]
    assert [int(m.any(1).nonzero()[0]) for m in out["masks"]] == [q for _, q, _ in pairs]
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)


def test_a_pixel_at_logit_zero_is_outside_the_instance_mask(instances) -> None:
    mask_cls = torch.tensor([[BIG, 0.0]])  # one class
    mask_pred = torch.full((1, 3, 3), -BIG)
    mask_pred[0, 0] = 0.0  # probability 0.5, but not foreground (logit > 0)
    mask_pred[0, 2, :2] = 2.0
    out = instances(mask_cls, mask_pred)
    expected = torch.zeros(1, 3, 3, dtype=torch.bool)
    expected[0, 2, :2] = True
    assert torch.equal(out["masks"], expected)
    want = prob([BIG, 0.0], 0) * (2 * sigmoid(2.0)) / (2 + 1e-6)
    assert float(out["scores"][0]) == pytest.approx(want, rel=1e-6)


def test_an_instance_score_is_class_probability_times_mean_mask_probability(instances) -> None:
    """One foreground pixel: score = p · sigmoid(1.5) / (1 + 1e-6), to float32 precision (the
    1e-6 guards the division of an empty mask)."""
    rows = [[2.0, 1.0, 0.0]]
    mask_pred = torch.full((1, 2, 2), -BIG)
    mask_pred[0, 1, 0] = 1.5
    out = instances(torch.tensor(rows), mask_pred, topk=1)
    assert out["labels"].tolist() == [0]
    want = prob(rows[0], 0) * sigmoid(1.5) / (1 + 1e-6)
    assert float(out["scores"][0]) == pytest.approx(want, rel=1e-6, abs=0)


def test_instance_inference_keeps_100_pairs_by_default() -> None:
    mask_cls = torch.randn(51, 3, generator=torch.Generator().manual_seed(1))  # 102 pairs
    out = instance_inference(mask_cls, torch.randn(51, 2, 2))
    assert len(out["scores"]) == len(out["labels"]) == len(out["masks"]) == 100


@pytest.mark.parametrize("topk", [1, 2])
def test_one_query_scored_alone_sums_its_mask_as_the_reference_does(topk) -> None:
    """The top pairs are one query's two classes: it is resized alone, yet its mask probability
    sum must round as the reference's sum over [pairs, H·W] does (a long row summed alone
    rounds otherwise), bit for bit."""
    outputs = realistic_outputs(num_queries=4, num_classes=3, seed=5)
    outputs["pred_logits"][0] = torch.tensor([0.0, 0.0, 0.0, 9.0])  # all no-object, but
    outputs["pred_logits"][0, 0] = torch.tensor([9.0, 8.5, 0.0, 0.0])  # query 0: classes 0, 1
    # mostly foreground, of varied probability: a sum whose rounding depends on its order (on two
    # threads; on one, as in mutation runs, a lone row is summed as any other)
    noise = torch.randn(50, 76, generator=torch.Generator().manual_seed(2))
    outputs["pred_masks"][0, 0] = 3 * noise + 3
    sizes = ([(200, 300)], [(480, 720)])
    new = postprocess(outputs, *sizes, "instance", topk=topk)[0]["instances"]
    old = reference_postprocess(outputs, *sizes, "instance", topk=topk)[0]["instances"]
    assert new["labels"].tolist() == [0, 1][:topk]
    assert new["masks"][0].sum() > 0.9 * 480 * 720
    assert torch.equal(new["masks"], old["masks"])
    assert torch.equal(new["scores"], old["scores"])


# ---- postprocess and predict_results ----


def test_predict_results_applies_the_overlap_threshold_and_topk_of_its_settings() -> None:
    """Thing A (class 0) owns 4 pixels and wins 1 (1/4 visible); stuff B (class 1) wins the rest.
    With overlap 0.2 both are segments; top-3 pairs hold one thing pair, (A, 0)."""
    rows = [[4.0, 0.0, 0.0], [0.0, 6.0, 0.0]]
    mask_pred = torch.tensor([[[5.0, 5.0, 5.0, 5.0]], [[-BIG, BIG, BIG, BIG]]])
    outputs = outputs_at_mask_size(torch.tensor(rows), mask_pred)
    settings = InferenceSettings(overlap_threshold=0.2, topk=3)
    (result,) = predict_results(outputs, [(1, 4)], [(1, 4)], "panoptic", [0], settings)
    assert [(s.id, s.category_id, s.isthing) for s in result.segments] == [
        (1, 0, True),
        (2, 1, False),
    ]
    assert result.segments[0].score == pytest.approx(prob(rows[0], 0), rel=1e-6)
    assert result.segments[1].score == pytest.approx(prob(rows[1], 1), rel=1e-6)
    assert result.panoptic_seg.tolist() == [[1, 2, 2, 2]]
    assert result.instances.labels.tolist() == [0]
    (default,) = predict_results(outputs, [(1, 4)], [(1, 4)], "panoptic", [0])
    assert [s.category_id for s in default.segments] == [1]  # A: 1/4 < 0.8
    assert default.instances.labels.tolist() == [0, 0]  # both queries' thing pairs


def test_postprocess_refuses_image_and_original_sizes_of_different_lengths() -> None:
    outputs = realistic_outputs(num_queries=4, num_classes=3)
    with pytest.raises(ValueError):
        postprocess(outputs, [(200, 304), (200, 304)], [(200, 304)], "instance")


def test_post_processing_emits_no_warnings() -> None:
    """No implicit softmax dimension or other warnings reach the user's log."""
    outputs = realistic_outputs(num_queries=6, num_classes=3)
    mask_cls, mask_pred = outputs["pred_logits"][0], outputs["pred_masks"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        semantic_inference(mask_cls, mask_pred)
        panoptic_inference(mask_cls, mask_pred, [0])
        instance_inference(mask_cls, mask_pred, thing_ids=[0])
        for task in ("panoptic", "instance", "semantic"):
            (result,) = postprocess(outputs, [(200, 300)], [(100, 150)], task, [0])
            if "sem_seg" in result:
                result["sem_seg"].argmax(0)


# ---- class scores at the original size ----


@pytest.fixture
def bands(monkeypatch) -> None:
    """Every image resized a band of rows at a time (small bands), as a large one."""
    monkeypatch.setattr(inference.resize, "FULL_FRAME_BYTES", 0)
    monkeypatch.setattr(inference.resize, "CHUNK_BYTES", 2_000_000)


def test_semantic_task_scores_are_class_scores_at_the_padded_size_resized(bands) -> None:
    """A semantic-only model: Σ_q softmax over classes × sigmoid of the logits upsampled to the
    padded input, over 20 queries (more than one chunk), cropped, then resized (bilinear), here
    in float64 in one go, against the result produced a band of rows at a time."""
    outputs = realistic_outputs(num_queries=20, num_classes=5, seed=4)
    mask_cls, mask_logits = outputs["pred_logits"][0], outputs["pred_masks"][0]
    scores = postprocess(outputs, [(200, 300)], [(480, 720)], "semantic")[0]["sem_seg"]
    up = F.interpolate(mask_logits[:, None].double(), size=(200, 304), mode="bilinear")[:, 0]
    probs = mask_cls.double().softmax(-1)[:, :-1]
    padded = torch.einsum("qc,qhw->chw", probs, up.sigmoid())[:, :200, :300]
    expected = F.interpolate(padded[None], size=(480, 720), mode="bilinear")[0]
    full = scores.full()
    assert full.shape == (5, 480, 720) and full.dtype == torch.float32
    torch.testing.assert_close(full.double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(scores.argmax(0), full.argmax(0))


@pytest.mark.parametrize("task", ["panoptic", "semantic"])
def test_class_scores_argmax_over_dim_0_by_default_or_minus_3(task) -> None:
    outputs = realistic_outputs(num_queries=6, num_classes=3)
    scores = postprocess(outputs, [(200, 300)], [(100, 150)], task)[0]["sem_seg"]
    expected = scores.full().argmax(0)
    assert torch.equal(scores.argmax(), expected)
    assert torch.equal(scores.argmax(-3), expected)
    with pytest.raises(ValueError, match=rf"^{type(scores).__name__}\.argmax is over the class"):
        scores.argmax(-1)


@pytest.mark.parametrize("task", ["panoptic", "semantic"])
def test_moved_class_scores_keep_their_values_and_computed_class_map(task) -> None:
    outputs = realistic_outputs(num_queries=6, num_classes=3)
    scores = postprocess(outputs, [(200, 300)], [(100, 150)], task)[0]["sem_seg"]
    full = scores.full()
    moved = scores.to("cpu")  # before the class map is computed
    assert moved.shape == scores.shape
    assert torch.equal(moved.full(), full)
    assert torch.equal(moved.argmax(0), full.argmax(0))
    class_map = scores.argmax(0)
    moved = scores.cpu()  # after: the class map moves with the scores, not computed again

    def no_bands():
        raise AssertionError("the class map was computed again")

    moved._bands = no_bands
    assert torch.equal(moved.argmax(0), class_map)


@pytest.mark.parametrize("task", ["panoptic", "semantic"])
def test_bands_of_rows_are_as_large_as_the_chunk_budget_allows(bands, task) -> None:
    """Rows per band = CHUNK_BYTES // (bytes per pixel × width): 4 bytes (float32) × what is
    alive at once per pixel: max(queries, classes) for the panoptic path's class scores, the
    kept queries for its id map, the classes for the semantic path's resized scores."""
    outputs = realistic_outputs(num_queries=10, num_classes=4, seed=1)
    mask_cls = outputs["pred_logits"][0]
    best, label = mask_cls.softmax(-1).max(-1)
    kept = int(((label != 4) & (best > 0.8)).sum())
    assert 0 < kept < 10  # the id map resizes fewer maps than the class scores
    heights: list[tuple[int, int]] = []  # (maps resized, rows) per band
    original_rows = _RowResizer.rows

    def rows(self, start, stop):
        heights.append((len(self.logits), stop - start))
        return original_rows(self, start, stop)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_RowResizer, "rows", rows)
        (result,) = postprocess(outputs, [(200, 300)], [(480, 720)], task, [0])
        result["sem_seg"].argmax(0)
    per_pixel = {10: 4 * max(10, 4), kept: 4 * kept} if task == "panoptic" else {4: 4 * 4}
    assert {n for n, _ in heights} == set(per_pixel)
    for n, bytes_per_pixel in per_pixel.items():
        band = 2_000_000 // (bytes_per_pixel * 720)
        got = [h for m, h in heights if m == n]
        assert got == [band] * (480 // band) + ([480 % band] if 480 % band else []), n
