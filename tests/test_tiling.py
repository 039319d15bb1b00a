"""Sliding-window inference and test-time augmentation (issue 14 §2).

Whole-image and windowed inference can only agree when the network's output does not depend on
context, so these tests use `ColourNet`: a stand-in network whose query q predicts the pixels
of colour q (mask logit +10 at a 1/4-resolution cell whose pixels all have that colour, else
-10) with a fixed class, and no-object when the colour is not in its input. The post-processing
is the real one. Objects cross the window borders, so each is seen by several windows.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from m2f_lightning.checkpoints.io import save_model
from m2f_lightning.cli.commands import predict
from m2f_lightning.errors import ConfigError
from m2f_lightning.inference import (
    InferenceSettings,
    merge_query_sets,
    merging,
    predict_results,
    predict_tiled,
    window_starts,
)
from m2f_lightning.inference import tiling as inference_tiling
from m2f_lightning.inference.merging import QuerySet
from tests.helpers import TINY_OVERRIDES, compose, tiny_model

NUM_CLASSES = 4  # 0, 1: things; 2, 3: stuff
THINGS = [0, 1]
# (colour, class) of each query: stuff backgrounds, then one colour per thing
PALETTE = [
    ((30, 30, 200), 2),
    ((30, 160, 30), 3),
    ((200, 40, 40), 0),
    ((220, 200, 40), 0),
    ((150, 60, 170), 1),
    ((40, 200, 200), 1),
    ((250, 120, 10), 0),
    ((90, 90, 90), 1),  # a colour absent from the scene: no-object everywhere
]


class ColourNet(torch.nn.Module):
    """A context-free stand-in for Mask2Former (same call and outputs)."""

    def forward(self, images: torch.Tensor, image_sizes=None) -> dict:
        b, _, h, w = images.shape
        colours = torch.tensor([c for c, _ in PALETTE], dtype=torch.float32)
        # a 1/4 cell has a colour when all its 16 pixels have it (so that the net commutes
        # with flips of images whose width is a multiple of 4)
        top = F.max_pool2d(images.float(), 4)
        cells = torch.where(top == -F.max_pool2d(-images.float(), 4), top, -1.0)
        valid = torch.zeros(b, h // 4, w // 4, dtype=torch.bool)
        for i, (vh, vw) in enumerate(image_sizes or [(h, w)] * b):
            valid[i, : (vh + 1) // 4, : (vw + 1) // 4] = True
        same = (cells[:, None] == colours[None, :, :, None, None]).all(2) & valid[:, None]
        logits = torch.full((b, len(PALETTE), NUM_CLASSES + 1), 0.0)
        present = same.flatten(2).any(-1)
        for q, (_, cls) in enumerate(PALETTE):
            logits[:, q, cls] = torch.where(present[:, q], 10.0, 0.0)
            logits[:, q, -1] = torch.where(present[:, q], 0.0, 10.0)
        return {
            "pred_logits": logits,
            "pred_masks": torch.where(same, 10.0, -10.0),
            "image_size": (h, w),
            "padded_size": (h, w),
        }


def scene(h: int = 168, w: int = 232) -> torch.Tensor:
    """uint8 [3, h, w]: two stuff regions, five things; all but one cross a border of
    the 96-pixel windows at stride 64 (the image padded to 192 x 256: windows start at rows 0,
    64, 96 and columns 0, 64, 128, 160); one spans the windows of every column."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)

    def paint(q: int, region: torch.Tensor) -> None:
        img[:, region] = torch.tensor(PALETTE[q][0], dtype=torch.uint8)[:, None]

    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    paint(0, yy < 100)
    paint(1, yy >= 100)
    paint(2, ((yy - 60) ** 2 + (xx - 90) ** 2) < 30**2)  # a disc across rows 64/96, cols 64/96
    paint(3, (yy >= 10) & (yy < 40) & (xx >= 10) & (xx < 210))  # a band across all windows
    paint(4, ((yy - 120) ** 2 / 25**2 + (xx - 160) ** 2 / 45**2) < 1)
    paint(5, (yy >= 130) & (yy < 160) & (xx >= 20) & (xx < 60))  # inside one window column
    paint(6, ((yy - 100) ** 2 + (xx - 40) ** 2) < 17**2)
    return img


