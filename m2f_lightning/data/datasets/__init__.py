"""One reader per on-disk format; `build_reader` picks the right one for a dataset and task."""

from .base import Reader, Sample
from .registry import TASKS, build_reader, check_task, datasets_root, metadata_for

__all__ = [
    "TASKS",
    "Reader",
    "Sample",
    "build_reader",
    "check_task",
    "datasets_root",
    "metadata_for",
]
