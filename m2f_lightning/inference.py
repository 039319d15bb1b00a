"""Post-processing of Mask2Former outputs into semantic, panoptic and instance results.

These follow the original implementation (not the HF port's): no fixed intermediate size,
padding cropped before resizing to the original image size, panoptic thresholds 0.8/0.8, and
instance top-100 over queries × classes scored by class probability × mean mask probability.

Memory stays bounded for large images: `postprocess` never holds [queries, H, W] or
[classes, H, W] float scores at the original size. Mask logits are resized a band of rows at a
time (`_RowResizer`, bit-identical to `resize_to_original`), and only what is returned is kept at
full size: the panoptic id map, bool instance masks and, on demand, the semantic class map
(`SemanticScores`).
"""

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .types import InstanceSet, ModelOutput, Segment, SegmentationResult

QUERY_CHUNK = 16  # queries per step of the semantic score sum (fixes its summation order)
# images whose [queries, H, W] float32 logits fit in this are resized in one go by
# `resize_to_original`; larger ones a band of rows at a time, of about CHUNK_BYTES each
FULL_FRAME_BYTES = 256 * 2**20
CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class InferenceSettings:
    """Post-processing thresholds: the paper's values are the defaults (the one place they live;
    `conf/inference/default.yaml` sets them from the dataset where the recipes differ)."""

    object_mask_threshold: float = 0.8  # panoptic: keep queries whose class score is above
    overlap_threshold: float = 0.8  # panoptic: drop segments mostly hidden by others
    topk: int = 100  # instance: (query, class) pairs kept per image


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
    x = F.interpolate(
        mask_logits[None].float(), size=tuple(padded_size), mode="bilinear", align_corners=False
    )
    x = x[..., : image_size[0], : image_size[1]]
    if tuple(image_size) != tuple(original_size):
        x = F.interpolate(x, size=tuple(original_size), mode="bilinear", align_corners=False)
    return x[0]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """Per-class scores [K, h, w]: softmax class probabilities (no-object dropped) × mask sigmoid."""
    probs = F.softmax(mask_cls.float(), dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.float().sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    thing_ids: Iterable[int],
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Panoptic id map int32 [h, w] (0 = void) and segments_info.

    A query is kept when its best class is not no-object and scores above the threshold; each
    pixel goes to the kept query with the highest score × mask probability; a segment whose
    visible part is below `overlap_threshold` of its own mask is dropped; stuff segments of the
    same class are merged into one.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls.float(), dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    height, width = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_pred.device)
    segments: list[dict[str, Any]] = []
    if not keep.any():
        return panoptic_seg, segments
    cur_scores, cur_classes = scores[keep], labels[keep]
    cur_masks = mask_pred[keep].float().sigmoid()
    mask_ids = (cur_scores[:, None, None] * cur_masks).argmax(0)
    things = {int(t) for t in thing_ids}
    stuff_ids: dict[int, int] = {}
    for k in range(len(cur_classes)):
        category = int(cur_classes[k])
        is_thing = category in things
        own = cur_masks[k] >= 0.5
        original_area = int(own.sum())
        mask_area = int((mask_ids == k).sum())
        mask = (mask_ids == k) & own
        if mask_area == 0 or original_area == 0 or not mask.any():
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not is_thing and category in stuff_ids:
            panoptic_seg[mask] = stuff_ids[category]
            continue
        segment_id = len(segments) + 1
        if not is_thing:
            stuff_ids[category] = segment_id
        panoptic_seg[mask] = segment_id
        segments.append(
            {
                "id": segment_id,
                "category_id": category,
                "isthing": is_thing,
                "score": float(cur_scores[k]),
            }
        )
    return panoptic_seg, segments


