"""Collects what the report shows while evaluation runs, in bounded memory: each image's scores
(a few numbers), the dataset's panoptic tallies per object size and semantic confusion matrix,
and small overlay thumbnails of the K worst images only (a running top-K).

`state()` is picklable and `merge()` joins the states of several ranks, so a distributed
evaluation gathers them on rank 0 (see `callbacks.ReportWriter`)."""

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...metrics import panoptic_to_pairs
from ...types import EvalTarget, SegmentationResult
from ..visualize import class_map, overlay, segment_map
from .scores import (
    PanopticTally,
    confusion,
    mask_ap,
    panoptic_match,
    semantic_scores,
)

# the per-image score that ranks images (lowest = worst), per task
RANK_BY = {"panoptic": "PQ", "semantic": "mIoU", "instance": "AP"}


class ReportCollector:
    """Scores images one at a time; keeps thumbnails of the `worst_k` lowest-scoring ones.

    Args:
        task: panoptic | semantic | instance.
        num_classes, thing_ids, stuff_ids: the dataset's classes (contiguous ids).
        class_names, colors: for the overlays.
        worst_k: how many of the worst images to keep thumbnails of.
        thumb_size: long side (pixels) of each of a thumbnail's three panels.
    """

    def __init__(
        self,
        task: str,
        num_classes: int,
        thing_ids: Sequence[int],
        stuff_ids: Sequence[int],
        class_names: Sequence[str],
        colors: Sequence[Sequence[int]],
        worst_k: int = 8,
        thumb_size: int = 384,
        ignore_label: int = 255,
        instance_score_threshold: float = 0.5,
    ) -> None:
        if task not in RANK_BY:
            raise ValueError(f"unknown task '{task}': choose panoptic, instance or semantic")
        self.task = task
        self.num_classes = num_classes
        self.things, self.stuffs = list(thing_ids), list(stuff_ids)
        self.class_names = list(class_names)
        self.colors = [tuple(int(v) for v in c) for c in colors]
        self.worst_k = worst_k
        self.thumb_size = thumb_size
        self.ignore = ignore_label
        self.instance_score_threshold = instance_score_threshold
        self.rank_by = RANK_BY[task]
        self.records: list[dict[str, Any]] = []  # per image: name, id, scores
        self.tally = (
            PanopticTally(len(self.things) + len(self.stuffs)) if task == "panoptic" else None
        )
        self.confusion = (
            np.zeros((num_classes + 1,) * 2, dtype=np.int64) if task != "instance" else None
        )
        # the worst images so far, at most worst_k: (score, name, record, png); ordered by
        # (score, name), so that ties are broken alike on one device and on several
        self._worst: list[tuple[float, str, dict[str, Any], bytes, list[int]]] = []

    # ---- per image ------------------------------------------------------------------------
    def scores(self, result: SegmentationResult, target: EvalTarget) -> dict[str, float]:
        """This image's scores; also adds it to the dataset tallies."""
        out: dict[str, float] = {}
        if self.tally is not None:
            pred = panoptic_to_pairs(_need(result.panoptic_seg, "panoptic_seg"), result.segments)
            crowd = target.panoptic_crowd
            match = panoptic_match(
                pred.cpu().numpy(),
                _need(target.panoptic, "panoptic target").cpu().numpy(),
                crowd.cpu().numpy() if crowd is not None else None,
                self.things,
                self.stuffs,
            )
            self.tally.add(match)
            own = PanopticTally(len(self.things) + len(self.stuffs))
            own.add(match)
            quality = own.quality()
            out.update({k: quality[k] for k in ("PQ", "SQ", "RQ")})
        if self.confusion is not None and result.sem_seg is not None and target.sem_seg is not None:
            matrix = confusion(
                result.class_map().cpu().numpy(),
                target.sem_seg.cpu().numpy(),
                self.num_classes,
                self.ignore,
            )
            self.confusion += matrix
            out.update(semantic_scores(matrix))
        if self.task == "instance" or (
            self.task == "panoptic"
            and result.instances is not None
            and target.instances is not None
        ):
            inst, gt = (
                _need(result.instances, "instances"),
                _need(target.instances, "instances target"),
            )
            scores = inst.scores if inst.scores is not None else torch.ones(len(inst.labels))
            out.update(
                mask_ap(
                    inst.masks.cpu().numpy(),
                    scores.cpu().float().numpy(),
                    inst.labels.cpu().numpy(),
                    gt.masks.cpu().numpy(),
                    gt.labels.cpu().numpy(),
                    gt.iscrowd.cpu().numpy() if gt.iscrowd is not None else None,
                )
            )
        return out

    def update(
        self,
        result: SegmentationResult,
        target: EvalTarget,
        image: np.ndarray | Callable[[], np.ndarray] | None,
    ) -> dict[str, Any]:
        """Score one image. `image`: uint8 [H, W, 3] at its original size, or a function that
        returns it (called only when the image is among the worst so far), for the thumbnail."""
        record = {
            "file_name": str(result.file_name),
            "image_id": result.image_id
            if isinstance(result.image_id, int)
            else str(result.image_id),
            **self.scores(result, target),
        }
        self.records.append(record)
        value = record.get(self.rank_by, math.nan)
        if image is None or math.isnan(value) or self.worst_k <= 0:
            return record
        key = (value, _name(record))
        if len(self._worst) >= self.worst_k and key >= _key(self._worst[-1]):
            return record  # not worse than any kept image: no thumbnail is drawn
        pixels = image() if callable(image) else image
        self._worst.append((*key, record, *self.thumbnail(result, target, pixels)))
        self._worst = sorted(self._worst, key=_key)[: self.worst_k]
        return record

    def thumbnail(
        self, result: SegmentationResult, target: EvalTarget, image: np.ndarray
    ) -> tuple[bytes, list[int]]:
        """PNG of image | prediction | ground truth, each at most `thumb_size` on its long side
        (label maps resampled by nearest neighbour), and the classes drawn in it (a legend)."""
        height, width = image.shape[:2]
        scale = self.thumb_size / max(height, width)
        # a large image is shrunk to thumb_size; a small one enlarged by a whole factor (legible)
        scale = scale if scale < 1 else float(max(1, int(scale)))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rows = np.minimum((np.arange(size[1]) + 0.5) / scale, height - 1).astype(np.int64)
        cols = np.minimum((np.arange(size[0]) + 0.5) / scale, width - 1).astype(np.int64)

        def shrink(labels: np.ndarray) -> np.ndarray:  # nearest neighbour
            return labels[rows][:, cols]

        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        pred_classes = shrink(class_map(result, self.instance_score_threshold, self.ignore))
        pred = overlay(
            small,
            pred_classes,
            self.colors,
            segment_map=shrink(segment_map(result, self.instance_score_threshold)),
            ignore=self.ignore,
        )
        gt_classes, gt_segments = self._ground_truth_maps(target, (height, width))
        gt_classes = shrink(gt_classes)
        truth = overlay(
            small,
            gt_classes,
            self.colors,
            segment_map=shrink(gt_segments),
            ignore=self.ignore,
        )
        gap = np.full((size[1], 4, 3), 255, dtype=np.uint8)
        panel = np.concatenate([small, gap, pred, gap, truth], axis=1)
        buffer = io.BytesIO()
        Image.fromarray(panel).save(buffer, format="PNG", optimize=True)
        drawn = np.union1d(np.unique(pred_classes), np.unique(gt_classes))
        return buffer.getvalue(), [int(c) for c in drawn if 0 <= c < self.num_classes]

    def _ground_truth_maps(
        self, target: EvalTarget, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class per pixel (ignore where unlabelled) and segment id per pixel of the ground truth."""
        if self.task == "panoptic" and target.panoptic is not None:
            pairs = target.panoptic.cpu().numpy()
            category = pairs[..., 0]
            valid = (category >= 0) & (category < self.num_classes)
            classes = np.where(valid, category, self.ignore)
            keys = np.where(
                valid, category * (int(pairs[..., 1].max(initial=0)) + 1) + pairs[..., 1], -1
            )
            segments = np.unique(keys, return_inverse=True)[1].reshape(shape)
            return classes, segments
        if target.sem_seg is not None:
            classes = target.sem_seg.cpu().numpy()
            return classes, np.where(classes == self.ignore, 0, classes + 1)
        classes = np.full(shape, self.ignore, dtype=np.int64)
        segments = np.zeros(shape, dtype=np.int64)
        gt = _need(target.instances, "instances target")
        masks = gt.masks.cpu().numpy().astype(bool)
        for k in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
            classes[masks[k]] = int(gt.labels[k])  # the largest first, small ones drawn on top
            segments[masks[k]] = k + 1
        return classes, segments

    # ---- across ranks ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "tally": self.tally,
            "confusion": self.confusion,
            "worst": self._worst,
        }

    def merge(self, states: Sequence[dict[str, Any]]) -> None:
        """Replace this collector's contents by the union of `states` (one per rank)."""
        self.records = [r for s in states for r in s["records"]]
        if self.tally is not None:
            self.tally = PanopticTally(len(self.things) + len(self.stuffs))
            for s in states:
                self.tally.merge(s["tally"])
        if self.confusion is not None:
            self.confusion = sum((s["confusion"] for s in states), np.zeros_like(self.confusion))
        entries = [e for s in states for e in s["worst"]]
        self._worst = sorted(entries, key=_key)[: self.worst_k]

    def worst(self) -> list[tuple[dict[str, Any], bytes, list[int]]]:
        """(record, PNG) of the kept worst images, worst first (ties: by name)."""
        return [(record, png, classes) for _, _, record, png, classes in self._worst]

    def size_quality(self) -> dict[str, dict[str, float]]:
        """{"all", "small", "medium", "large"} → PQ/SQ/RQ and counts (panoptic only)."""
        from .scores import SIZE_BUCKETS

        if self.tally is None:
            return {}
        out = {"all": self.tally.quality()}
        for b, name in enumerate(SIZE_BUCKETS):
            out[name] = self.tally.quality(b)
        return out


def _key(entry: tuple) -> tuple[float, str]:
    return entry[0], entry[1]


def _name(record: dict[str, Any]) -> str:
    return f"{record['file_name']}|{record['image_id']}"


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise ValueError(f"the report of this task needs {what}, which is missing")
    return value
