"""Panoptic quality exactly as panopticapi's `pq_compute`, as a torchmetrics `Metric`."""

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from ..types import Segment


class PanopticQuality(Metric):
    """PQ / SQ / RQ exactly as panopticapi's `pq_compute`, vectorised with integer keys.

    Inputs are int64 tensors [B, H, W, 2] of (category_id, instance_id); a category outside
    `things ∪ stuffs` is void; the instance id of stuff pixels is ignored (one segment per stuff
    class and image, as torchmetrics does). `target_crowd` (bool [B, H, W]) marks the pixels of crowd
    segments. Rules (panopticapi): a prediction and a non-crowd ground-truth segment of the same
    category match when IoU > 0.5, where the union leaves out the prediction's overlap with
    ground-truth void; unmatched non-crowd ground truth is a false negative; an unmatched
    prediction is a false positive unless more than half of it lies on void or on crowd regions
    of its category. PQ is averaged over categories with TP + FP + FN > 0.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, things: Iterable[int], stuffs: Iterable[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.things = sorted({int(t) for t in things})
        self.stuffs = sorted({int(s) for s in stuffs})
        if set(self.things) & set(self.stuffs):
            raise ValueError(
                f"categories both thing and stuff: {set(self.things) & set(self.stuffs)}"
            )
        self.categories = self.things + self.stuffs
        if not self.categories:
            raise ValueError("PanopticQuality needs at least one category")
        self._max_category = max(self.categories)
        lookup = torch.full((self._max_category + 1,), -1, dtype=torch.int64)
        lookup[torch.tensor(self.categories)] = torch.arange(len(self.categories))
        # category → index, shifted by one, with void (-1) below 0 and above the largest category
        padded = torch.cat([lookup.new_full((1,), -1), lookup, lookup.new_full((1,), -1)])
        self.register_buffer("_lookup_padded", padded, persistent=False)
        thing = ((padded >= 0) & (padded < len(self.things))).long()  # 1 for thing categories
        self.register_buffer("_thing_padded", thing, persistent=False)
        n = len(self.categories)
        for name in ("iou_sum", "true_positives", "false_positives", "false_negatives"):
            dtype = torch.float64 if name == "iou_sum" else torch.int64
            self.add_state(name, default=torch.zeros(n, dtype=dtype), dist_reduce_fx="sum")

    def update(
        self, preds: torch.Tensor, target: torch.Tensor, target_crowd: torch.Tensor | None = None
    ) -> None:
        if preds.shape != target.shape or preds.dim() != 4 or preds.shape[-1] != 2:
            raise ValueError(
                f"preds and target must both be [B, H, W, 2]; got {tuple(preds.shape)} and {tuple(target.shape)}"
            )
        if target_crowd is None:
            target_crowd = torch.zeros(target.shape[:3], dtype=torch.bool, device=target.device)
        elif target_crowd.shape != target.shape[:3]:
            raise ValueError(f"target_crowd must be [B, H, W] = {tuple(target.shape[:3])}")
        for p, t, c in zip(preds, target, target_crowd, strict=True):
            self._update_image(p.reshape(-1, 2).long(), t.reshape(-1, 2).long(), c.reshape(-1))

    # a dense table of segment keys up to this size replaces a sort (torch.unique)
    DENSE_KEYS = 1 << 22

    def _segments(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment index per pixel (0 = void) and the category index of each segment (-1 for
        void at index 0), from (category, instance) pairs [P, 2], in one pass: key =
        (category index + 1)·(max thing instance + 1) + thing instance (0 for stuff and void),
        compacted with a bincount table (or torch.unique when the key range is huge)."""
        device = pairs.device
        # 0 for every category outside the table (void), the table's index + 1 otherwise
        # (index_select: a plain 1-D gather, several times faster than advanced indexing)
        shifted = pairs[:, 0].clamp(-1, self._max_category + 1).add_(1)
        instance = pairs[:, 1].clamp(min=0)
        instance.mul_(self._thing_padded.to(device).index_select(0, shifted))
        span = int(instance.max()) + 1 if len(instance) else 1
        category = self._lookup_padded.to(device).index_select(0, shifted).add_(1)
        keys = instance.add_(category, alpha=span)
        num_keys = (len(self.categories) + 1) * span
        if num_keys <= self.DENSE_KEYS:
            present = torch.bincount(keys, minlength=num_keys)
            present[0] = 1  # index 0 is void whether or not void pixels exist
            unique = present.nonzero()[:, 0]
            remap = torch.empty(num_keys, dtype=torch.int64, device=keys.device)
            remap[unique] = torch.arange(len(unique), device=keys.device)
            segment = remap.index_select(0, keys)
        else:
            unique, segment = torch.unique(
                torch.cat([keys.new_zeros(1), keys]), return_inverse=True
            )
            segment = segment[1:]
        return segment, unique // span - 1

    def _update_image(self, pred: torch.Tensor, gt: torch.Tensor, crowd: torch.Tensor) -> None:
        gt_seg, gt_cat = self._segments(gt)
        pred_seg, pred_cat = self._segments(pred)
        num_gt, num_pred = len(gt_cat), len(pred_cat)
        # a ground-truth segment is crowd if its pixels are marked crowd
        gt_is_crowd = torch.zeros(num_gt, dtype=torch.bool, device=gt.device)
        if bool(crowd.any()):
            gt_is_crowd[gt_seg[crowd]] = True
        inter = torch.bincount(
            torch.add(pred_seg, gt_seg, alpha=num_pred), minlength=num_gt * num_pred
        )
        inter = inter.view(num_gt, num_pred)
        gt_area = inter.sum(1)
        pred_area = inter.sum(0)
        # drop void rows/cols (index 0) for matching
        void_overlap = inter[0, 1:]  # each prediction's overlap with gt void
        pair = inter[1:, 1:].double()
        union = pred_area[1:][None, :] + gt_area[1:][:, None] - pair - void_overlap[None, :]
        same_cat = gt_cat[1:, None] == pred_cat[None, 1:]
        iou = torch.where(
            same_cat & ~gt_is_crowd[1:, None], pair / union.clamp(min=1), torch.zeros_like(pair)
        )
        matched = iou > 0.5
        gt_matched = matched.any(1)
        pred_matched = matched.any(0)
        n = len(self.categories)
        tp_cat = gt_cat[1:][gt_matched]
        self.true_positives += torch.bincount(tp_cat, minlength=n)
        self.iou_sum += torch.zeros(n, dtype=torch.float64, device=iou.device).index_add_(
            0,
            tp_cat,
            (iou * matched)[gt_matched].sum(1),  # at most one match per segment
        )
        fn = ~gt_matched & ~gt_is_crowd[1:]
        self.false_negatives += torch.bincount(gt_cat[1:][fn], minlength=n)
        # an unmatched prediction lying mostly on void or same-category crowd is ignored
        crowd_same_cat = (inter[1:, 1:] * (gt_is_crowd[1:, None] & same_cat)).sum(0)
        ignored = (void_overlap + crowd_same_cat) > 0.5 * pred_area[1:]
        fp = ~pred_matched & ~ignored
        self.false_positives += torch.bincount(pred_cat[1:][fp], minlength=n)

    def compute(self) -> dict[str, torch.Tensor]:
        tp = self.true_positives.double()
        fp = self.false_positives.double()
        fn = self.false_negatives.double()
        denom = tp + 0.5 * fp + 0.5 * fn
        present = (tp + fp + fn) > 0
        pq = torch.where(present, self.iou_sum / denom.clamp(min=1e-12), torch.zeros_like(tp))
        sq = torch.where(tp > 0, self.iou_sum / tp.clamp(min=1), torch.zeros_like(tp))
        rq = torch.where(present, tp / denom.clamp(min=1e-12), torch.zeros_like(tp))
        is_thing = torch.zeros(len(self.categories), dtype=torch.bool, device=tp.device)
        is_thing[: len(self.things)] = True
        out: dict[str, torch.Tensor] = {}
        for suffix, select in (
            ("", present),
            ("_things", present & is_thing),
            ("_stuff", present & ~is_thing),
        ):
            count = select.sum().clamp(min=1)
            out[f"pq{suffix}"] = (pq * select).sum() / count
            out[f"sq{suffix}"] = (sq * select).sum() / count
            out[f"rq{suffix}"] = (rq * select).sum() / count
        nan = torch.full_like(pq, float("nan"))
        out["pq_per_class"] = torch.where(present, pq, nan)
        out["sq_per_class"] = torch.where(present, sq, nan)
        out["rq_per_class"] = torch.where(present, rq, nan)
        out["categories"] = torch.tensor(self.categories, device=tp.device)
        return out


def panoptic_to_pairs(
    panoptic_seg: torch.Tensor, segments: Sequence[Segment], void: int = -1
) -> torch.Tensor:
    """A panoptic result (id map + segments) → [H, W, 2] (category, instance) pairs."""
    pairs = torch.full(
        (*panoptic_seg.shape, 2), void, dtype=torch.int64, device=panoptic_seg.device
    )
    for segment in segments:
        mask = panoptic_seg == segment.id
        pairs[mask, 0] = segment.category_id
        pairs[mask, 1] = segment.id
    return pairs
