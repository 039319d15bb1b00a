"""Mask AP: COCO AP as pycocotools' COCOeval computes it, kept in torchmetrics' states that
sync any split of images over ranks, and cityscapesScripts' instance AP (the paper's Cityscapes
number)."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision

from ..types import InstanceSet
from .coco_eval import IOU_THRESHOLDS, RECALL_THRESHOLDS, coco_mask_ap


class GatheredMeanAveragePrecision(MeanAveragePrecision):
    """COCO mask AP equal to pycocotools' COCOeval, synchronised for ranks that scored
    different numbers of images.

    torchmetrics' `update` keeps the per-image RLE masks; `compute` is `coco_eval.coco_mask_ap`
    (pycocotools' float64 thresholds, every image scored, images in dataset-id order, the
    ground truth's `area`) instead of torchmetrics' conversion. `update` takes each image's
    dataset id (`image_ids`) and ground-truth `area` (NaN or absent: the mask's pixel count).

    torchmetrics gathers its per-image list states element by element (and its RLE masks by
    interleaving the ranks' lists), which needs the same number of images on every rank: a
    3-and-2 split aborts in gloo with a collective size mismatch. Here every list state is
    gathered whole (`all_gather_object`, on CPU) and concatenated rank by rank, so each image
    is scored once whatever the split, a rank with no image included; `compute` orders the
    images by id, so the split does not change the result either.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            iou_thresholds=IOU_THRESHOLDS.tolist(),
            rec_thresholds=RECALL_THRESHOLDS.tolist(),
            **kwargs,
        )
        if self.iou_type != ("segm",):
            raise ValueError(f"GatheredMeanAveragePrecision is mask AP (segm), not {self.iou_type}")
        self.add_state("image_keys", default=[], dist_reduce_fx=None)

    def update(  # type: ignore[override]
        self,
        preds: list[dict[str, torch.Tensor]],
        target: list[dict[str, torch.Tensor]],
        image_ids: Sequence[Any] | None = None,
    ) -> None:
        """torchmetrics' update; `image_ids` (default: the order of arrival) order the images
        as COCOeval orders its image ids."""
        target = [_with_area(item) for item in target]
        super().update(preds, target)
        keys = list(image_ids) if image_ids is not None else [""] * len(target)
        if len(keys) != len(target):
            raise ValueError(f"{len(keys)} image ids for {len(target)} images")
        self.image_keys.extend(keys)

    def compute(self) -> dict[str, torch.Tensor]:
        return coco_mask_ap(
            self.groundtruth_mask,
            self.groundtruth_labels,
            self.groundtruth_crowds,
            self.groundtruth_area,
            self.detection_mask,
            self.detection_scores,
            self.detection_labels,
            self.image_keys,
            class_metrics=self.class_metrics,
        )

    def _apply(self, fn: Callable) -> torch.nn.Module:  # type: ignore[override]
        # RLE masks and image ids are no tensors: left as they are when the metric moves
        return Metric._apply(
            self, fn, exclude_state=("detection_mask", "groundtruth_mask", "image_keys")
        )

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
            numpy, cs_eval.np = cs_eval.np, _NumpyForCityscapesScripts()
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
                cs_eval.np = numpy
        return {"AP": 100 * float(averages["allAp"]), "AP50": 100 * float(averages["allAp50%"])}

    def reset(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.records = []


class _NumpyForCityscapesScripts:
    """numpy as cityscapesScripts 2.3's instance evaluator needs it, lent to that module alone
    during `compute`: `in1d`, which numpy 2.4 removed (as `isin` of the flattened array); and a
    `cumsum` that gives [0] for an empty array. The evaluator takes the cumsum's last entry as the
    number of true positives of a class that has ground truth and predictions; when every one of
    those predictions lies on ignored pixels and no ground truth is matched, the array is empty
    and the evaluator stops with an IndexError. With [0] it finishes its own computation: no
    true positive, precision-recall curve of its one artificial point, AP 0 — the value its
    `elif haveGt` branch gives a class with ground truth and nothing predicted."""

    def __getattr__(self, name: str) -> Any:
        import numpy as np

        return getattr(np, name)

    @staticmethod
    def in1d(a: Any, b: Any, **kwargs: Any) -> Any:
        import numpy as np

        return np.isin(np.ravel(a), b, **kwargs)

    @staticmethod
    def cumsum(a: Any, *args: Any, **kwargs: Any) -> Any:
        import numpy as np

        out = np.cumsum(a, *args, **kwargs)
        return out if out.size else np.zeros(1, dtype=out.dtype)


def _with_area(item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ground truth with its `area` (float64): the given one, the pixel count where it is
    absent or NaN (label-PNG datasets have no annotation area)."""
    pixels = item["masks"].flatten(1).sum(1).double()
    area = item.get("area")
    if area is None:
        return {**item, "area": pixels}
    area = area.double().to(pixels.device)
    return {**item, "area": torch.where(torch.isnan(area), pixels, area)}


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise ValueError(f"the metrics of this task need {what}, which is missing")
    return value
