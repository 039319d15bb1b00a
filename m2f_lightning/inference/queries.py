"""Post-processing of one image's query set (class logits [Q, K+1], mask logits [Q, h, w]) at
the mask logits' resolution: the semantic, panoptic and instance rules of the original
implementation (no fixed intermediate size; panoptic thresholds 0.8/0.8; instance top-100 over
queries × classes scored by class probability × mean mask probability)."""

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F


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
