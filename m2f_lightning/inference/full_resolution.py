"""Results at the original image size without holding [queries, H, W] or [classes, H, W] float
scores there: mask logits are resized a band of rows at a time (`resize._RowResizer`), and only
what is returned is kept at full size (the panoptic id map, bool instance masks and, on demand,
the semantic class map: `SemanticScores`)."""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import resize
from .queries import _topk_pairs
from .resize import _RowResizer, bilinear, resize_to_original

QUERY_CHUNK = 16  # queries per step of the semantic score sum (fixes its summation order)


# ---- full-resolution results, a band of rows at a time ----


class _LazyScores:
    """Class scores [K, H, W] at the original size, produced a band of rows at a time by
    `_bands()`: `argmax(0)` (the class map, computed once) and `full()` never need more than a
    band at once beside their result. Subclasses give `shape`, `device`, `to` and `_bands`."""

    dtype = torch.float32
    _class_map: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "_LazyScores":
        raise NotImplementedError

    def _bands(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, device={self.device})"

    def cpu(self) -> "_LazyScores":
        return self.to("cpu")

    def argmax(self, dim: int = 0) -> torch.Tensor:
        """The class map int64 [H, W] (only over classes: dim 0)."""
        if dim not in (0, -3):
            raise ValueError(f"{type(self).__name__}.argmax is over the class dimension (0) only")
        if self._class_map is None:
            class_map = torch.empty(self.shape[1:], dtype=torch.int64, device=self.device)
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


class SemanticScores(_LazyScores):
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

    def to(self, device: torch.device | str) -> "SemanticScores":
        moved = SemanticScores.__new__(SemanticScores)
        moved.probs, moved.mask_logits = self.probs.to(device), self.mask_logits.to(device)
        moved.sizes = self.sizes
        moved._class_map = None if self._class_map is None else self._class_map.to(device)
        return moved

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
    step = max(1, resize.CHUNK_BYTES // (8 * width))
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
    step = max(2, resize.CHUNK_BYTES // (4 * height * width))
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
) -> "ResizedScores":
    """A semantic-only model's class scores in the official order: mask logits upsampled to the
    padded input, `semantic_inference` there (softmax × sigmoid), then the K class scores cropped
    to the image and resized to the original size (bilinear). The scores are held at the input
    size (bounded by the test size); the resize to the original size is lazy, a band of rows at a
    time, so a 24-megapixel photo never holds K full-size planes."""
    probs = F.softmax(mask_cls.float(), dim=-1)[:, :-1]
    scores = None
    for start in range(0, len(mask_logits), QUERY_CHUNK):
        chunk = bilinear(mask_logits[start : start + QUERY_CHUNK].float(), padded_size)
        part = torch.einsum("qc,qhw->chw", probs[start : start + QUERY_CHUNK], chunk.sigmoid())
        scores = part if scores is None else scores + part
    scores = scores[:, : image_size[0], : image_size[1]]
    # at the image size already: the "first resize" of ResizedScores is the identity
    return ResizedScores(scores, image_size, image_size, original_size)


class ResizedScores(_LazyScores):
    """Class scores [K, H, W] at the original size from scores [K, h', w'] at 1/4 of the padded
    input (what sliding-window and test-time-augmented inference gather): resized as mask logits
    are (`resize_to_original`: bilinear to the padded size, cropped, bilinear to the original
    size), a band of rows at a time, on demand. The same interface as `SemanticScores`."""

    def __init__(
        self,
        scores: torch.Tensor,
        image_size: Sequence[int],
        padded_size: Sequence[int],
        original_size: Sequence[int],
    ) -> None:
        self.scores = scores.float()
        self.sizes = (tuple(image_size), tuple(padded_size), tuple(original_size))
        self._class_map: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.scores.shape[0], *self.sizes[2]))

    @property
    def device(self) -> torch.device:
        return self.scores.device

    def to(self, device: torch.device | str) -> "ResizedScores":
        moved = ResizedScores(self.scores.to(device), *self.sizes)
        moved._class_map = None if self._class_map is None else self._class_map.to(device)
        return moved

    def _bands(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        resizer = _RowResizer(self.scores, *self.sizes)
        for start, stop in resizer.bands(4 * len(self.scores)):
            yield start, stop, resizer.rows(start, stop)
