"""COCO mask AP as pycocotools' `COCOeval` computes it over a whole dataset, from per-image
RLE masks (faster-coco-eval's C++ COCOeval, which gives pycocotools' numbers faster).

What torchmetrics' own conversion changes, and this module keeps as the official evaluator:
the IoU and recall thresholds are pycocotools' float64 `np.linspace` (float32 ones put IoUs and
recalls equal to a threshold on the other side), every scored image is evaluated (the
detections of an image without ground truth are false positives), images are accumulated in
the order of their dataset ids (with tied scores the order changes AP), and the ground truth's
`area` (the annotation JSON's, where known) decides the size buckets.
"""

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# pycocotools' Params.setDetParams, built as it builds them
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = [1, 10, 100]
STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def coco_order(keys: Sequence[Any]) -> list[int]:
    """Positions of the images in the order COCOeval takes its image ids (sorted: numbers by
    value, strings as text); equal or unknown ids keep their order of arrival."""
    return sorted(range(len(keys)), key=lambda i: (isinstance(keys[i], str), keys[i]))


def _rle(mask: tuple) -> dict:
    size, counts = mask
    return {"size": list(size), "counts": counts}


def coco_mask_ap(
    gt_masks: Sequence[Sequence[tuple]],
    gt_labels: Sequence[torch.Tensor],
    gt_crowds: Sequence[torch.Tensor],
    gt_areas: Sequence[torch.Tensor],
    det_masks: Sequence[Sequence[tuple]],
    det_scores: Sequence[torch.Tensor],
    det_labels: Sequence[torch.Tensor],
    image_keys: Sequence[Any],
    class_metrics: bool = False,
) -> dict[str, torch.Tensor]:
    """COCOeval("segm") stats AP, AP50, AP75, APs/m/l (fractions; -1 where undefined, and all -1
    without a detection) of per-image RLE masks (size, counts), and with `class_metrics` the
    per-class AP of each label (`classes`, `map_per_class`)."""
    from faster_coco_eval import COCO, COCOeval_faster
    from faster_coco_eval.core import mask as mask_utils

    images, gts, dets = [], [], []
    for image_id, i in enumerate(coco_order(image_keys)):
        image: dict[str, Any] = {"id": image_id}
        sized = gt_masks[i] or det_masks[i]
        if sized:
            image["height"], image["width"] = (int(v) for v in sized[0][0])
        images.append(image)
        for mask, label, crowd, area in zip(
            gt_masks[i],
            gt_labels[i].tolist(),
            gt_crowds[i].tolist(),
            gt_areas[i].tolist(),
            strict=True,
        ):
            gts.append(
                {
                    "id": len(gts) + 1,  # COCOeval's matching needs ids above 0
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": _rle(mask),
                    "area": float(area),
                    "iscrowd": int(crowd),
                }
            )
        for mask, label, score in zip(
            det_masks[i], det_labels[i].tolist(), det_scores[i].tolist(), strict=True
        ):
            rle = _rle(mask)
            dets.append(
                {
                    "id": len(dets) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),  # as COCO.loadRes gives detections
                    "score": float(score),
                    "iscrowd": 0,
                }
            )
    labels = sorted({a["category_id"] for a in gts} | {d["category_id"] for d in dets})
    out = {key: torch.tensor(-1.0, dtype=torch.float64) for key in STATS}
    out["classes"] = torch.tensor(labels, dtype=torch.int64)
    out["map_per_class"] = torch.full((len(labels),), -1.0, dtype=torch.float64)
    if not dets:
        return out
    categories = [{"id": c, "name": str(c)} for c in labels]
    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset = {"images": images, "annotations": gts, "categories": categories}
    coco_dt.dataset = {"images": images, "annotations": dets, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval_faster(
            coco_gt, coco_dt, iouType="segm", print_function=lambda *args, **kwargs: None
        )
        evaluator.params.imgIds = [image["id"] for image in images]
        evaluator.params.iouThrs = IOU_THRESHOLDS.copy()
        evaluator.params.recThrs = RECALL_THRESHOLDS.copy()
        evaluator.params.maxDets = list(MAX_DETECTIONS)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    for key, value in zip(STATS, evaluator.stats[: len(STATS)], strict=True):
        out[key] = torch.tensor(float(value), dtype=torch.float64)
    if class_metrics:  # COCOeval's summary of one category: its precisions over the others
        precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]  # area all, 100 dets
        for k in range(len(labels)):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            out["map_per_class"][k] = float(valid.mean()) if valid.size else -1.0
    return out
