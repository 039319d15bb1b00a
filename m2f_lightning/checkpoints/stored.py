"""What a checkpoint says about how its model is used, beside its weights: the task it was
trained for, its post-processing settings and its test-time resize. Lightning checkpoints of this
project keep them in their hyper-parameters; our checkpoint files keep them where `save_model` was
given them (`task=`, `inference=`, `test_min_size=`, `test_max_size=`); HF directories and
model-zoo `.pkl` files store none."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .reading import load_torch_file


@dataclass(frozen=True)
class StoredSettings:
    """The settings a checkpoint stores; None (or empty) where it stores none."""

    task: str | None = None
    inference: dict[str, Any] = field(default_factory=dict)  # InferenceSettings fields
    test_min_size: int | None = None
    test_max_size: int | None = None
    dataset_ids: list[int] | None = None  # contiguous class → the training dataset's id


def _settings_of(record: dict[str, Any]) -> StoredSettings:
    inference = record.get("inference")
    return StoredSettings(
        task=record.get("task"),
        inference=dict(inference) if isinstance(inference, dict) else {},
        test_min_size=record.get("test_min_size"),
        test_max_size=record.get("test_max_size"),
        dataset_ids=record.get("dataset_ids"),
    )


def read_stored_settings(path: str | Path) -> StoredSettings:
    """The settings stored in the checkpoint file at `path` (memory-mapped: the weights are
    not read); empty for a directory, a `.pkl` or anything that is not a local file (a hub id
    resolves to an HF directory, which stores none)."""
    path = Path(path)
    if not path.is_file() or path.suffix == ".pkl":
        return StoredSettings()
    ckpt = load_torch_file(path, mmap=True)
    if not isinstance(ckpt, dict):
        return StoredSettings()
    if ckpt.get("format") == "m2f_lightning":
        return _settings_of(ckpt)
    hparams = ckpt.get("hyper_parameters")
    return _settings_of(hparams) if isinstance(hparams, dict) else StoredSettings()


# the test-time resize where neither the checkpoint nor the user gives one: detectron2's
# defaults (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), those of the COCO recipes
DEFAULT_TEST_MIN_SIZE = 800
DEFAULT_TEST_MAX_SIZE = 1333
