"""Per-image results of a batch's model outputs: `postprocess` (dicts) and `predict_results`
(typed `SegmentationResult`s)."""

from collections.abc import Iterable, Sequence
from typing import Any

from ..types import InstanceSet, ModelOutput, Segment, SegmentationResult
from .full_resolution import (
    SemanticScores,
    _instances_full_resolution,
    _panoptic_full_resolution,
    _semantic_padded_then_resized,
)
from .settings import InferenceSettings


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
