"""Post-processing of Mask2Former outputs into semantic, panoptic and instance results.

These follow the original implementation (not the HF port's): no fixed intermediate size,
padding cropped before resizing to the original image size, panoptic thresholds 0.8/0.8, and
instance top-100 over queries × classes scored by class probability × mean mask probability.
Work is done one image at a time and, at full resolution, a few queries at a time, so memory
stays bounded for large images.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .types import InstanceSet, ModelOutput, Segment, SegmentationResult

QUERY_CHUNK = 16  # queries upsampled to full resolution at once


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


def _full_resolution(
    mask_logits: torch.Tensor,
    image_size: Sequence[int],
    padded_size: Sequence[int],
    original_size: Sequence[int],
) -> torch.Tensor:
    """Resize logits [N, h, w] to the original size, a few queries at a time."""
    if len(mask_logits) == 0:
        return mask_logits.new_zeros((0, *original_size))
    return torch.cat(
        [
            resize_to_original(chunk, image_size, padded_size, original_size)
            for chunk in mask_logits.split(QUERY_CHUNK)
        ]
    )


def _semantic_full_resolution(
    mask_cls: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Sequence[int],
    padded_size: Sequence[int],
    original_size: Sequence[int],
) -> torch.Tensor:
    """Exact `semantic_inference` at full resolution, accumulated over query chunks."""
    probs = F.softmax(mask_cls.float(), dim=-1)[:, :-1]
    out = None
    for start in range(0, len(mask_logits), QUERY_CHUNK):
        chunk = resize_to_original(
            mask_logits[start : start + QUERY_CHUNK], image_size, padded_size, original_size
        )
        part = torch.einsum("qc,qhw->chw", probs[start : start + QUERY_CHUNK], chunk.sigmoid())
        out = part if out is None else out + part
    return out


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
    scores classes at the padded size and resizes the scores; with panoptic (or instance) output
    the mask logits are resized first and every result is computed from them.
    """
    if task not in ("panoptic", "instance", "semantic"):
        raise ValueError(f"unknown task '{task}': choose panoptic, instance or semantic")
    thing_ids = list(thing_ids)
    padded_size = outputs["padded_size"]
    results = []
    for i, (image_size, original_size) in enumerate(zip(image_sizes, original_sizes, strict=True)):
        mask_cls = outputs["pred_logits"][i]
        mask_logits = outputs["pred_masks"][i]
        result: dict[str, Any] = {}
        if task == "semantic":
            result["sem_seg"] = _semantic_padded_then_resized(
                mask_cls, mask_logits, image_size, padded_size, original_size
            )
        if task == "panoptic":
            result["sem_seg"] = _semantic_full_resolution(
                mask_cls, mask_logits, image_size, padded_size, original_size
            )
        if task == "panoptic":
            num_classes = mask_cls.shape[-1] - 1
            scores, labels = F.softmax(mask_cls.float(), dim=-1).max(-1)
            keep = labels.ne(num_classes) & (scores > object_mask_threshold)
            kept_masks = _full_resolution(mask_logits[keep], image_size, padded_size, original_size)
            seg, segments = panoptic_inference(
                mask_cls[keep], kept_masks, thing_ids, object_mask_threshold, overlap_threshold
            )
            result["panoptic_seg"], result["segments_info"] = seg, segments
        if task in ("panoptic", "instance"):
            result["instances"] = _instances_full_resolution(
                mask_cls,
                mask_logits,
                image_size,
                padded_size,
                original_size,
                topk,
                thing_ids if task == "panoptic" else None,
            )
        results.append(result)
    return results


def _instances_full_resolution(
    mask_cls: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Sequence[int],
    padded_size: Sequence[int],
    original_size: Sequence[int],
    topk: int,
    thing_ids: list[int] | None,
) -> dict[str, torch.Tensor]:
    """`instance_inference` at the original size, upsampling only the queries in the top-k."""
    scores, labels, query_idx = _topk_pairs(mask_cls, topk, thing_ids)
    unique_q, inverse = torch.unique(query_idx, return_inverse=True)
    full = _full_resolution(mask_logits[unique_q], image_size, padded_size, original_size)[inverse]
    return _score_instances(scores, labels, full)


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
