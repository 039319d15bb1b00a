"""Predict with the checkpoint alone: `m2f-predict checkpoint=X 'inputs=[...]'` takes the task,
the classes (names, thing flags) and the test-time size from the checkpoint.

predict.yaml chooses `task: checkpoint` and `dataset: checkpoint` unless the command line (or an
experiment) chooses others: `task=` / `dataset=` given still win, and a dataset's classes are then
checked against the checkpoint's as before. The keys of `conf/dataset/checkpoint.yaml` that are
null (test sizes, object_mask_threshold) take the checkpoint's values; `dataset.classes` and
`dataset.thing_classes` give what a checkpoint does not store (.pkl: names; HF: thing flags where
its names are no catalog the project ships)."""

import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..checkpoints.stored import (
    DEFAULT_TEST_MAX_SIZE,
    DEFAULT_TEST_MIN_SIZE,
    StoredSettings,
    read_stored_settings,
)
from ..cli.config_schema import FROM_CHECKPOINT
from ..data.catalog import DatasetMetadata
from ..inference import InferenceSettings
from ..modeling import Mask2Former
from .classes import checkpoint_metadata, no_class_names, resolve_task, thing_flags

_NAMES_HINT = (
    "dataset=NAME task=TASK for the dataset it was trained on (e.g. dataset=coco task=panoptic), "
    "or 'dataset.classes=[name, ...]' (and 'dataset.thing_classes=[...]' for a panoptic or "
    "instance model)"
)
_THINGS_HINT = (
    "'dataset.thing_classes=[name, ...]' (the names of its thing classes), or dataset=NAME "
    "for the dataset it was trained on"
)


def uses_checkpoint(cfg: DictConfig) -> bool:
    """The task or the classes come from the checkpoint."""
    return FROM_CHECKPOINT in (cfg.task.name, cfg.dataset.name)


def resolve_task_choice(cfg: DictConfig, stored: StoredSettings) -> DictConfig:
    """`cfg` with `task.name` the checkpoint's where it is `checkpoint`."""
    if cfg.task.name != FROM_CHECKPOINT:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.task.name = resolve_task(
            str(cfg.checkpoint), None, stored.task, "task=panoptic|instance|semantic"
        )
    return cfg


def model_from_checkpoint(cfg: DictConfig) -> tuple[DictConfig, Mask2Former, DatasetMetadata]:
    """(`cfg` with the checkpoint's task, test sizes and threshold filled in, the model, its
    classes) for `dataset=checkpoint`."""
    from ..cli.commands import read_model  # the commands' one way of reading weights

    path = str(cfg.checkpoint)
    stored = read_stored_settings(path)
    cfg = resolve_task_choice(cfg, stored)
    data = cfg.dataset
    classes = _names(data.get("classes"))
    if path.endswith(".pkl") and classes is None:
        raise no_class_names(path, _NAMES_HINT)
    model = read_model(cfg, path, len(classes) if classes is not None else None)
    names = classes if classes is not None else model.class_names
    is_thing = model.is_thing if classes is None else None
    things = _names(data.get("thing_classes"))
    if things is not None and names is not None:
        is_thing = thing_flags(names, things, path)
    metadata = checkpoint_metadata(
        path,
        cfg.task.name,
        names,
        is_thing,
        stored.dataset_ids,
        names_hint=_NAMES_HINT,
        things_hint=_THINGS_HINT,
    )
    if metadata.num_classes != model.num_classes:
        from ..errors import CheckpointError

        raise CheckpointError(
            f"{path} predicts {model.num_classes} classes but dataset.classes names "
            f"{metadata.num_classes}"
        )
    return _with_stored_sizes(cfg, stored, path), model, metadata


def _names(value: object) -> list[str] | None:
    if value is None:
        return None
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return [str(v) for v in value]  # type: ignore[union-attr]


def _with_stored_sizes(cfg: DictConfig, stored: StoredSettings, path: str) -> DictConfig:
    """The null test sizes and object_mask_threshold of `dataset=checkpoint` from the
    checkpoint (detectron2's default size, with a warning, where it stores none)."""
    cfg = cfg.copy()
    data = cfg.dataset
    with open_dict(cfg):
        if data.test_min_size is None and stored.test_min_size is None:
            warnings.warn(
                f"{Path(path).name} stores no test-time size: images are resized to a short side "
                f"of {DEFAULT_TEST_MIN_SIZE} (long side at most {DEFAULT_TEST_MAX_SIZE}, "
                "detectron2's default); set dataset.test_min_size= / dataset.test_max_size= to "
                "the size the model was trained for",
                UserWarning,
                stacklevel=2,
            )
        if data.test_min_size is None:
            data.test_min_size = stored.test_min_size or DEFAULT_TEST_MIN_SIZE
        if data.test_max_size is None:
            data.test_max_size = stored.test_max_size or DEFAULT_TEST_MAX_SIZE
        if data.get("object_mask_threshold") is None:
            default = InferenceSettings().object_mask_threshold  # the paper's
            data.object_mask_threshold = stored.inference.get("object_mask_threshold", default)
    return cfg
