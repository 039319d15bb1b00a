"""Data: category catalogs, dataset readers, augmentation, targets and the DataModule."""

from .catalog import DatasetMetadata, get_metadata
from .collate import collate
from .datamodule import SegmentationDataModule
from .datasets import TASKS, build_reader, check_task, metadata_for
from .torch_datasets import SegmentationDataset

__all__ = [
    "TASKS",
    "DatasetMetadata",
    "SegmentationDataModule",
    "SegmentationDataset",
    "build_reader",
    "check_task",
    "collate",
    "get_metadata",
    "metadata_for",
]
