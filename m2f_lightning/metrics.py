"""Evaluation metrics: panoptic quality (ours, panopticapi semantics), mask AP and mIoU.

All are torchmetrics `Metric`s with sum-reduced states, so they synchronise across DDP ranks.
"""

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision

from .types import EvalTarget, InstanceSet, Segment, SegmentationResult

# faster-coco-eval prints its whole summary at INFO level on every compute
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


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
        gt_is_crowd[0] = False
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


class GatheredMeanAveragePrecision(MeanAveragePrecision):
    """torchmetrics' mask AP, synchronised for ranks that scored different numbers of images.

    torchmetrics gathers its per-image list states element by element (and its RLE masks by
    interleaving the ranks' lists), which needs the same number of images on every rank: a
    3-and-2 split aborts in gloo with a collective size mismatch. Here every list state is
    gathered whole (`all_gather_object`, on CPU) and concatenated rank by rank, so each image
    is scored once whatever the split, a rank with no image included.
    """

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        import torch.distributed as dist

        world_size = dist.get_world_size(process_group)
        for attr in self._defaults:
            local = getattr(self, attr)
            if not isinstance(local, list):
                raise TypeError(f"unexpected non-list state {attr} in MeanAveragePrecision")
            local = [v.cpu() if isinstance(v, torch.Tensor) else v for v in local]
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, local, group=process_group)
            setattr(self, attr, [item for rank_items in gathered for item in rank_items])


class SemanticIoU(MulticlassJaccardIndex):
    """mIoU over a dataset-level confusion matrix (ignore label 255), as detectron2's
    SemSegEvaluator computes it.

    Pixels whose ground truth is the ignore label are left out. Per class c: IoU = tp /
    (pos_gt + pos_pred − tp), with pos_gt the ground-truth pixels of c and pos_pred the pixels
    predicted c (on non-ignored ground truth). mIoU is the mean IoU over the classes with
    pos_gt > 0 (detectron2's acc_valid; its iou_valid, pos_gt > 0 and union > 0, selects the same
    classes): a class present in the ground truth nowhere counts in the mean even if it is
    predicted. `iou_per_class` is NaN for the classes left out.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: Any) -> None:
        super().__init__(
            num_classes=num_classes, ignore_index=ignore_index, average="none", **kwargs
        )

    def compute(self) -> dict[str, torch.Tensor]:
        confmat = self.confmat.double()  # rows: ground truth, columns: prediction
        tp = confmat.diag()
        pos_gt, pos_pred = confmat.sum(1), confmat.sum(0)
        union = pos_gt + pos_pred - tp
        valid = pos_gt > 0
        iou = torch.where(valid, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        miou = iou[valid].mean() if valid.any() else torch.tensor(0.0, dtype=torch.float64)
        return {"miou": miou, "iou_per_class": iou}


class CityscapesInstanceAP:
    """Cityscapes instance AP as the paper reports it: cityscapesScripts'
    `evalInstanceLevelSemanticLabeling` (AP over overlaps 0.5:0.95 with its minimum region sizes,
    and AP50), run on the gtFine instanceIds PNGs, as detectron2's CityscapesInstanceEvaluator.

    `update` writes each predicted instance as a PNG and one text file per image (mask, label id,
    score), as that evaluator does; `compute` gathers the records of every rank and evaluates.
    Like the official evaluator it needs the files on one machine (one node).
    """

    def __init__(self, label_ids: Sequence[int]) -> None:
        import tempfile

        self.label_ids = [int(i) for i in label_ids]  # contiguous class → Cityscapes label id
        self.root = Path(tempfile.gettempdir()).resolve() / "m2f_cityscapes_eval"
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(dir=self.root))
        self.records: list[tuple[str, str]] = []  # (ground-truth PNG, prediction text file)

    def update(self, instances: InstanceSet, instance_file: str) -> None:
        from PIL import Image

        stem = f"{len(self.records):06d}_{Path(instance_file).stem}"
        lines = []
        masks = instances.masks.cpu().numpy()
        scores = _need(instances.scores, "instance scores").cpu().tolist()
        for k, (mask, label, score) in enumerate(
            zip(masks, instances.labels.tolist(), scores, strict=True)
        ):
            if not mask.any():  # matches nothing; the evaluator skips it too
                continue
            name = f"{stem}_{k}.png"
            Image.fromarray(mask.astype("uint8") * 255).save(self.folder / name)
            lines.append(f"{name} {self.label_ids[label]} {score}\n")
        text = self.folder / f"{stem}.txt"
        text.write_text("".join(lines))
        self.records.append((str(instance_file), str(text)))

    def _gathered(self) -> list[tuple[str, str]]:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return list(self.records)
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.records)
        return [record for rank_records in gathered for record in rank_records]

    def compute(self) -> dict[str, float]:
        """{"AP", "AP50"} in percent (empty when no image was scored)."""
        import contextlib
        import copy
        import io
        import os
        import tempfile

        import numpy as np

        records = self._gathered()
        if not records:
            return {}
        from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval

        with tempfile.TemporaryDirectory(dir=self.root) as work:
            args = copy.deepcopy(cs_eval.args)
            args.predictionPath = str(self.root)
            args.gtInstancesFile = os.path.join(work, "gtInstances.json")
            args.JSONOutput, args.quiet, args.colorized, args.csv = False, True, False, False
            cwd = os.getcwd()
            os.chdir(work)  # in case the evaluator writes to the working directory
            # cityscapesScripts 2.3 calls np.in1d, which numpy 2.4 removed: lend it for the call
            shim = not hasattr(np, "in1d")
            if shim:
                np.in1d = lambda a, b, **kw: np.isin(np.ravel(a), b, **kw)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    # evaluateImgLists' steps, less its debug dump of the matches (matches.json,
                    # which json cannot write from numpy integers)
                    cs_eval.setInstanceLabels(args)
                    gts = [r[0] for r in records]
                    gt_instances = cs_eval.getGtInstances(gts, args)
                    matches = cs_eval.matchGtWithPreds(
                        [r[1] for r in records], gts, gt_instances, args
                    )
                    averages = cs_eval.computeAverages(cs_eval.evaluateMatches(matches, args), args)
            finally:
                os.chdir(cwd)
                if shim:
                    del np.in1d
        return {"AP": 100 * float(averages["allAp"]), "AP50": 100 * float(averages["allAp50%"])}

    def reset(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.records = []


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
        self.ignore_label = ignore_label
        self.pq = PanopticQuality(thing_ids, stuff_ids) if task == "panoptic" else None
        self.ap = (
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
                        }
                    ],
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


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise ValueError(f"the metrics of this task need {what}, which is missing")
    return value


def _crowd_flags(instances: InstanceSet) -> torch.Tensor:
    if instances.iscrowd is not None:
        return instances.iscrowd
    return torch.zeros(len(instances.labels), dtype=torch.bool)
