"""torch Datasets: records of a dataset split, or image files, into augmented samples with their
training and evaluation targets.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .catalog import DatasetMetadata
from .datasets.base import Reader
from .datasets.cityscapes_polygons import layer_masks
from .io import read_image
from .sampling import SampleKey, seed_transform, unpack_key
from .targets import eval_targets, semantic_from_panoptic, train_targets
from .transforms import lsj_polygon_masks

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)


def keeps_empty_targets(task: str, recipe: str) -> bool:
    """Whether the official mapper of (task, recipe) keeps the segments a crop emptied: the
    panoptic mappers (LSJ and semantic-style) and the ADE20K / Cityscapes instance mapper do;
    COCO's instance LSJ mapper filters them (utils.filter_empty_instances)."""
    return not (task == "instance" and recipe == "lsj")


class SegmentationDataset(Dataset):
    """A reader + augmentation + per-task targets. Training items carry augmented targets;
    evaluation items carry the resized image and ground truth at the original size."""

    def __init__(
        self,
        reader: Reader,
        task: str,
        metadata: DatasetMetadata,
        transform,
        train: bool,
        max_samples: int | None = None,
        keep_empty: bool = False,
    ) -> None:
        self.reader = reader
        self.keep_empty = keep_empty  # segments emptied by the crop stay targets (targets.py)
        self.task = task
        self.metadata = metadata
        self.transform = transform
        self.train = train
        self.length = len(reader) if max_samples is None else min(len(reader), max_samples)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: "int | SampleKey") -> dict[str, Any]:
        # sampling hook: a key carries the augmentation seed of (seed, epoch, index) and whether
        # an evaluation item is scored (see data/sampling.py)
        index, aug_seed, scored = unpack_key(key)
        if self.train and aug_seed is not None:
            seed_transform(self.transform, aug_seed)
        sample = self.reader[index]
        height, width = sample.image.shape[:2]
        item: dict[str, Any] = {
            "file_name": sample.file_name,
            "image_id": sample.image_id,
            "orig_size": (height, width),
        }
        if self.train:
            image, target = self._augment(sample)
            item["targets"] = target
            if aug_seed is not None:  # the seed of the criterion's points for this sample
                item["point_seed"] = aug_seed
        else:
            image = self.transform(image=sample.image)["image"]
            item["eval_target"] = eval_targets(self.task, self.metadata, sample)
            item["scored"] = scored  # False for a rank's padding duplicate (sampling.py)
        item["image"] = _to_tensor(image)
        item["image_size"] = tuple(image.shape[:2])
        return item

    def _augment(self, sample) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        if sample.id_map is not None:
            if self.task == "semantic":
                sem = semantic_from_panoptic(sample.id_map, sample.segments, sample.file_name)
                out = self.transform(image=sample.image, mask=sem)
                return out["image"], train_targets(self.task, self.metadata, sem_seg=out["mask"])
            out = self.transform(image=sample.image, mask=sample.id_map)
            return out["image"], train_targets(
                self.task,
                self.metadata,
                id_map=out["mask"],
                segments=sample.segments,
                keep_empty=self.keep_empty,
            )
        if sample.layers is not None:  # Cityscapes polygons: moved, then rasterised
            out = self.transform(image=sample.image)
            masks = layer_masks(
                sample.layers,
                len(sample.labels),
                out.get("applied_transforms", []),
                sample.image.shape[:2],
                out["image"].shape[:2],
            )
            return out["image"], train_targets(
                self.task,
                self.metadata,
                masks=masks,
                labels=sample.labels,
                crowd=sample.crowd,
                keep_empty=self.keep_empty,
            )
        if sample.masks is not None:
            if len(sample.masks) == 0:
                out = self.transform(image=sample.image)
                empty = np.zeros((0, *out["image"].shape[:2]), dtype=np.uint8)
                return out["image"], train_targets(
                    self.task, self.metadata, masks=empty, labels=[], crowd=[]
                )
            out = self.transform(image=sample.image, masks=sample.masks)
            masks = np.asarray(out["masks"])
            if sample.polygons is not None:  # COCO instance: polygons moved, then rasterised
                rasterised = lsj_polygon_masks(
                    sample.polygons,
                    out.get("applied_transforms", []),
                    sample.image.shape[:2],
                    out["image"].shape[:2],
                )
                if rasterised:
                    masks = masks.copy()
                    for i, mask in rasterised.items():
                        masks[i] = mask
            return out["image"], train_targets(
                self.task,
                self.metadata,
                masks=masks,
                labels=sample.labels,
                crowd=sample.crowd,
                keep_empty=self.keep_empty,
            )
        out = self.transform(image=sample.image, mask=sample.sem_seg)
        return out["image"], train_targets(self.task, self.metadata, sem_seg=out["mask"])


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


