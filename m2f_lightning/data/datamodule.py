"""The LightningDataModule that serves a dataset's splits in padded batches."""

from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .catalog import DatasetMetadata
from .collate import collate
from .datasets import build_reader, check_task, metadata_for
from .sampling import eval_loader, train_loader
from .targets import IGNORE
from .torch_datasets import (
    ImageFolderDataset,
    ReaderImagesDataset,
    SegmentationDataset,
    keeps_empty_targets,
)
from .transforms import build_train_transform, eval_resize, label_rule_for


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
        metadata: the classes where they do not come from the dataset (predict with the
            classes a checkpoint stores: `dataset=checkpoint`); None: the dataset's.
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
        metadata: DatasetMetadata | None = None,
    ) -> None:
        super().__init__()
        if metadata is None:
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
        self.metadata: DatasetMetadata = metadata or metadata_for(dataset, task, self.source, root)
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
            transform = build_train_transform(
                recipe,
                mask_pad=self._label_pad_value(),
                label_rule=label_rule_for(self.task),
                **aug,
            )
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
