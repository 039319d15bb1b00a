"""Datasets and the LightningDataModule that serves them in padded batches."""

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..types import Batch
from .catalog import DatasetMetadata
from .datasets import build_reader, check_task, metadata_for
from .datasets.base import Reader
from .io import read_image
from .sampling import SampleKey, eval_loader, seed_transform, train_loader, unpack_key
from .targets import IGNORE, eval_targets, semantic_from_panoptic, train_targets
from .transforms import build_train_transform, eval_resize, lsj_polygon_masks

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
                sem = semantic_from_panoptic(sample.id_map, sample.segments)
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

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
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


def collate(items: list[dict[str, Any]], size_divisibility: int = 32) -> Batch:
    """Stack items into a `Batch`: images (uint8) and training masks (False) padded bottom/right
    to a common multiple of `size_divisibility`. The pad value does not matter: the model
    normalises and zeroes everything outside `image_sizes`, as detectron2 does. Prediction items
    that could not be read (an `error`) go to `Batch.unreadable`, not into the images."""
    unreadable = [(item["file_name"], item["error"]) for item in items if "error" in item]
    items = [item for item in items if "error" not in item]
    if not items:
        empty = torch.zeros((0, 3, size_divisibility, size_divisibility), dtype=torch.uint8)
        return Batch(empty, [], [], [], [], unreadable=unreadable)
    max_h = max(item["image"].shape[1] for item in items)
    max_w = max(item["image"].shape[2] for item in items)
    pad_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
    pad_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    images = torch.zeros((len(items), 3, pad_h, pad_w), dtype=items[0]["image"].dtype)
    for i, item in enumerate(items):
        _, h, w = item["image"].shape
        images[i, :, :h, :w] = item["image"]
    batch = Batch(
        images=images,
        image_sizes=[tuple(item["image_size"]) for item in items],
        orig_sizes=[tuple(item["orig_size"]) for item in items],
        file_names=[item["file_name"] for item in items],
        image_ids=[item["image_id"] for item in items],
        unreadable=unreadable,
    )
    if "targets" in items[0]:
        batch.targets = []
        for item in items:
            masks = item["targets"]["masks"]
            full = torch.zeros((len(masks), pad_h, pad_w), dtype=torch.bool)
            full[:, : masks.shape[1], : masks.shape[2]] = masks
            batch.targets.append({"labels": item["targets"]["labels"], "masks": full})
    if "eval_target" in items[0]:
        batch.eval_targets = [item["eval_target"] for item in items]
        batch.scored = [bool(item.get("scored", True)) for item in items]
    return batch


class SegmentationDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders for one dataset and task.

    Args:
        dataset: coco | ade20k | cityscapes | mapillary_vistas | synthetic.
        task: panoptic | instance | semantic (checked against what the dataset annotates).
        root: datasets root (default $M2F_DATASETS or ./datasets).
        batch_size / eval_batch_size: images per device for training / evaluation.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        train_aug: {"recipe": "lsj" | "semantic" | "none", ...recipe sizes} (see transforms.py).
        test_min_size / test_max_size: evaluation resize (short side / long-side cap).
        max_train_samples / max_val_samples: use only the first N images (quick runs).
        predict_paths: image files or folders for `predict`.
        predict_split: or a split of the dataset to predict on (train, val, or test where the
            dataset has an images-only test split; see `datasets/images.py`).
        source: where a `custom` dataset's files are (see `datasets/custom.py`).
        seed: seeds the training order (with the epoch) and each sample's augmentation (with
            the epoch and the index); see data/sampling.py.
    """

    def __init__(
        self,
        dataset: str,
        task: str,
        root: str | None = None,
        batch_size: int = 2,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        train_aug: dict[str, Any] | None = None,
        test_min_size: int = 800,
        test_max_size: int = 1333,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        predict_paths: Sequence[str] | None = None,
        predict_split: str | None = None,
        size_divisibility: int = 32,
        source: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_task(dataset, task, source)
        self.dataset_name = dataset
        self.task = task
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_aug = dict(train_aug or {"recipe": "lsj"})
        self.test_min_size = test_min_size
        self.test_max_size = test_max_size
        self.max_train_samples = max_train_samples
        self.max_val_samples = max_val_samples
        self.predict_paths = list(predict_paths) if predict_paths else None
        self.predict_split = predict_split
        self.size_divisibility = size_divisibility
        self.seed = seed  # data order and augmentation: functions of (seed, epoch, index)
        self.source = dict(source or {})
        self.metadata: DatasetMetadata = metadata_for(dataset, task, self.source, root)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    def _label_pad_value(self) -> int:
        """Void in the label map being augmented: the semantic task augments a class map (255
        ignores), the others a panoptic id map (0) or instance masks (0)."""
        return IGNORE if self.task == "semantic" else 0

    def setup(self, stage: str | None = None) -> None:
        eval_transform = eval_resize(self.test_min_size, self.test_max_size)
        if stage in (None, "fit") and self.train_set is None:
            aug = dict(self.train_aug)
            recipe = aug.pop("recipe", "lsj")
            reader = build_reader(self.dataset_name, self.task, "train", self.root, self.source)
            transform = build_train_transform(recipe, mask_pad=self._label_pad_value(), **aug)
            self.train_set = SegmentationDataset(
                reader,
                self.task,
                self.metadata,
                transform,
                True,
                self.max_train_samples,
                keep_empty=keeps_empty_targets(self.task, recipe),
            )
        if stage in (None, "fit", "validate", "test") and self.val_set is None:
            reader = build_reader(self.dataset_name, self.task, "val", self.root, self.source)
            self.val_set = SegmentationDataset(
                reader, self.task, self.metadata, eval_transform, False, self.max_val_samples
            )
        if stage == "predict" and self.predict_set is None:
            if self.predict_split:
                from .datasets.images import prediction_reader

                reader = prediction_reader(
                    self.dataset_name, self.task, self.predict_split, self.root, self.source
                )
                self.predict_set = ReaderImagesDataset(
                    reader, eval_transform, f"{self.dataset_name}/{self.predict_split}"
                )
            elif self.predict_paths:
                self.predict_set = ImageFolderDataset(self.predict_paths, eval_transform)
            else:
                raise ValueError(
                    "predict needs data.predict_paths (image files or folders) or predict_split"
                )

    def _loader_kwargs(self) -> dict[str, Any]:
        return dict(
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            collate_fn=partial(collate, size_divisibility=self.size_divisibility),
        )

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        # sampling hook: the loaders shard themselves (trainer use_distributed_sampler=False)
        if shuffle:
            return train_loader(
                dataset, batch_size, self.seed, self.trainer, **self._loader_kwargs()
            )
        return eval_loader(dataset, batch_size, self.trainer, **self._loader_kwargs())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        # one process (cli.predict); Lightning wraps it to track the indices of predictions
        return DataLoader(
            self.predict_set, batch_size=self.eval_batch_size, **self._loader_kwargs()
        )
