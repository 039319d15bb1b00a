"""Bilinear resizing of mask logits to the original image size: at once (`resize_to_original`),
or a band of output rows at a time (`_RowResizer`), bit-identical to it."""

import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

# images whose [queries, H, W] float32 logits fit in this are resized in one go by
# `resize_to_original`; larger ones a band of rows at a time, of about CHUNK_BYTES each
FULL_FRAME_BYTES = 256 * 2**20
CHUNK_BYTES = 32 * 2**20


def resize_to_original(
    mask_logits: torch.Tensor,
    image_size: Sequence[int],
    padded_size: Sequence[int],
    original_size: Sequence[int],
) -> torch.Tensor:
    """Mask logits [N, h, w] (at 1/4 of the padded input) → [N, H, W] at the original image size.

    Upsample to the padded input size, crop the padding away (bottom/right), then resize to the
    size of the image on disk. Bilinear throughout, as the original.
    """
    x = bilinear(mask_logits.float(), padded_size)[:, : image_size[0], : image_size[1]]
    if tuple(image_size) != tuple(original_size):
        x = bilinear(x, original_size)
    return x


def bilinear(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[N, h, w] → [N, H, W], bilinear (align_corners=False), each map as its own channel of
    `F.interpolate`: the CPU kernel is then the same whatever N and the thread count (on one
    thread it takes another path, with other rounding, for inputs of exactly 3 channels:
    `upsample_bilinear2d_kernel_impl_float` in ATen's UpSampleKernel.cpp)."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[
        :, 0
    ]


# ---- bilinear resizing a band of output rows at a time, bit-identical to F.interpolate ----


class _Axis(NamedTuple):
    """Per output index along one axis: the two source indices and their weights."""

    index0: torch.Tensor
    index1: torch.Tensor
    weight0: torch.Tensor
    weight1: torch.Tensor

    def band(self, start: int, stop: int) -> "_Axis":
        return _Axis(*(t[start:stop] for t in self))


# How the kernel rounds a·b + c, and how we reproduce it: "addcmul" (fused, by torch.addcmul, where
# that is itself fused), "float64" (fused, computed exactly in float64 then rounded once) or "plain"
# (two roundings).
_MODES = ("addcmul", "float64", "plain")


def _linear_axis(in_size: int, out_size: int, mode: str, device: torch.device) -> _Axis:
    """PyTorch's bilinear source indices and weights (align_corners=False, no scale given), in
    its float32 arithmetic: see `compute_source_index_and_lambda` in ATen's UpSample.h."""
    if in_size == out_size:  # the kernel copies
        index, ones = torch.arange(out_size, device=device), torch.ones(out_size, device=device)
        return _Axis(index, index, ones, torch.zeros_like(ones))
    # float32 in / out, as the kernel's (a tensor divided by a Python number is not that)
    scale = torch.tensor(float(in_size)) / torch.tensor(float(out_size))
    dst = torch.arange(out_size, dtype=torch.float32) + 0.5
    # fused: fma(scale, dst, -0.5), which float64 computes exactly before rounding once
    src = scale * dst - 0.5 if mode == "plain" else (scale.double() * dst.double() - 0.5).float()
    src = src.clamp(min=0)
    index0 = src.floor().long().clamp(max=in_size - 1)
    weight1 = (src - index0.float()).clamp(0, 1)
    index1 = index0 + (index0 < in_size - 1).long()
    return _Axis(*(t.to(device) for t in (index0, index1, 1 - weight1, weight1)))


def _lerp(
    t0: torch.Tensor, w0: torch.Tensor, t1: torch.Tensor, w1: torch.Tensor, mode: str
) -> torch.Tensor:
    """t0·w0 + t1·w1 in float32 rounded as the kernel rounds it: fused, fma(t0, w0, t1·w1)."""
    if mode == "plain":
        return t0 * w0 + t1 * w1
    if mode == "addcmul":
        return torch.addcmul(t1 * w1, t0, w0)
    out = t0.double().mul_(w0)  # exact: a product of two float32 values
    out.add_(t1 * w1)
    return out.float()


def _resize_band(source, rows: _Axis, cols: _Axis, mode: str) -> torch.Tensor:
    """Output rows of a bilinear resize [N, h, w] → [N, len(rows), len(cols)]: each source row
    is interpolated along the width, then pairs of rows are blended, as the kernel does.
    `source(start, stop)` gives source rows start:stop."""
    start, stop = int(rows.index0.min()), int(rows.index1.max()) + 1
    x = source(start, stop)
    wide = _lerp(
        x.index_select(-1, cols.index0), cols.weight0, x.index_select(-1, cols.index1),
        cols.weight1, mode,
    )  # fmt: skip
    return _lerp(
        wide.index_select(-2, rows.index0 - start), rows.weight0[:, None],
        wide.index_select(-2, rows.index1 - start), rows.weight1[:, None], mode,
    )  # fmt: skip


_MODE: dict[str, str] = {}
_SMALL_PLANE = 64 * 64  # CPU outputs up to this many pixels are rounded differently


def _arithmetic(device: torch.device) -> str:
    """The first of _MODES with which `_resize_band` equals this device's `F.interpolate`.

    PyTorch's CPU kernels are compiled once per instruction set: its AVX2/AVX512 builds contract
    a·b + c into fused multiply-adds, the baseline build does not. Which one runs here is found
    once, on a random input, so that `_RowResizer` reproduces `F.interpolate` bit for bit.
    (Outputs of at most _SMALL_PLANE pixels take another path with other rounding; they are
    never resized by rows.)
    """
    if device.type not in _MODE:
        x = torch.randn(3, 40, 50, generator=torch.Generator().manual_seed(0)).mul(8).to(device)
        size = (161, 211)  # odd: vector loops' scalar tails are checked too
        reference = bilinear(x, size)
        mismatches = {}
        for mode in _MODES:
            rows = _linear_axis(x.shape[1], size[0], mode, device)
            cols = _linear_axis(x.shape[2], size[1], mode, device)
            out = _resize_band(lambda a, b: x[:, a:b], rows, cols, mode)
            mismatches[mode] = int((out != reference).sum())
            if not mismatches[mode]:
                break
        _MODE[device.type] = min(mismatches, key=mismatches.get)
        if min(mismatches.values()):
            warnings.warn(
                f"row-wise bilinear resizing on {device.type} differs from F.interpolate in the "
                "last bit of some values: results of large images may differ on exact ties",
                stacklevel=2,
            )
    return _MODE[device.type]


class _RowResizer:
    """`resize_to_original(mask_logits, ...)[:, start:stop]` for a band of rows at a time,
    bit-identical to it: the whole image when it is small, else the two bilinear resizes
    (1/4 → padded input size, cropped; → original size) on only the source rows each band needs.
    """

    def __init__(
        self,
        mask_logits: torch.Tensor,
        image_size: Sequence[int],
        padded_size: Sequence[int],
        original_size: Sequence[int],
    ) -> None:
        self.logits = mask_logits.float()
        self.sizes = (tuple(image_size), tuple(padded_size), tuple(original_size))
        self.height, self.width = (int(s) for s in original_size)
        device = self.logits.device
        self.mode = _arithmetic(device)
        (image_h, image_w), (padded_h, padded_w) = image_size, padded_size
        in_h, in_w = self.logits.shape[-2:]
        # the first resize, cropped to the image
        self.rows1 = _linear_axis(in_h, padded_h, self.mode, device).band(0, image_h)
        self.cols1 = _linear_axis(in_w, padded_w, self.mode, device).band(0, image_w)
        self.second = tuple(image_size) != tuple(original_size)
        if self.second:
            self.rows2 = _linear_axis(image_h, self.height, self.mode, device)
            self.cols2 = _linear_axis(image_w, self.width, self.mode, device)
        # the output plane of each resize: the padded input size, and the original size when
        # it is resized again (without that resize, only the first plane counts)
        planes = (padded_h * padded_w,) + ((self.height * self.width,) if self.second else ())
        self.banded = min(planes) > _SMALL_PLANE or device.type != "cpu"

    def bands(self, bytes_per_pixel: int) -> Iterator[tuple[int, int]]:
        """(start, stop) row bands: the whole image when `bytes_per_pixel` × H × W fits in
        FULL_FRAME_BYTES, else bands of about CHUNK_BYTES."""
        row_bytes = max(1, bytes_per_pixel) * self.width
        step = self.height
        if row_bytes * self.height > FULL_FRAME_BYTES and self.banded:
            step = max(1, CHUNK_BYTES // row_bytes)
        for start in range(0, self.height, step):
            yield start, min(start + step, self.height)

    def _first(self, start: int, stop: int) -> torch.Tensor:
        return _resize_band(
            lambda a, b: self.logits[:, a:b], self.rows1.band(start, stop), self.cols1, self.mode
        )

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Logits [N, stop - start, W] of rows start:stop at the original size."""
        if len(self.logits) == 0:
            return self.logits.new_zeros((0, stop - start, self.width))
        if (start, stop) == (0, self.height):
            return resize_to_original(self.logits, *self.sizes)
        if not self.second:
            return self._first(start, stop)
        return _resize_band(self._first, self.rows2.band(start, stop), self.cols2, self.mode)
