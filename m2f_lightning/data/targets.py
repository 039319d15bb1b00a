"""From a (possibly augmented) annotation to what the criterion and the metrics need, per task.

Training targets (`types.TrainTarget`): one mask per non-crowd segment (panoptic), per non-crowd
thing instance (instance) or per class present (semantic). Evaluation targets (`types.EvalTarget`),
at the original image size: `sem_seg`, `panoptic` + `panoptic_crowd`, and `instances`, whichever
the task's metrics use.
"""

from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..types import EvalTarget, InstanceSet
from .catalog import DatasetMetadata

IGNORE = 255
VOID_CATEGORY = -1


def semantic_from_panoptic(
    id_map: np.ndarray, segments: list[dict], source: str = ""
) -> np.ndarray:
    """Class per pixel (crowd segments keep their class), 255 where void. A class id from 255 on
    cannot be told from void in uint8: an error, checked before it is written."""
    too_big = sorted({seg["category"] for seg in segments if not 0 <= seg["category"] < IGNORE})
    if too_big:
        raise DataError(
            f"{source}: class ids {too_big} do not fit semantic labels (0..{IGNORE - 1}, {IGNORE} = "
            f"ignore): a dataset with more than {IGNORE} classes has no semantic task here"
        )
    sem = np.full(id_map.shape, IGNORE, dtype=np.uint8)
    for seg in segments:
        sem[id_map == seg["id"]] = seg["category"]
    return sem


def _stack(masks: list[np.ndarray], shape: tuple[int, int]) -> torch.Tensor:
    if not masks:
        return torch.zeros((0, *shape), dtype=torch.bool)
    return torch.from_numpy(np.stack(masks)).bool()


def train_targets(
    task: str,
    metadata: DatasetMetadata,
    *,
    id_map=None,
    segments=None,
    masks=None,
    labels=None,
    crowd=None,
    sem_seg=None,
    keep_empty: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-segment binary masks and their classes for the criterion.

    `keep_empty`: a segment the crop emptied stays as an all-False mask (matched, supervised for
    its class, counted in the number of masks), as the official panoptic mapper and ADE20K /
    Cityscapes instance mapper keep them; without it, it is dropped, as the COCO instance (LSJ)
    mapper filters empty instances. Crowd segments are never targets."""
    things = set(metadata.thing_ids)
    out_masks, out_labels = [], []
    if id_map is not None:
        shape = id_map.shape
        if task == "semantic":
            sem_seg = semantic_from_panoptic(id_map, segments)
        else:
            kept = [
                seg
                for seg in segments
                if not seg["iscrowd"] and (task != "instance" or seg["category"] in things)
            ]
            # filled in place: no list of N full-size masks to copy into a stack
            stacked = np.zeros((len(kept), *shape), dtype=bool)
            for i, seg in enumerate(kept):
                np.equal(id_map, seg["id"], out=stacked[i])
            labels_all = [seg["category"] for seg in kept]
            if not keep_empty and len(kept):
                present = stacked.any(axis=(1, 2))
                stacked = stacked[present]
                labels_all = [c for c, p in zip(labels_all, present, strict=True) if p]
            return {
                "labels": torch.tensor(labels_all, dtype=torch.int64),
                "masks": torch.from_numpy(stacked),
            }
    if masks is not None:
        shape = masks.shape[1:]
        for mask, label, is_crowd in zip(masks, labels, crowd, strict=True):
            if not is_crowd and label in things and (keep_empty or mask.any()):
                out_masks.append(mask.astype(bool))
                out_labels.append(int(label))
    if sem_seg is not None:
        shape = sem_seg.shape
        for cls in np.unique(sem_seg):
            if cls != IGNORE:
                out_masks.append(sem_seg == cls)
                out_labels.append(int(cls))
    return {
        "labels": torch.tensor(out_labels, dtype=torch.int64),
        "masks": _stack(out_masks, shape),
    }


def eval_targets(task: str, metadata: DatasetMetadata, sample: Any) -> EvalTarget:
    """Ground truth at the original size for the task's metrics (see `types.EvalTarget`)."""
    things = set(metadata.thing_ids)
    out = EvalTarget()
    if task in ("panoptic", "instance") and sample.instance_file is not None:
        out.instance_file = sample.instance_file
    if sample.id_map is not None:
        id_map, segments = sample.id_map, sample.segments
        if task in ("panoptic", "semantic"):
            # the dataset's semantic PNG where the reader found one (ADE20K's
            # annotations_detectron2, as the official evaluator), else derived from the panoptic PNG
            sem = sample.sem_seg if sample.sem_seg is not None and task == "panoptic" else None
            if sem is None:
                sem = semantic_from_panoptic(id_map, segments, sample.file_name)
            out.sem_seg = torch.from_numpy(sem.astype(np.int64))
        if task == "panoptic":
            pairs = np.full((*id_map.shape, 2), VOID_CATEGORY, dtype=np.int64)
            crowd = np.zeros(id_map.shape, dtype=bool)
            for seg in segments:
                region = id_map == seg["id"]
                pairs[region] = (seg["category"], seg["id"])
                if seg["iscrowd"]:
                    crowd |= region
            out.panoptic = torch.from_numpy(pairs)
            out.panoptic_crowd = torch.from_numpy(crowd)
        if task == "panoptic" and sample.eval_instances is not None:
            # the instance JSON of the same image (COCO instances_val2017.json, ADE20K
            # ade20k_instance_val.json), as the official evaluators score AP
            masks, labels, crowd, areas = sample.eval_instances
            out.instances = InstanceSet(
                masks=torch.from_numpy(masks.astype(bool)),
                labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                iscrowd=torch.from_numpy(np.asarray(crowd, dtype=bool)),
                areas=_areas(areas, len(labels)),
            )
        elif task in ("panoptic", "instance"):
            thing_segments = [s for s in segments if s["category"] in things]
            out.instances = InstanceSet(
                masks=_stack([id_map == s["id"] for s in thing_segments], id_map.shape),
                labels=torch.tensor([s["category"] for s in thing_segments], dtype=torch.int64),
                iscrowd=torch.tensor([s["iscrowd"] for s in thing_segments], dtype=torch.bool),
                areas=_areas([s.get("area", np.nan) for s in thing_segments], len(thing_segments)),
            )
    elif sample.masks is not None:
        keep = [i for i, label in enumerate(sample.labels) if label in things]
        out.instances = InstanceSet(
            masks=torch.from_numpy(sample.masks[keep].astype(bool)),
            labels=torch.from_numpy(np.asarray(sample.labels)[keep].astype(np.int64)),
            iscrowd=torch.from_numpy(np.asarray(sample.crowd)[keep].astype(bool)),
            areas=_areas(
                None if sample.areas is None else np.asarray(sample.areas)[keep], len(keep)
            ),
        )
    elif sample.sem_seg is not None:
        out.sem_seg = torch.from_numpy(sample.sem_seg.astype(np.int64))
    return out


def _areas(areas: Any, count: int) -> torch.Tensor:
    """The annotations' JSON areas as float64 [count], NaN where unknown (see `InstanceSet`)."""
    if areas is None:
        return torch.full((count,), float("nan"), dtype=torch.float64)
    return torch.from_numpy(np.asarray(areas, dtype=np.float64).reshape(count))
