"""Edges of row-wise resizing and of the inference settings' validation, written from the mutants of
`m2f_lightning/inference/resize.py` and `settings.py` that survived the other inference tests
(SURVIVORS_C_TRIAGE.md says which test kills which): the rounding of each arithmetic mode, the
probe that picks one, when and how an image is split into bands, and bad settings named."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m2f_lightning.inference import InferenceSettings, resize, resize_to_original
from m2f_lightning.inference.resize import _arithmetic, _lerp, _linear_axis, _RowResizer

CPU = torch.device("cpu")


# ---- independent references: PyTorch's bilinear arithmetic written out in numpy float32 ----


def np_axis(in_size: int, out_size: int, fused: bool) -> tuple[np.ndarray, ...]:
    """Source indices and weights of `compute_source_index_and_lambda` (ATen's UpSample.h,
    align_corners=False): src = scale·(dst + 0.5) − 0.5, rounded once (fused) or twice."""
    if in_size == out_size:
        index = np.arange(out_size)
        return index, index, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    if fused:
        src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    else:
        src = scale * dst - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    index0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    weight1 = src - index0.astype(np.float32)
    index1 = np.minimum(index0 + 1, in_size - 1)
    return index0, index1, np.float32(1) - weight1, weight1


def np_resize_plain(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N, h, w] → [N, *size] as a kernel without fused multiply-adds: every product and sum
    rounded to float32 (numpy evaluates them one operation at a time)."""
    r0, r1, rw0, rw1 = np_axis(x.shape[1], size[0], fused=False)
    c0, c1, cw0, cw1 = np_axis(x.shape[2], size[1], fused=False)
    wide = x[:, :, c0] * cw0 + x[:, :, c1] * cw1
    return wide[:, r0] * rw0[:, None] + wide[:, r1] * rw1[:, None]


@pytest.fixture
def fresh_probe(monkeypatch) -> None:
    monkeypatch.setattr(resize, "_MODE", {})  # probe the arithmetic again in this test


# ---- _linear_axis, _lerp, _resize_band: each mode's arithmetic ----


@pytest.mark.parametrize("mode", resize._MODES)
def test_source_indices_and_weights_round_as_the_kernel_in_each_mode(mode) -> None:
    """'plain' rounds scale·dst and then − 0.5; the fused modes once; a one-pixel source reads
    its only pixel."""
    fused = mode != "plain"
    pairs = [(1, 4), (1, 7), (2, 9), (13, 52), (19, 76), (50, 97), (73, 131), (76, 73), (7, 7)]
    for in_size, out_size in pairs:
        axis = _linear_axis(in_size, out_size, mode, CPU)
        expected = np_axis(in_size, out_size, fused)
        for got, want in zip(axis, expected, strict=True):
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{in_size}→{out_size}")
    # the pairs above include ones where rounding twice moves a weight: the modes really differ
    assert any(
        not np.array_equal(np_axis(i, o, True)[3], np_axis(i, o, False)[3]) for i, o in pairs
    )


def test_lerp_rounds_twice_in_plain_mode_and_as_addcmul_in_addcmul_mode() -> None:
    """a = 1 + 2⁻¹²: a·a = 1 + 2⁻¹¹ + 2⁻²⁴ is a tie in float32. a·a − 1 is 2⁻¹¹ + 2⁻²⁴ fused,
    2⁻¹¹ rounded twice; a·a + 2⁻⁸⁰ fused rounds up to 1 + 2⁻¹¹ + 2⁻²³."""
    a = 1 + 2**-12
    if (
        torch.addcmul(torch.tensor(-1.0), torch.tensor(a), torch.tensor(a)).item()
        != 2**-11 + 2**-24
    ):
        pytest.skip("torch.addcmul rounds twice on this CPU")
    t0 = w0 = torch.tensor([a, a])
    t1, w1 = torch.tensor([1.0, 2.0**-40]), torch.tensor([-1.0, 2.0**-40])
    assert _lerp(t0, w0, t1, w1, "plain").tolist() == [2**-11, 1 + 2**-11]
    assert _lerp(t0, w0, t1, w1, "addcmul").tolist() == [2**-11 + 2**-24, 1 + 2**-11 + 2**-23]
    assert _lerp(t0, w0, t1, w1, "float64")[0].item() == 2**-11 + 2**-24