def _topk_pairs(
    mask_cls: torch.Tensor, topk: int, thing_ids: Iterable[int] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class scores, labels and query indices of the top-k (query, class) pairs."""
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    probs = F.softmax(mask_cls.float(), dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(num_queries)
    scores, flat_idx = probs.flatten().topk(min(topk, probs.numel()), sorted=True)
    labels = labels[flat_idx]
    query_idx = flat_idx // num_classes
    if thing_ids is not None:
        things = torch.as_tensor(
            sorted(int(t) for t in thing_ids), dtype=labels.dtype, device=labels.device
        )
        is_thing = torch.isin(labels, things)
        scores, labels, query_idx = scores[is_thing], labels[is_thing], query_idx[is_thing]
    return scores, labels, query_idx


def _score_instances(
    class_scores: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor
) -> dict[str, torch.Tensor]:
    masks = logits > 0
    mask_scores = (logits.sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    return {"masks": masks, "scores": class_scores * mask_scores, "labels": labels}


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    topk: int = 100,
    thing_ids: Iterable[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Top-k (query, class) pairs: masks bool [N, h, w], scores [N], labels [N].

    score = class probability × mean mask probability inside the binarised mask (logit > 0).
    With `thing_ids` (panoptic-trained models) only thing classes are kept.
    """
    scores, labels, query_idx = _topk_pairs(mask_cls, topk, thing_ids)
    return _score_instances(scores, labels, mask_pred[query_idx].float())


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
        reference = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
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
        planes = (padded_h * padded_w, self.height * self.width if self.second else _SMALL_PLANE)
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


# ---- full-resolution results, a band of rows at a time ----


class SemanticScores:
    """Per-class scores [K, H, W] at the original size (`semantic_inference` of the resized
    mask logits), computed on demand a band of rows at a time instead of held in memory
    (K × H × W float32 is 12.8 GB for 133 classes on a 24-megapixel photo).

    `argmax(0)` gives the class map (int64 [H, W], computed once); `full()` the score tensor.
    Both equal what the same computation on the whole image gives, bit for bit.
    """

    def __init__(
        self,
        mask_cls: torch.Tensor,
        mask_logits: torch.Tensor,
        image_size: Sequence[int],
        padded_size: Sequence[int],
        original_size: Sequence[int],
    ) -> None:
        self.probs = F.softmax(mask_cls.float(), dim=-1)[:, :-1]
        self.mask_logits = mask_logits
        self.sizes = (tuple(image_size), tuple(padded_size), tuple(original_size))
        self._class_map: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.probs.shape[1], *self.sizes[2]))

    @property
    def device(self) -> torch.device:
        return self.mask_logits.device

    dtype = torch.float32

    def __repr__(self) -> str:
        return f"SemanticScores(shape={tuple(self.shape)}, device={self.device})"

    def to(self, device: torch.device | str) -> "SemanticScores":
        moved = SemanticScores.__new__(SemanticScores)
        moved.probs, moved.mask_logits = self.probs.to(device), self.mask_logits.to(device)
        moved.sizes = self.sizes
        moved._class_map = None if self._class_map is None else self._class_map.to(device)
        return moved

    def cpu(self) -> "SemanticScores":
        return self.to("cpu")

    def _bands(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, scores [K, stop - start, W]), summed over QUERY_CHUNK queries at a time."""
        resizer = _RowResizer(self.mask_logits, *self.sizes)
        num_queries, num_classes = self.probs.shape
        # resized logits, their sigmoid and two [K, rows, W] sums are alive at once
        for start, stop in resizer.bands(4 * max(num_queries, num_classes)):
            logits = resizer.rows(start, stop)
            scores = None
            for q in range(0, num_queries, QUERY_CHUNK):
                part = torch.einsum(
                    "qc,qhw->chw",
                    self.probs[q : q + QUERY_CHUNK],
                    logits[q : q + QUERY_CHUNK].sigmoid(),
                )
                scores = part if scores is None else scores + part
            yield start, stop, scores

    def argmax(self, dim: int = 0) -> torch.Tensor:
        """The class map int64 [H, W] (only over classes: dim 0)."""
        if dim not in (0, -3):
            raise ValueError("SemanticScores.argmax is over the class dimension (0) only")
        if self._class_map is None:
            class_map = torch.empty(self.sizes[2], dtype=torch.int64, device=self.device)
            for start, stop, scores in self._bands():
                class_map[start:stop] = scores.argmax(0)
            self._class_map = class_map
        return self._class_map

    def full(self) -> torch.Tensor:
        """The scores float32 [K, H, W] (large: K × H × W × 4 bytes)."""
        out = torch.empty(self.shape, dtype=torch.float32, device=self.device)
        for start, stop, scores in self._bands():
            out[:, start:stop] = scores
        return out


def _panoptic_full_resolution(
    mask_cls: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Sequence[int],
    padded_size: Sequence[int],
    original_size: Sequence[int],
    thing_ids: Iterable[int],
    object_mask_threshold: float,
    overlap_threshold: float,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """`panoptic_inference` of the kept queries' logits resized to the original size, without
    holding them: each band stores the winning query (+1, or 0 where the winner's own mask is
    below 0.5) in the id map and counts each query's areas; segment ids replace them at the end.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls.float(), dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    height, width = (int(s) for s in original_size)
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)
    segments: list[dict[str, Any]] = []
    if not keep.any():
        return panoptic_seg, segments
    # as panoptic_inference(mask_cls[keep], ...) does on the kept queries
    kept_cls, kept_logits = mask_cls[keep], mask_logits[keep]
    scores, labels = F.softmax(kept_cls.float(), dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    if not keep.any():
        return panoptic_seg, segments
    cur_scores, cur_classes = scores[keep], labels[keep]
    resizer = _RowResizer(kept_logits[keep], image_size, padded_size, original_size)
    n = len(cur_scores)
    own_area = torch.zeros(n, dtype=torch.int64, device=mask_logits.device)
    won_area = torch.zeros_like(own_area)  # pixels where the query has the highest score
    visible_area = torch.zeros_like(own_area)  # ... and its own mask ≥ 0.5
    for start, stop in resizer.bands(4 * n):
        probs = resizer.rows(start, stop).sigmoid()
        winner = (cur_scores[:, None, None] * probs).argmax(0)
        own = probs >= 0.5
        own_area += own.flatten(1).sum(1)
        won_area += torch.bincount(winner.flatten(), minlength=n)
        winner_own = own.gather(0, winner[None])[0]
        visible_area += torch.bincount(winner[winner_own], minlength=n)
        panoptic_seg[start:stop] = torch.where(winner_own, winner.int() + 1, 0)
    things = {int(t) for t in thing_ids}
    stuff_ids: dict[int, int] = {}
    segment_of = torch.zeros(n + 1, dtype=torch.int32)  # winner + 1 → segment id (0: void)
    for k in range(n):
        category = int(cur_classes[k])
        is_thing = category in things
        original_area, mask_area = int(own_area[k]), int(won_area[k])
        if mask_area == 0 or original_area == 0 or int(visible_area[k]) == 0:
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not is_thing and category in stuff_ids:
            segment_of[k + 1] = stuff_ids[category]
            continue
        segment_id = len(segments) + 1
        if not is_thing:
            stuff_ids[category] = segment_id
        segment_of[k + 1] = segment_id
        segments.append(
            {
                "id": segment_id,
                "category_id": category,
                "isthing": is_thing,
                "score": float(cur_scores[k]),
            }
        )
    segment_of = segment_of.to(panoptic_seg.device)
    step = max(1, CHUNK_BYTES // (8 * width))
    for start in range(0, height, step):
        band = panoptic_seg[start : start + step]
        band.copy_(segment_of[band.long()])
    return panoptic_seg, segments


def _instances_full_resolution(
    mask_cls: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Sequence[int],
    padded_size: Sequence[int],
    original_size: Sequence[int],
    topk: int,
    thing_ids: list[int] | None,
) -> dict[str, torch.Tensor]:
    """`instance_inference` at the original size: only the top-k queries are resized, a few at a
    time (one, for a large image), and only their bool masks are kept. Each query's whole mask
    is resized and summed at once, so masks and scores are those of the plain computation."""
    scores, labels, query_idx = _topk_pairs(mask_cls, topk, thing_ids)
    unique_q, inverse = torch.unique(query_idx, return_inverse=True)
    height, width = (int(s) for s in original_size)
    device = mask_logits.device
    masks = torch.zeros((len(query_idx), height, width), dtype=torch.bool, device=device)
    prob_sum = torch.zeros(len(unique_q), device=device)
    area = torch.zeros(len(unique_q), dtype=torch.int64, device=device)
    # at least 2 at a time: torch sums a single row in parallel halves, other rows one by one
    step = max(2, CHUNK_BYTES // (4 * height * width))
    for start in range(0, len(unique_q), step):
        queries = unique_q[start : start + step]
        logits = resize_to_original(mask_logits[queries], image_size, padded_size, original_size)
        foreground = logits > 0
        area[start : start + step] = foreground.flatten(1).sum(1)
        probs = logits.sigmoid_().mul_(foreground).flatten(1)
        if len(probs) == 1 and len(query_idx) > 1:  # as the sum over [pairs, H·W] rounds
            probs = probs.expand(2, -1).contiguous()
        prob_sum[start : start + step] = probs.sum(1)[: len(queries)]
        for i, q in enumerate(range(start, start + len(queries))):
            masks[inverse == q] = foreground[i]
    mask_scores = prob_sum[inverse] / (area[inverse] + 1e-6)
    return {"masks": masks, "scores": scores * mask_scores, "labels": labels}


def _semantic_padded_then_resized(
    mask_cls: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Sequence[int],
    padded_size: Sequence[int],
    original_size: Sequence[int],
) -> torch.Tensor:
    """A semantic-only model's class scores in the official order: mask logits upsampled to the
    padded input, `semantic_inference` there (softmax × sigmoid), then the K class scores cropped
    to the image and resized to the original size (bilinear)."""
    probs = F.softmax(mask_cls.float(), dim=-1)[:, :-1]
    scores = None
    for start in range(0, len(mask_logits), QUERY_CHUNK):
        chunk = F.interpolate(
            mask_logits[None, start : start + QUERY_CHUNK].float(),
            size=tuple(padded_size),
            mode="bilinear",
            align_corners=False,
        )[0]
        part = torch.einsum("qc,qhw->chw", probs[start : start + QUERY_CHUNK], chunk.sigmoid())
        scores = part if scores is None else scores + part
    scores = scores[:, : image_size[0], : image_size[1]]
    if tuple(image_size) != tuple(original_size):
        scores = F.interpolate(
            scores[None], size=tuple(original_size), mode="bilinear", align_corners=False
        )[0]
    return scores


def postprocess(
    outputs: dict[str, Any],
    image_sizes: Sequence[Sequence[int]],
    original_sizes: Sequence[Sequence[int]],
    task: str,
    thing_ids: Iterable[int] = (),
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    topk: int = 100,
) -> list[dict[str, Any]]:
    """Per-image results of the task at the original image size.

    panoptic → {"panoptic_seg", "segments_info", "instances", "sem_seg"} (the paper reports PQ, AP
    and mIoU from one panoptic model); instance → {"instances"}; semantic → {"sem_seg"}.
    `sem_seg` holds the class scores [K, H, W]. As the official model: a semantic-only model
    scores classes at the padded size and resizes the scores (a tensor); with panoptic output the
    mask logits are resized first, as a `SemanticScores` (`.argmax(0)` the class map, `.full()`
    the float tensor, both computed on demand in bands of rows).
    """
    if task not in ("panoptic", "instance", "semantic"):
        raise ValueError(f"unknown task '{task}': choose panoptic, instance or semantic")
    thing_ids = list(thing_ids)
    padded_size = outputs["padded_size"]
    results = []
    for i, (image_size, original_size) in enumerate(zip(image_sizes, original_sizes, strict=True)):
        mask_cls = outputs["pred_logits"][i]
        mask_logits = outputs["pred_masks"][i]
        sizes = (image_size, padded_size, original_size)
        result: dict[str, Any] = {}
        if task == "semantic":
            result["sem_seg"] = _semantic_padded_then_resized(
                mask_cls, mask_logits, image_size, padded_size, original_size
            )
        if task == "panoptic":
            result["sem_seg"] = SemanticScores(mask_cls, mask_logits, *sizes)
        if task == "panoptic":
            seg, segments = _panoptic_full_resolution(
                mask_cls, mask_logits, *sizes, thing_ids, object_mask_threshold, overlap_threshold
            )
            result["panoptic_seg"], result["segments_info"] = seg, segments
        if task in ("panoptic", "instance"):
            result["instances"] = _instances_full_resolution(
                mask_cls, mask_logits, *sizes, topk, thing_ids if task == "panoptic" else None
            )
        results.append(result)
    return results


def predict_results(
    outputs: ModelOutput,
    image_sizes: Sequence[Sequence[int]],
    original_sizes: Sequence[Sequence[int]],
    task: str,
    thing_ids: Iterable[int] = (),
    settings: InferenceSettings | None = None,
) -> list[SegmentationResult]:
    """`postprocess` as typed `SegmentationResult`s (what metrics, writers and overlays read)."""
    settings = settings or InferenceSettings()
    raw = postprocess(
        outputs,
        image_sizes,
        original_sizes,
        task,
        thing_ids,
        object_mask_threshold=settings.object_mask_threshold,
        overlap_threshold=settings.overlap_threshold,
        topk=settings.topk,
    )
    return [_as_result(r) for r in raw]


def _as_result(raw: dict[str, Any]) -> SegmentationResult:
    instances = raw.get("instances")
    return SegmentationResult(
        sem_seg=raw.get("sem_seg"),
        panoptic_seg=raw.get("panoptic_seg"),
        segments=[
            Segment(
                id=int(s["id"]),
                category_id=int(s["category_id"]),
                isthing=bool(s["isthing"]),
                score=float(s["score"]),
            )
            for s in raw.get("segments_info", [])
        ],
        instances=None
        if instances is None
        else InstanceSet(
            masks=instances["masks"], labels=instances["labels"], scores=instances["scores"]
        ),
    )
