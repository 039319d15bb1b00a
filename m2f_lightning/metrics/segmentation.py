"""The metrics of a task, fed with post-processed results and their ground truth."""

from collections.abc import Sequence

import torch

from ..types import EvalTarget, InstanceSet, SegmentationResult
from .instance import CityscapesInstanceAP, GatheredMeanAveragePrecision, _need
from .panoptic import PanopticQuality, panoptic_to_pairs
from .semantic import SemanticIoU


class SegmentationMetrics(torch.nn.Module):
    """The metrics of a task: panoptic → PQ + AP + mIoU (as the paper reports them from one
    model), instance → AP, semantic → mIoU. `compute()` returns percentages.

    With `dataset_ids` (contiguous → the dataset's label ids) and targets that name a Cityscapes
    instanceIds PNG, AP and AP50 are cityscapesScripts' (the paper's Cityscapes AP) and the
    COCO-style values are reported beside them as AP_coco, AP50_coco, ...."""

    def __init__(
        self,
        task: str,
        num_classes: int,
        thing_ids: Sequence[int],
        stuff_ids: Sequence[int],
        ignore_label: int = 255,
        class_metrics: bool = False,
        dataset_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if task not in ("panoptic", "instance", "semantic"):
            raise ValueError(f"unknown task '{task}': choose panoptic, instance or semantic")
        self.task = task
        self.pq = PanopticQuality(thing_ids, stuff_ids) if task == "panoptic" else None
        self.ap = (  # COCOeval's AP, as detectron2's COCOEvaluator (see metrics/coco_eval.py)
            GatheredMeanAveragePrecision(
                iou_type="segm", backend="faster_coco_eval", class_metrics=class_metrics
            )
            if task in ("panoptic", "instance")
            else None
        )
        self.miou = (
            SemanticIoU(num_classes, ignore_index=ignore_label)
            if task in ("panoptic", "semantic")
            else None
        )
        # used when the targets name a Cityscapes instanceIds PNG (`EvalTarget.instance_file`)
        self.cityscapes = (
            CityscapesInstanceAP(dataset_ids)
            if dataset_ids is not None and task in ("panoptic", "instance")
            else None
        )

    def update(self, results: Sequence[SegmentationResult], targets: Sequence[EvalTarget]) -> None:
        """Score post-processed results against the ground truth of the same images, from any
        model whose outputs are converted to `SegmentationResult`."""
        if len(results) != len(targets):
            raise ValueError(f"{len(results)} results for {len(targets)} targets")
        for result, target in zip(results, targets, strict=True):
            if self.pq is not None:
                pred = panoptic_to_pairs(
                    _need(result.panoptic_seg, "panoptic_seg"), result.segments
                )
                gt = _need(target.panoptic, "panoptic target").to(pred.device)
                crowd = target.panoptic_crowd
                crowd = crowd.to(pred.device)[None] if crowd is not None else None
                self.pq.update(pred[None], gt[None], crowd)
            if self.ap is not None:
                inst = _need(result.instances, "instances")
                gt_inst = _need(target.instances, "instances target")
                self.ap.update(
                    [
                        {
                            "masks": inst.masks.cpu().bool(),
                            "scores": _need(inst.scores, "instance scores").cpu(),
                            "labels": inst.labels.cpu(),
                        }
                    ],
                    [
                        {
                            "masks": gt_inst.masks.cpu().bool(),
                            "labels": gt_inst.labels.cpu(),
                            "iscrowd": _crowd_flags(gt_inst).cpu().long(),
                            **_areas(gt_inst),
                        }
                    ],
                    image_ids=[result.image_id],
                )
                if self.cityscapes is not None and target.instance_file is not None:
                    self.cityscapes.update(inst, target.instance_file)
            if self.miou is not None:
                pred = _need(result.sem_seg, "sem_seg").argmax(0)
                gt = _need(target.sem_seg, "sem_seg target").to(pred.device)
                self.miou.update(pred[None], gt[None])

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.pq is not None:
            pq = self.pq.compute()
            for key, name in (
                ("pq", "PQ"),
                ("sq", "SQ"),
                ("rq", "RQ"),
                ("pq_things", "PQ_th"),
                ("pq_stuff", "PQ_st"),
                ("sq_things", "SQ_th"),
                ("sq_stuff", "SQ_st"),
                ("rq_things", "RQ_th"),
                ("rq_stuff", "RQ_st"),
            ):
                out[name] = 100 * float(pq[key])
        if self.ap is not None:
            ap = self.ap.compute()
            for key, name in (
                ("map", "AP"),
                ("map_50", "AP50"),
                ("map_75", "AP75"),
                ("map_small", "APs"),
                ("map_medium", "APm"),
                ("map_large", "APl"),
            ):
                value = float(ap[key])
                if value >= 0:  # -1: no ground truth of that size, the metric is undefined
                    out[name] = 100 * value
            cityscapes = self.cityscapes.compute() if self.cityscapes is not None else {}
            if cityscapes:  # the paper's Cityscapes AP; COCO-style AP beside it as AP_coco...
                out = {(f"{k}_coco" if k.startswith("AP") else k): v for k, v in out.items()}
                out.update(cityscapes)
        if self.miou is not None:
            out["mIoU"] = 100 * float(self.miou.compute()["miou"])
        return out

    def per_class(self) -> dict[str, torch.Tensor]:
        """Per-class PQ and IoU (NaN where a class never appeared), for tables."""
        out = {}
        if self.pq is not None:
            pq = self.pq.compute()
            out["PQ"] = 100 * pq["pq_per_class"][torch.argsort(pq["categories"])]
        if self.miou is not None:
            out["IoU"] = 100 * self.miou.compute()["iou_per_class"]
        return out

    def reset(self) -> None:
        for metric in (self.pq, self.ap, self.miou, self.cityscapes):
            if metric is not None:
                metric.reset()


def _crowd_flags(instances: InstanceSet) -> torch.Tensor:
    if instances.iscrowd is not None:
        return instances.iscrowd
    return torch.zeros(len(instances.labels), dtype=torch.bool)


def _areas(instances: InstanceSet) -> dict[str, torch.Tensor]:
    return {"area": instances.areas.cpu()} if instances.areas is not None else {}