def test_a_band_reads_only_the_source_rows_it_needs() -> None:
    x = torch.randn(2, 40, 30, generator=torch.Generator().manual_seed(1))
    rows, cols = _linear_axis(40, 97, "addcmul", CPU), _linear_axis(30, 71, "addcmul", CPU)
    asked = []

    def source(start, stop):
        asked.append((start, stop))
        return x[:, start:stop]

    band = resize._resize_band(source, rows.band(30, 50), cols, "addcmul")
    whole = F.interpolate(x[:, None], size=(97, 71), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(band, whole[:, 30:50])
    # rows 30..49 of 97 sample source rows floor((30 + 0.5)·40/97 − 0.5) = 12 .. 20
    assert asked == [(12, 21)]


def test_row_resizer_rounds_twice_where_the_kernel_does(monkeypatch) -> None:
    """On a CPU whose kernel has no fused multiply-add ('plain'), every band is the plain
    two-step resize: indices, weights and blends all rounded twice."""
    monkeypatch.setattr(resize, "_MODE", {"cpu": "plain"})
    # not at 1/4 of the padded size: the first resize's scale is inexact too
    logits = torch.randn(3, 17, 23, generator=torch.Generator().manual_seed(2)) * 6
    image, padded, original = (50, 73), (52, 76), (97, 131)
    resizer = _RowResizer(logits, image, padded, original)
    assert resizer.mode == "plain"
    first = np_resize_plain(logits.numpy(), padded)[:, : image[0], : image[1]]
    expected = np_resize_plain(first, original)
    for start, stop in [(0, 40), (40, 97), (5, 6)]:
        np.testing.assert_array_equal(resizer.rows(start, stop).numpy(), expected[:, start:stop])
    # and without the second resize
    resizer = _RowResizer(logits, image, padded, image)
    for start, stop in [(0, 20), (20, 50)]:
        np.testing.assert_array_equal(resizer.rows(start, stop).numpy(), first[:, start:stop])
    # the fused arithmetic would have given other bits here
    fused = F.interpolate(logits[:, None], size=padded, mode="bilinear", align_corners=False)
    assert not np.array_equal(fused[:, 0].numpy(), np_resize_plain(logits.numpy(), padded))


# ---- _arithmetic: the probe ----


def test_the_probe_picks_a_mode_that_reproduces_interpolate_silently(fresh_probe) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mode = _arithmetic(CPU)
    assert mode in resize._MODES
    assert resize._MODE["cpu"] == mode
    x = torch.randn(2, 23, 31, generator=torch.Generator().manual_seed(3)) * 5
    rows, cols = _linear_axis(23, 113, mode, CPU), _linear_axis(31, 167, mode, CPU)
    band = resize._resize_band(lambda a, b: x[:, a:b], rows, cols, mode)
    assert torch.equal(band, resize_to_original(x, (113, 167), (113, 167), (113, 167)))


def test_the_probe_skips_a_mode_that_rounds_otherwise(fresh_probe, monkeypatch) -> None:
    """As on a CPU where torch.addcmul rounds twice and the kernel once: 'addcmul' misses some
    values, so the probe goes on to 'float64', which matches, without a warning."""
    lerp = resize._lerp

    def unfused_addcmul(t0, w0, t1, w1, mode):
        return lerp(t0, w0, t1, w1, "plain" if mode == "addcmul" else mode)

    monkeypatch.setattr(resize, "_lerp", unfused_addcmul)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _arithmetic(CPU) == "float64"


def test_the_probe_leaves_the_global_random_state_alone(fresh_probe) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    _arithmetic(CPU)
    assert torch.equal(torch.rand(4), expected)


# ---- _RowResizer: which bands, and their rows ----

# (logits h, w), image size, padded size, original size
LARGE = ((50, 76), (200, 300), (200, 304), (480, 720))  # two resizes
LARGE_AS_IS = ((50, 76), (200, 300), (200, 304), (200, 300))  # one resize, cropped
SMALL = ((15, 15), (60, 57), (60, 60), (60, 60))  # 60×60 outputs: another CPU kernel path
SMALLEST_SPECIAL = ((16, 16), (64, 60), (64, 64), (64, 64))  # 64×64 = _SMALL_PLANE: special too
SMALL_AS_IS = ((15, 15), (60, 57), (60, 60), (60, 57))
SMALL_AS_IS_PADDED = ((16, 17), (60, 57), (64, 68), (60, 57))  # resized once, to 64×68: split
SMALL_ORIGINAL = ((16, 17), (60, 57), (64, 68), (60, 60))  # 64×68, then 60×60: not split


def resizer(sizes, queries: int = 2, seed: int = 0) -> tuple[_RowResizer, torch.Tensor]:
    (h, w), image, padded, original = sizes
    logits = torch.randn(queries, h, w, generator=torch.Generator().manual_seed(seed)) * 6
    return _RowResizer(logits, image, padded, original), resize_to_original(
        logits, image, padded, original
    )


@pytest.mark.parametrize(
    "sizes,split",
    [(LARGE, True), (LARGE_AS_IS, True), (SMALL, False), (SMALLEST_SPECIAL, False)]
    + [(SMALL_AS_IS, False), (SMALL_AS_IS_PADDED, True), (SMALL_ORIGINAL, False)],
)
def test_large_images_are_split_into_bands_that_equal_the_whole_resize(
    sizes, split, monkeypatch
) -> None:
    """Every image over FULL_FRAME_BYTES is split, unless an output plane has at most 64×64
    pixels (PyTorch's CPU kernel rounds those otherwise): then it is resized whole."""
    monkeypatch.setattr(resize, "FULL_FRAME_BYTES", 0)
    monkeypatch.setattr(resize, "CHUNK_BYTES", 1000)
    row_resizer, whole = resizer(sizes)
    bands = list(row_resizer.bands(4))
    assert (len(bands) > 1) == split
    assert bands[0][0] == 0 and bands[-1][1] == whole.shape[1]
    assert all(a[1] == b[0] for a, b in zip(bands[:-1], bands[1:], strict=True))
    assert torch.equal(torch.cat([row_resizer.rows(*band) for band in bands], dim=1), whole)


def test_bands_split_an_image_over_full_frame_bytes_into_chunk_bytes_rows(monkeypatch) -> None:
    row_resizer, _ = resizer(LARGE)
    height, width = 480, 720
    monkeypatch.setattr(resize, "FULL_FRAME_BYTES", height * width)  # fits exactly: whole
    monkeypatch.setattr(resize, "CHUNK_BYTES", 7 * width + 5)
    assert list(row_resizer.bands(0)) == [(0, height)]  # at least a byte per pixel
    assert list(row_resizer.bands(1)) == [(0, height)]
    monkeypatch.setattr(resize, "FULL_FRAME_BYTES", height * width - 1)  # a byte over
    expected = [(start, min(start + 7, height)) for start in range(0, height, 7)]
    assert list(row_resizer.bands(0)) == expected
    assert list(row_resizer.bands(1)) == expected
    assert list(row_resizer.bands(7)) == [(start, start + 1) for start in range(height)]
    monkeypatch.setattr(resize, "CHUNK_BYTES", 1)  # smaller than a row: one row at a time
    assert list(row_resizer.bands(1)) == [(start, start + 1) for start in range(height)]


@pytest.mark.parametrize(
    "sizes,exact_bands", [(LARGE, True), (LARGE_AS_IS, True), (SMALL, False), (SMALL_AS_IS, False)]
)
def test_rows_of_any_band_are_those_of_the_whole_resize(sizes, exact_bands) -> None:
    """Also the band from row 1 to the end; the width is the original width even where the
    padding is wider. Small planes (never split by `bands`) are exact as a whole."""
    row_resizer, whole = resizer(sizes, queries=3, seed=4)
    height, width = whole.shape[1:]
    assert torch.equal(row_resizer.rows(0, height), whole)
    for start, stop in [(1, height), (0, height - 1), (3, 9)]:
        band = row_resizer.rows(start, stop)
        assert band.shape == (3, stop - start, width)
        if exact_bands:
            assert torch.equal(band, whole[:, start:stop]), (start, stop)
    empty, _ = resizer(sizes, queries=0)
    assert empty.rows(2, 5).shape == (0, 3, width)


def test_a_one_pixel_high_map_is_resized_by_rows() -> None:
    sizes = ((1, 300), (3, 1190), (4, 1200), (97, 1300))
    row_resizer, whole = resizer(sizes)
    assert torch.equal(row_resizer.rows(10, 50), whole[:, 10:50])


# ---- InferenceSettings: validation names the bad key and value ----


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window": 0}, r"inference\.window must be a positive int or \[height, width\]: 0"),
        ({"window": [32, 32, 32]}, r"inference\.window must be a positive int .*\[32, 32, 32\]"),
        ({"window": [64, -32]}, r"inference\.window must be a positive int"),
        ({"window": 1}, r"inference\.window must be a multiple of 32: 1"),
        ({"stride": 0}, r"inference\.stride must be a positive int or \[height, width\]: 0"),
        ({"stride": [4]}, r"inference\.stride must be a positive int .*\[4\]"),
        ({"stride": 1}, r"inference\.stride must be a multiple of 4, at most the window: 1"),
        ({"tta_scales": [1.0, 0]}, r"inference\.tta_scales must be positive numbers: \[1.0, 0\]"),
        ({"tta_scales": [-0.5]}, r"inference\.tta_scales must be positive"),
        ({"merge_iou": 0}, r"inference\.merge_iou must be in \(0, 1\]: 0"),
        ({"merge_iou": 1.5}, r"inference\.merge_iou must be in \(0, 1\]: 1.5"),
    ],
)
def test_bad_window_stride_scales_and_merge_iou_are_named(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        InferenceSettings(**kwargs)


def test_settings_normalise_pairs_and_scales_and_accept_the_bounds() -> None:
    settings = InferenceSettings(
        mode="sliding", window=[64, 96], stride=(32, 96), tta=True, tta_scales=[1, 2], merge_iou=1
    )
    assert settings.window == (64, 96) and settings.stride == (32, 96)
    assert settings.tta_scales == (1.0, 2.0)
    assert all(type(s) is float for s in settings.tta_scales)
    assert settings.views == [(1.0, False), (1.0, True), (2.0, False), (2.0, True)]
    assert InferenceSettings(window=32, stride=4).window == (32, 32)
    assert InferenceSettings(stride=4).stride == (4, 4)
    assert InferenceSettings(tta_scales=(0.5,)).tta_scales == (0.5,)