def batch(img: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    padded = torch.zeros(1, 3, -(-h // 32) * 32, -(-w // 32) * 32, dtype=torch.uint8)
    padded[0, :, :h, :w] = img
    return padded


def plain(images, sizes, originals, task, settings=None):
    return predict_results(ColourNet()(images, sizes), sizes, originals, task, THINGS, settings)


def agreement(a, b) -> tuple[float, dict, dict]:
    """Fraction of pixels whose segments correspond (each segment of `a` mapped to the segment
    of `b` it overlaps most, same class required), and the segment count per class of each."""
    mapped = torch.zeros_like(a.panoptic_seg)
    for seg in a.segments:
        ids, counts = b.panoptic_seg[a.panoptic_seg == seg.id].unique(return_counts=True)
        best = int(ids[counts.argmax()])
        other = {s.id: s for s in b.segments}.get(best)
        if other is not None and other.category_id == seg.category_id:
            mapped[a.panoptic_seg == seg.id] = best
    same = (mapped == b.panoptic_seg).float().mean().item()

    def per_class(r):
        out = {}
        for s in r.segments:
            out[s.category_id] = out.get(s.category_id, 0) + 1
        return out

    return same, per_class(a), per_class(b)


def test_window_starts_cover_the_axis_and_end_flush() -> None:
    assert window_starts(96, 96, 64) == [0]
    assert window_starts(40, 96, 64) == [0]
    assert window_starts(192, 96, 64) == [0, 64, 96]
    assert window_starts(256, 128, 128) == [0, 128]


@pytest.mark.parametrize("original", [(168, 232), (252, 348)])
def test_sliding_panoptic_equals_whole_image_on_objects_across_window_borders(original) -> None:
    """Tolerance: the same segments per class, and ≥ 99.9% of pixels in corresponding segments
    (the merged queries' logits equal the whole image's on every cell a window saw; measured
    100%)."""
    img = scene()
    sizes = [tuple(img.shape[-2:])]
    windows = [
        img[:, y : y + 96, x : x + 96]
        for y in window_starts(192, 96, 64)
        for x in window_starts(256, 96, 64)
    ]
    for colour, _ in PALETTE[2:7]:  # each thing is seen, whole or in part, by several windows
        colour = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
        assert sum(bool((w == colour).all(0).any()) for w in windows) >= 2
    whole = plain(batch(img), sizes, [original], "panoptic")[0]
    s = InferenceSettings(mode="sliding", window=96, stride=64)
    tiled = predict_tiled(ColourNet(), batch(img), sizes, [original], "panoptic", THINGS, s)[0]
    same, classes_whole, classes_tiled = agreement(whole, tiled)
    assert classes_whole == {0: 3, 1: 2, 2: 1, 3: 1}  # every thing of the scene is one segment
    assert classes_tiled == classes_whole
    assert same >= 0.999
    # instances: the same masks (as a set) and scores
    wi, ti = whole.instances, tiled.instances
    keep_w, keep_t = wi.scores > 0.5, ti.scores > 0.5
    assert int(keep_w.sum()) == int(keep_t.sum()) == 5
    ww = sorted(wi.masks[keep_w].flatten(1).sum(1).tolist())
    tt = sorted(ti.masks[keep_t].flatten(1).sum(1).tolist())
    assert ww == tt
    # semantic class maps (scores averaged over windows at 1/4 resolution, then resized)
    agree = (whole.sem_seg.argmax(0) == tiled.sem_seg.argmax(0)).float().mean().item()
    assert agree >= 0.99


def test_sliding_semantic_and_instance_tasks_agree_with_whole() -> None:
    img = scene()
    sizes = [tuple(img.shape[-2:])]
    s = InferenceSettings(mode="sliding", window=96, stride=64)
    whole = plain(batch(img), sizes, sizes, "semantic")[0]
    tiled = predict_tiled(ColourNet(), batch(img), sizes, sizes, "semantic", THINGS, s)[0]
    assert tiled.sem_seg.shape == whole.sem_seg.shape == (NUM_CLASSES, *sizes[0])
    agree = (whole.sem_seg.argmax(0) == tiled.sem_seg.argmax(0)).float().mean().item()
    assert agree >= 0.99
    torch.testing.assert_close(tiled.sem_seg.cpu().full().argmax(0), tiled.sem_seg.argmax(0))
    whole = plain(batch(img), sizes, sizes, "instance")[0].instances
    tiled = predict_tiled(ColourNet(), batch(img), sizes, sizes, "instance", (), s)[0].instances
    top_w, top_t = whole.scores > 0.5, tiled.scores > 0.5
    assert sorted(whole.labels[top_w].tolist()) == sorted(tiled.labels[top_t].tolist())
    assert int(top_t.sum()) == 7  # the things and the stuff regions, one instance each


def test_tta_with_one_scale_and_no_flip_equals_plain_inference() -> None:
    img = scene()
    sizes, originals = [tuple(img.shape[-2:])], [(200, 300)]
    s = InferenceSettings(tta=True, tta_scales=[1.0], tta_flip=False)
    assert s.plain
    for task in ("panoptic", "instance", "semantic"):
        want = plain(batch(img), sizes, originals, task)[0]
        got = predict_tiled(ColourNet(), batch(img), sizes, originals, task, THINGS, s)[0]
        assert_same(got, want)
        if task in ("semantic", "panoptic"):
            assert torch.equal(got.sem_seg.full(), want.sem_seg.full())


def assert_same(got, want) -> None:
    assert got.segments == want.segments
    if want.panoptic_seg is not None:
        assert torch.equal(got.panoptic_seg, want.panoptic_seg)
    if want.instances is not None:
        for key in ("masks", "scores", "labels"):
            assert torch.equal(getattr(got.instances, key), getattr(want.instances, key))


def test_one_window_over_the_whole_image_gives_the_plain_segments_and_instances() -> None:
    """Through the windowed path (queries kept, merged, pasted): bit for bit the plain panoptic
    and instance results; semantic scores are averaged at 1/4 resolution then resized, so the
    class map may differ from the plain one at class borders (measured: ≥ 99%)."""
    img = scene()
    sizes, originals = [tuple(img.shape[-2:])], [(200, 300)]
    s = InferenceSettings(mode="sliding", window=256, stride=256)
    for task in ("panoptic", "instance"):
        want = plain(batch(img), sizes, originals, task)[0]
        got = predict_tiled(ColourNet(), batch(img), sizes, originals, task, THINGS, s)[0]
        assert_same(got, want)
    want = plain(batch(img), sizes, originals, "semantic")[0]
    got = predict_tiled(ColourNet(), batch(img), sizes, originals, "semantic", THINGS, s)[0]
    agree = (got.sem_seg.argmax(0) == want.sem_seg.argmax(0)).float().mean().item()
    assert agree >= 0.99


def test_tta_flip_and_scales_agree_with_plain_on_a_context_free_network() -> None:
    """Flip: the flipped view's queries come back unflipped and merge with the plain view's
    (tolerance 99.9% of pixels; measured 99.99%). Scales 1 and 2, flipped too: windows give what
    the whole image gives under the same views (99.9%), and both stay near plain inference
    (≥ 95%, measured 96.8%: the stand-in makes a 1/4 cell whose pixels mix colours void, so at
    scale 2 the void band along every border is half as wide as at scale 1)."""
    img = scene()
    sizes = [tuple(img.shape[-2:])]
    whole = plain(batch(img), sizes, sizes, "panoptic")[0]
    s = InferenceSettings(tta=True, tta_scales=[1.0], tta_flip=True)
    got = predict_tiled(ColourNet(), batch(img), sizes, sizes, "panoptic", THINGS, s)[0]
    same, classes_whole, classes_got = agreement(whole, got)
    assert classes_got == classes_whole and same >= 0.999
    s = InferenceSettings(tta=True, tta_scales=[1.0, 2.0])
    tta_whole = predict_tiled(ColourNet(), batch(img), sizes, sizes, "panoptic", THINGS, s)[0]
    s = InferenceSettings(mode="sliding", window=96, stride=64, tta=True, tta_scales=[1.0, 2.0])
    tta_tiled = predict_tiled(ColourNet(), batch(img), sizes, sizes, "panoptic", THINGS, s)[0]
    same, classes_whole, classes_got = agreement(tta_whole, tta_tiled)
    assert classes_got == classes_whole and same >= 0.999
    same, classes_whole, classes_got = agreement(whole, tta_tiled)
    assert classes_got == classes_whole and same >= 0.95


@pytest.mark.parametrize("chunk_bytes", [merging.CHUNK_BYTES, 1])  # 1: overlaps row by row
def test_merge_keeps_a_lone_set_and_joins_one_object_seen_by_two_windows(
    chunk_bytes, monkeypatch
) -> None:
    monkeypatch.setattr(merging, "CHUNK_BYTES", chunk_bytes)
    cls = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    masks = torch.randn(2, 4, 6)
    out_cls, out_masks = merge_query_sets([QuerySet(cls, masks, (0, 0, 4, 6))], (4, 6), 0.5)
    assert torch.equal(out_cls, cls) and torch.equal(out_masks, masks)
    # one object (class 0) across columns 2..5, seen by windows [0, 4) and [2, 6)
    left = torch.full((1, 2, 4), -5.0)
    left[0, :, 2:] = 5.0
    right = torch.full((1, 2, 4), -5.0)
    right[0, :, :2] = 5.0
    right[0, :, 2:] = 3.0
    sets = [QuerySet(cls[:1], left, (0, 0, 2, 4)), QuerySet(cls[:1], right, (0, 2, 2, 6))]
    out_cls, out_masks = merge_query_sets(sets, (2, 6), 0.5)
    assert len(out_cls) == 1
    assert out_masks[0, 0].tolist() == [-5.0, -5.0, 5.0, 5.0, 3.0, 3.0]
    # another class on the right: two queries
    sets[1] = QuerySet(cls[1:], right, (0, 2, 2, 6))
    assert len(merge_query_sets(sets, (2, 6), 0.5)[0]) == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "tiles"}, "whole or sliding"),
        ({"window": 100}, "multiple of 32"),
        ({"window": 64, "stride": 96}, "at most the window"),
        ({"tta_scales": []}, "positive"),
    ],
)
def test_bad_settings_are_named(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        InferenceSettings(**kwargs)


def test_a_real_model_in_one_window_gives_its_plain_panoptic_result() -> None:
    """A (tiny, untrained) Mask2Former: one window covering the padded image sees what the whole
    image forward sees, so panoptic segments and instances are the plain ones bit for bit."""
    torch.manual_seed(0)
    model = tiny_model(num_classes=NUM_CLASSES).eval()
    images = torch.randint(0, 255, (2, 3, 96, 128), dtype=torch.uint8)
    sizes, originals = [(96, 128), (80, 100)], [(96, 128), (160, 200)]
    s = InferenceSettings(object_mask_threshold=0.0, mode="sliding", window=128, stride=64)
    with torch.no_grad():
        got = predict_tiled(model, images, sizes, originals, "panoptic", THINGS, s)
        want = [  # one image per forward, as the windows are (a batch's sums round otherwise)
            predict_results(model(x[None], [z]), [z], [o], "panoptic", THINGS, s)[0]
            for x, z, o in zip(images, sizes, originals, strict=True)
        ]
    for g, w in zip(got, want, strict=True):
        assert w.segments  # the threshold keeps segments of the untrained model
        assert_same(g, w)


def test_predict_command_runs_sliding_windows_and_tta(tmp_path: Path, monkeypatch) -> None:
    """m2f-predict ... inference.mode=sliding inference.window=64 inference.stride=32
    inference.tta=true inference.tta_scales=[0.5,1.0] (flip on by default): every output file."""
    checkpoint = tmp_path / "tiny.pt"
    save_model(tiny_model(num_classes=5), checkpoint)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)).save(
        tmp_path / "a.png"
    )
    args = ["task=panoptic", "dataset=synthetic", *TINY_OVERRIDES, f"checkpoint={checkpoint}"]
    tiling = [
        "inference.mode=sliding",
        "inference.window=64",
        "inference.stride=32",
        "inference.tta=true",
        "inference.tta_scales=[0.5,1.0]",
        "inference.object_mask_threshold=0.0",
        f"inputs=[{tmp_path / 'a.png'}]",
    ]
    calls = []

    def spy(model, images, *args):
        calls.append((tuple(images.shape), args[-1]))
        return predict_tiled(model, images, *args)

    monkeypatch.setattr(inference_tiling, "predict_tiled", spy)  # what predict_images calls
    cfg = compose("predict", [*args, *tiling], tmp_path / "out")
    predict(cfg, tmp_path / "out")
    for name in ("a_overlay.png", "a_panoptic.png"):
        assert (tmp_path / "out" / "predictions" / name).is_file()
    assert len(calls) == 1
    settings = calls[0][1]
    assert (settings.mode, settings.window, settings.stride) == ("sliding", (64, 64), (32, 32))
    assert settings.views == [(0.5, False), (0.5, True), (1.0, False), (1.0, True)]
    bad = compose("predict", [*args, *tiling, "inference.window=100"], tmp_path / "bad")
    with pytest.raises(ConfigError, match="inference: inference.window must be a multiple of 32"):
        predict(bad, tmp_path / "bad")


def test_the_network_sees_only_windows() -> None:
    """Peak memory of the forwards is a window's: every input is at most window-sized, whatever
    the image's size (here 4.3x a window's area); each view of TTA is windowed too."""
    seen = []

    class Recording(ColourNet):
        def forward(self, images, image_sizes=None):
            seen.append(tuple(images.shape[-2:]))
            return super().forward(images, image_sizes)

    img = scene()
    sizes = [tuple(img.shape[-2:])]
    s = InferenceSettings(mode="sliding", window=96, stride=64, tta=True, tta_scales=[1.0, 1.5])
    predict_tiled(Recording(), batch(img), sizes, sizes, "panoptic", THINGS, s)
    assert max(h for h, _ in seen) == 96 and max(w for _, w in seen) == 96
    assert len(seen) == 2 * (3 * 4) + 2 * (4 * 5)  # windows of 192 x 256 and of 256 x 352