class ImageFolderDataset(Dataset):
    """Plain images (files or folders of them) for prediction; no annotations.

    Predict goes on past bad inputs: a path that does not exist is kept and reported as
    unreadable when its turn comes (as is a file that does not decode); a directory or FIFO
    named like an image inside a folder, or a named input that is neither a file nor a folder
    (a FIFO, a socket), is not an image file: it is listed in `skipped` and never opened."""

    def __init__(self, paths: Sequence[str | Path], transform) -> None:
        files: list[Path] = []
        self.skipped: list[tuple[str, str]] = []
        for path in map(Path, paths):
            if path.is_dir():
                for p in sorted(path.rglob("*")):
                    if not _is_image_name(p):
                        continue
                    if p.is_file():
                        files.append(p)
                    else:  # a folder named like an image, a FIFO
                        self.skipped.append((str(p), "not a regular file"))
            elif path.is_file():
                files.append(path)
            elif path.exists():  # a FIFO, a socket, a device
                self.skipped.append((str(path), "not a regular file"))
            else:
                files.append(path)  # reported as missing in its turn, after the others ran
        if not files:
            raise FileNotFoundError(f"no images found in {list(map(str, paths))}")
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def skip(self, stems: set[str]) -> int:
        """Leave out the images whose outputs (named by the file stem) an earlier run of predict
        finished; returns how many were left out."""
        before = len(self.files)
        self.files = [path for path in self.files if path.stem not in stems]
        return before - len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        if not path.exists():
            return {"file_name": str(path), "error": "no such file"}
        try:
            image = read_image(path)
        except Exception as err:  # any undecodable input: name it at the end, go on
            return {"file_name": str(path), "error": f"{type(err).__name__}: {err}"}
        return _predict_item(image, str(path), path.stem, self.transform)


class ReaderImagesDataset(Dataset):
    """The images of a dataset split for prediction (ids from the split's files); a sample
    that cannot be read is reported, not fatal."""

    def __init__(self, reader: Reader, transform, name: str) -> None:
        self.reader = reader
        self.transform = transform
        self.name = name
        self.skipped: list[tuple[str, str]] = []
        self.indices = list(range(len(reader)))

    def __len__(self) -> int:
        return len(self.indices)

    def skip(self, stems: set[str]) -> int:
        """Leave out the images whose outputs (named by the image file's stem) an earlier run of
        predict finished; returns how many were left out. An image list names its files; other
        readers' samples are read (not predicted) to learn theirs."""
        if not stems:
            return 0
        records = getattr(self.reader, "records", None)

        def stem(index: int) -> str | None:
            record = records[index] if isinstance(records, list) else None
            if isinstance(record, tuple):  # image lists: (path, image id)
                return Path(record[0]).stem
            if isinstance(record, dict) and "image" in record:  # panoptic readers
                return Path(record["image"]).stem
            try:
                return Path(self.reader[index].file_name).stem
            except Exception:  # unreadable: predicted (and reported) again
                return None

        before = len(self.indices)
        self.indices = [i for i in self.indices if stem(i) not in stems]
        return before - len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.indices[index]
        try:
            sample = self.reader[index]
        except Exception as err:
            return {"file_name": f"{self.name}[{index}]", "error": f"{type(err).__name__}: {err}"}
        return _predict_item(sample.image, sample.file_name, sample.image_id, self.transform)


def _predict_item(image: np.ndarray, file_name: str, image_id: Any, transform) -> dict[str, Any]:
    resized = transform(image=image)["image"]
    return {
        "image": _to_tensor(resized),
        "image_size": tuple(resized.shape[:2]),
        "orig_size": tuple(image.shape[:2]),
        "file_name": file_name,
        "image_id": image_id,
    }
