"""One check of a composed config before anything is built: every value a user can get wrong
(type, range, divisibility, a known name, a setting this machine cannot run) is named at start-up,
each as one line `key=value: what it must be (what to do)`, all of them at once.

`RULES` is the table of single keys; `CROSS_RULES` the checks that read several keys (head
divisibility, class_map against the dataset's classes, predict's inputs/split, the GPU a setting
needs). A key that is absent from a command's config is not checked (`optimizer` is train's only).
Keys the code would reject (a `model.net`, `trainer`, ... key no consumer takes) are errors naming
the nearest known key; a key added with `+` that nothing reads gets a warning naming it.
"""

import difflib
import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ..errors import ConfigError
from ..runs.precision import VALID as PRECISIONS

COMMANDS = ("train", "evaluate", "predict", "doctor", "export")
# predict's task and dataset options that mean "the checkpoint's own"
FROM_CHECKPOINT = "checkpoint"
# commands that build a Lightning Trainer (so need the machine the `trainer` group asks for)
TRAINER_COMMANDS = ("train", "evaluate", "predict")
# wandb's `Settings.mode` literal (wandb/sdk/wandb_settings.py)
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")

# ---------------------------------------------------------------- value checks
# A check returns None for a good value, else what the value must be.

Check = Callable[[Any], str | None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None, null: bool = False) -> Check:
    """An int in [low, high]."""
    need = "an integer" + (f" >= {low}" if low is not None else "")
    need += f" and <= {high}" if high is not None else ""
    need += " or null" if null else ""

    def check(value: Any) -> str | None:
        if value is None and null:
            return None
        ok = _is_int(value) and (low is None or value >= low) and (high is None or value <= high)
        return None if ok else f"must be {need}"

    return check


def number(
    low: float | None = None, high: float | None = None, above: bool = False, null: bool = False
) -> Check:
    """A number in [low, high] (`above`: strictly more than low)."""
    need = "a number" + (f" {'>' if above else '>='} {low:g}" if low is not None else "")
    need += f" and <= {high:g}" if high is not None else ""
    need += " or null" if null else ""

    def check(value: Any) -> str | None:
        if value is None and null:
            return None
        ok = _is_number(value) and value == value  # NaN is no number here
        ok = ok and (low is None or (value > low if above else value >= low))
        ok = ok and (high is None or value <= high)
        return None if ok else f"must be {need}"

    return check


def one_of(*choices: Any, null: bool = False) -> Check:
    """One of `choices` (compared as text, so precision 32 and "32" are one value)."""
    names = [str(c) for c in choices]

    def check(value: Any) -> str | None:
        if value is None and null:
            return None
        if not isinstance(value, (list, dict, ListConfig, DictConfig)) and str(value) in names:
            return None
        return f"must be one of {', '.join(names)}" + (" or null" if null else "")

    return check


def boolean(null: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or (value is None and null):
            return None
        return "must be true or false" + (" or null" if null else "")

    return check


def numbers(
    length: int | None = None, low: float = 0.0, high: float | None = None, above: bool = False
) -> Check:
    """A list of numbers, each in the range of `number(low, high, above)`."""
    each = number(low, high, above)
    need = f"a list of {length or 'one or more'} number(s)"

    def check(value: Any) -> str | None:
        items = list(value) if isinstance(value, (list, tuple, ListConfig)) else None
        if not items or (length is not None and len(items) != length):
            return f"must be {need}"
        bad = next((each(v) for v in items if each(v)), None)
        return f"must be {need}, each {bad.removeprefix('must be a number ')}" if bad else None

    return check


_DEVICES_TEXT = r"\s*(-1|[1-9]\d*|\d+(\s*,\s*\d+)*\s*,?)\s*"


def devices(value: Any) -> str | None:
    """Lightning's `devices`: a count >= 1, -1 or auto (all), or a list of device indices."""
    if value == "auto" or (_is_int(value) and (value >= 1 or value == -1)):
        return None
    if (
        isinstance(value, (list, ListConfig))
        and value
        and all(_is_int(v) and v >= 0 for v in value)
    ):
        return None
    # a count as text ("2"), or indices as text ("0,1" or "0,"): Lightning's own spellings
    if isinstance(value, str) and value.strip() != "0" and re.fullmatch(_DEVICES_TEXT, value):
        return None
    return (
        "must be a number of devices >= 1, -1 or auto (every visible device), or a list of "
        "device indices such as [0, 1]"
    )


def existing_path(null: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and null:
            return None
        if isinstance(value, str) and value.strip() and Path(value).expanduser().exists():
            return None
        return "must be the path of an existing file or folder" + (" or null" if null else "")

    return check


def weights_source(null: bool = False) -> Check:
    """An existing file or folder, or a Hugging Face hub id (`owner/name[@revision]`), which is
    fetched (or found in the HF cache) when the weights are read."""

    def check(value: Any) -> str | None:
        from ..checkpoints.hub import is_hub_id

        if existing_path(null)(value) is None or (isinstance(value, str) and is_hub_id(value)):
            return None
        return (
            "must be the path of an existing file or folder, or a Hugging Face hub id such as "
            "facebook/mask2former-swin-tiny-coco-panoptic" + (" or null" if null else "")
        )

    return check


# ---------------------------------------------------------------- the table


def _image_size(value: Any) -> str | None:
    bad = numbers(2, 32)(value)
    if bad is None and all(_is_int(v) for v in value):
        return None
    return "must be [height, width], two integers >= 32"


@dataclass(frozen=True)
class Rule:
    key: str  # dotted path in the composed config
    check: Check
    hint: str = ""  # what the key means or what to do, shown after what it must be


RULES: tuple[Rule, ...] = (
    # data
    Rule("dataset.batch_size", integer(1), "images per device and step"),
    Rule("dataset.eval_batch_size", integer(1), "images per device in evaluation"),
    Rule("dataset.num_workers", integer(0), "data loading processes; 0 loads in the main one"),
    Rule(
        "dataset.test_min_size",
        integer(1, null=True),
        "short side of the test-time resize, in pixels; null: the checkpoint's (predict)",
    ),
    Rule(
        "dataset.test_max_size",
        integer(1, null=True),
        "long-side cap of the test-time resize; null: the checkpoint's (predict)",
    ),
    Rule("dataset.max_train_samples", integer(1, null=True)),
    Rule("dataset.max_val_samples", integer(1, null=True)),
    Rule("dataset.object_mask_threshold", number(0, 1, null=True), "null: the checkpoint's"),
    Rule("dataset.train_aug.recipe", one_of("lsj", "semantic", "none")),
    # the machine and the loop
    Rule("trainer.accelerator", one_of("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
    Rule("trainer.devices", devices),
    Rule("trainer.num_nodes", integer(1)),
    Rule(
        "trainer.precision",
        one_of(*PRECISIONS),
        "or choose a group: precision=auto|32|16-mixed|bf16-mixed",
    ),
    Rule("trainer.max_steps", integer(1), "optimiser steps; set it with dataset.max_steps"),
    Rule("trainer.accumulate_grad_batches", integer(1), "batches per optimiser step"),
    Rule("trainer.gradient_clip_val", number(0, null=True)),
    Rule("trainer.gradient_clip_algorithm", one_of("norm", "value", null=True)),
    Rule("trainer.log_every_n_steps", integer(1)),
    Rule("trainer.val_check_interval", number(0, null=True), "set by dataset.val_every_n_steps"),
    Rule("trainer.max_epochs", integer(-1)),
    # optimiser and schedule (train)
    Rule("optimizer.lr", number(0, above=True), "the base learning rate, e.g. 1e-4"),
    Rule("optimizer.weight_decay", number(0)),
    Rule("optimizer.betas", numbers(2, 0, 1)),
    Rule("optimizer.eps", number(0, above=True)),
    Rule(
        "scheduler.name",
        one_of("poly", "multistep", "constant"),
        "set it with dataset.schedule",
    ),
    Rule("scheduler.power", number(0)),
    Rule("scheduler.milestones", numbers(None, 0, above=True), "fractions of max_steps or steps"),
    Rule("scheduler.gamma", number(0, above=True)),
    Rule("scheduler.warmup_steps", integer(0)),
    Rule("scheduler.warmup_factor", number(0)),
    Rule("backbone.lr_multiplier", number(0)),
    # the network's sizes and its loss
    Rule("model.net.num_queries", integer(1), "object queries, the paper's 100"),
    Rule("model.net.hidden_dim", integer(1)),
    Rule("model.net.mask_dim", integer(1)),
    Rule("model.net.pixel_decoder_dim", integer(1)),
    Rule("model.net.encoder_layers", integer(1)),
    Rule("model.net.encoder_ffn_dim", integer(1)),
    Rule("model.net.encoder_heads", integer(1)),
    Rule("model.net.encoder_points", integer(1)),
    Rule("model.net.decoder_layers", integer(1)),
    Rule("model.net.decoder_heads", integer(1)),
    Rule("model.net.decoder_ffn_dim", integer(1)),
    Rule("model.net.norm_groups", integer(1)),
    Rule("model.net.checkpointing", boolean()),
    Rule("model.criterion.class_weight", number(0)),
    Rule("model.criterion.mask_weight", number(0)),
    Rule("model.criterion.dice_weight", number(0)),
    Rule("model.criterion.no_object_weight", number(0)),
    Rule("model.criterion.num_points", integer(1)),
    Rule("model.criterion.oversample_ratio", number(1)),
    Rule("model.criterion.importance_sample_ratio", number(0, 1)),
    Rule("model.criterion.deep_supervision", boolean()),
    Rule("model.criterion.point_sampled", boolean()),
    Rule("inference.object_mask_threshold", number(0, 1, null=True), "null: the checkpoint's"),
    Rule("inference.overlap_threshold", number(0, 1)),
    Rule("inference.topk", integer(1)),
    Rule(
        "logger.name",
        one_of("wandb", "tensorboard", "csv", "none"),
        "or choose a group: logger=csv",
    ),
    # the run
    Rule("seed", integer()),
    Rule("compile", boolean()),
    Rule("runtime", one_of("eager", "compile", "onnxruntime")),
    Rule("recipe_batch_size", integer(1, null=True)),
    Rule("init_weights", weights_source(null=True), "weights to fine-tune from"),
    Rule("max_nonfinite_steps", integer(0), "0: never stop"),
    Rule("test_after_training", boolean()),
    Rule("checkpoint.every_n_train_steps", integer(1)),
    Rule("checkpoint.save_top_k", integer(-1)),
    Rule("num_vis_images", integer(0)),
    Rule("progress_every_n_steps", integer(1)),
    # evaluate / predict / export / doctor
    Rule("save_predictions", boolean()),
    Rule("report", boolean()),
    Rule("report_worst_k", integer(0)),
    Rule("report_thumb_size", integer(16)),
    Rule("overlays", boolean()),
    Rule("instance_score_threshold", number(0, 1)),
    Rule("split", one_of("train", "val", "test", null=True)),
    Rule("format", one_of("onnx", "torch_export")),
    Rule("image_size", _image_size, "the exported graph's input size"),
    Rule("opset", integer(17), "ONNX opset; LayerNormalization needs 17"),
    Rule("parity_tolerance", number(0)),
    Rule("workers", integer(1, null=True), "null: every CPU"),
)

# free-form subtrees: timm's model arguments, a custom dataset, the recipe's sizes, Hydra's own
FREE_FORM = ("backbone.kwargs.", "dataset.source.", "dataset.train_aug.", "hydra.")
# sections whose keys go to one signature as keyword arguments: another key fails the build
STRICT_SECTIONS = ("model.net", "model.criterion", "trainer", "inference", "optimizer", "scheduler")


# ---------------------------------------------------------------- reading the config

_ABSENT = object()


def _get(cfg: DictConfig, key: str) -> Any:
    """The resolved value at `key` (containers as plain Python), `_ABSENT` when the key is not
    there or not set (`???`)."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        return _ABSENT
    except OmegaConfBaseException as err:  # an interpolation that does not resolve
        raise ConfigError(f"{key} cannot be read: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def show(value: Any) -> str:
    """A value as written on the command line: null, true, [1, 2], {a: b}, plain text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value.strip() and value == value.strip() else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{show(k)}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def problem(key: str, value: Any, message: str) -> str:
    return f"{key}={show(value)}: {message}"


# ---------------------------------------------------------------- rules reading several keys


def _heads(cfg: DictConfig) -> Iterator[str]:
    """Attention widths must split evenly over their heads; GroupNorm widths over their groups."""
    pairs = (
        ("hidden_dim", "decoder_heads", "the transformer decoder's heads"),
        ("pixel_decoder_dim", "encoder_heads", "the pixel decoder's attention heads"),
        ("pixel_decoder_dim", "norm_groups", "the pixel decoder's GroupNorm groups"),
    )
    for width, parts, what in pairs:
        w, p = _get(cfg, f"model.net.{width}"), _get(cfg, f"model.net.{parts}")
        if _is_int(w) and _is_int(p) and w >= 1 and p >= 1 and w % p:
            near = [m for m in (w - w % p, w - w % p + p) if m > 0]
            yield problem(
                f"model.net.{width}",
                w,
                f"must be divisible by model.net.{parts}={p} ({what}); e.g. "
                + " or ".join(f"model.net.{width}={m}" for m in near),
            )


def _dataset(cfg: DictConfig) -> Iterator[str]:
    """A known dataset with annotations for the task (the registry's own check)."""
    if _get(cfg, "dataset.name") is _ABSENT or _get(cfg, "task.name") is _ABSENT:
        return
    if FROM_CHECKPOINT in (cfg.dataset.name, cfg.task.name):
        return  # _from_checkpoint's
    from ..data import check_task

    try:
        check_task(cfg.dataset.name, cfg.task.name, _get(cfg, "dataset.source") or None)
    except ConfigError as err:
        yield str(err)


def _backbone(cfg: DictConfig) -> Iterator[str]:
    """A timm model (or one of our aliases) and weights that exist for it, without a network."""
    name = _get(cfg, "backbone.name")
    if name is _ABSENT:
        return
    import timm

    from ..modeling.backbone import ALIASES, resolve_backbone_name
    from ..modeling.backbone_weights import is_weights_file, weights_tag_problem

    if not isinstance(name, str) or not timm.is_model(resolve_backbone_name(name)):
        near = difflib.get_close_matches(str(name), [*ALIASES, *timm.list_models()], n=3)
        yield problem(
            "backbone.name",
            name,
            "is not a timm model; choose a backbone group (backbone=r50|r101|swin_t|swin_s|"
            "swin_b|swin_l) or a name from timm.list_models()"
            + (f"; nearest: {', '.join(near)}" if near else ""),
        )
        return
    if _get(cfg, "init_weights"):
        return  # the backbone's ImageNet weights are not loaded then
    for key in ("backbone.weights", "backbone.pretrained"):
        weights = _get(cfg, key)
        if weights in (_ABSENT, None, False, True, "") or not isinstance(weights, str):
            continue
        if is_weights_file(weights):
            if not Path(weights).expanduser().is_file():
                yield problem(key, weights, "no such file (a timm tag or a local weights file)")
        elif bad := weights_tag_problem(resolve_backbone_name(name), weights):
            yield problem(key, weights, bad)


def _class_map(cfg: DictConfig) -> Iterator[str]:
    """class_map renames the dataset's classes for init_weights: its keys are dataset classes."""
    class_map = _get(cfg, "class_map")
    if class_map in (_ABSENT, None) or class_map == {}:
        return
    if not isinstance(class_map, dict):
        yield problem("class_map", class_map, "must be a mapping {dataset class: checkpoint class}")
        return
    if not _get(cfg, "init_weights"):
        yield problem(
            "class_map",
            class_map,
            "is read only with init_weights=PATH (it maps the dataset's class names to the "
            "checkpoint's); set init_weights or remove class_map",
        )
        return
    from ..classes import normalize_name
    from ..data import metadata_for
    from ..errors import UserError

    try:
        names = metadata_for(
            cfg.dataset.name,
            cfg.task.name,
            _get(cfg, "dataset.source") or None,
            _get(cfg, "dataset.root") or None,
        ).class_names
    except (UserError, FileNotFoundError):
        return  # the dataset's own check names that problem
    known = {normalize_name(n): n for n in names}
    for new in class_map:
        if normalize_name(new) not in known:
            near = difflib.get_close_matches(str(new), names, n=3)
            yield problem(
                "class_map",
                class_map,
                f"'{new}' is not a class of dataset '{cfg.dataset.name}' ({cfg.task.name})"
                + (f"; nearest: {', '.join(near)}" if near else f"; its classes: {names[:20]}"),
            )


def _inference(cfg: DictConfig) -> Iterator[str]:
    """The post-processing settings, checked by `InferenceSettings` itself."""
    if "inference" not in cfg:
        return
    from ..inference import InferenceSettings

    settings = _get(cfg, "inference")
    try:
        InferenceSettings(  # a null value is the checkpoint's (dataset=checkpoint)
            **{
                k: v
                for k, v in settings.items()
                if k in _signature_keys("inference") and v is not None
            }
        )
    except (TypeError, ValueError) as err:
        yield f"inference: {err}"


def _predict_inputs(cfg: DictConfig, command: str) -> Iterator[str]:
    if command != "predict":
        return
    inputs, split = _get(cfg, "inputs"), _get(cfg, "split")
    inputs = None if inputs is _ABSENT else inputs
    split = None if split is _ABSENT else split
    if bool(inputs) == bool(split):
        yield problem(
            "inputs" if inputs else "split",
            inputs or split,
            "predict needs either inputs=[files or folders] or split=train|val|test, not both",
        )


# keys whose null means "the checkpoint's value" (predict's dataset=checkpoint only)
NULL_IS_THE_CHECKPOINTS = (
    "dataset.test_min_size",
    "dataset.test_max_size",
    "dataset.object_mask_threshold",
    "inference.object_mask_threshold",
)


def _from_checkpoint(cfg: DictConfig, command: str) -> Iterator[str]:
    """task=checkpoint / dataset=checkpoint (the checkpoint's task and classes) are predict's on
    plain images; the null sizes and threshold of dataset=checkpoint mean "the checkpoint's"."""
    task, dataset = _get(cfg, "task.name"), _get(cfg, "dataset.name")
    chosen = [
        f"{k}=checkpoint" for k, v in (("task", task), ("dataset", dataset)) if v == "checkpoint"
    ]
    if chosen and command != "predict":
        yield (
            f"{' '.join(chosen)}: the checkpoint's own task and classes are for m2f-predict; "
            "choose the dataset and task to run on, e.g. dataset=coco task=panoptic"
        )
    elif dataset == FROM_CHECKPOINT and _get(cfg, "split") not in (None, _ABSENT):
        yield problem(
            "split",
            cfg.split,
            "predicts a dataset's split: choose the dataset (and its task), e.g. dataset=coco "
            "task=panoptic, or predict on files with inputs=[...]",
        )
    if dataset == FROM_CHECKPOINT:
        return
    for key in NULL_IS_THE_CHECKPOINTS:
        if _get(cfg, key) is None:
            yield problem(
                key,
                None,
                "must be set (null is the checkpoint's value, "
                "for predict's dataset=checkpoint only)",
            )


def _checkpoint_given(cfg: DictConfig, command: str) -> Iterator[str]:
    """evaluate, predict and export read `checkpoint=PATH` (or a hub id)."""
    keys = list(cfg.keys())  # (`in cfg` is False for a key that is not set)
    if command not in ("evaluate", "predict", "export") or "checkpoint" not in keys:
        return
    if OmegaConf.is_missing(cfg, "checkpoint"):
        yield (
            "checkpoint is not set: give the weights to use, checkpoint=PATH (or a Hugging Face "
            "hub id, checkpoint=facebook/mask2former-swin-tiny-coco-panoptic)"
        )
    elif bad := weights_source()(cfg.checkpoint):
        yield problem("checkpoint", cfg.checkpoint, bad)


def _wandb_mode(cfg: DictConfig, command: str) -> Iterator[str]:
    mode = os.environ.get("WANDB_MODE")
    if mode is None or mode in WANDB_MODES or command not in ("train", "evaluate"):
        return
    if _get(cfg, "logger.name") == "wandb":
        yield problem(
            "WANDB_MODE (environment variable)",
            mode,
            f"must be one of {', '.join(WANDB_MODES)}; unset it (unset WANDB_MODE) or set "
            "it, e.g. WANDB_MODE=offline",
        )


def visible_gpus() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _machine(cfg: DictConfig, command: str, gpus: int | None) -> Iterator[str]:
    """Settings that need a GPU, on a machine without one (or with fewer)."""
    if command not in TRAINER_COMMANDS:
        return
    accelerator = _get(cfg, "trainer.accelerator")
    if accelerator not in ("gpu", "cuda"):
        return
    gpus = visible_gpus() if gpus is None else gpus
    if gpus == 0:
        yield problem(
            "trainer.accelerator",
            accelerator,
            "this machine has no CUDA GPU: use trainer=cpu (trainer.accelerator=cpu "
            "trainer.devices=1), or run on a GPU machine",
        )
        return
    count = _get(cfg, "trainer.devices")
    if command == "predict" or count in ("auto", -1) or devices(count):
        return  # predict runs on one device; a bad value is the table's
    if isinstance(count, str):
        count = [int(c) for c in count.split(",") if c.strip()] if "," in count else int(count)
    wanted = max(count) + 1 if isinstance(count, list) else count
    if wanted > gpus:
        accumulate = _get(cfg, "trainer.accumulate_grad_batches")
        fix = f"trainer.devices={gpus}"
        if isinstance(count, int) and _is_int(accumulate) and count % gpus == 0:
            fix += f" trainer.accumulate_grad_batches={accumulate * count // gpus} (same images per step)"
        yield problem(
            "trainer.devices",
            _get(cfg, "trainer.devices"),
            f"this machine has {gpus} GPU(s): use {fix}",
        )


# ---------------------------------------------------------------- unknown keys


def _signature_keys(section: str) -> set[str]:
    """The keyword arguments the consumer of a strict section takes."""
    if section == "model.net":
        from ..modeling import Mask2Former

        return {*inspect.signature(Mask2Former).parameters, "_target_"} - {"num_classes"}
    if section == "model.criterion":
        from ..losses import SetCriterion

        return {*inspect.signature(SetCriterion).parameters, "_target_"} - {"num_classes"}
    if section == "trainer":
        import lightning as L

        return set(inspect.signature(L.Trainer).parameters) - {"callbacks", "logger", "plugins"}
    if section == "inference":
        import dataclasses

        from ..inference import InferenceSettings

        return {f.name for f in dataclasses.fields(InferenceSettings)}
    if section == "optimizer":
        from ..runs.optim import build_optimizer

        return set(inspect.signature(build_optimizer).parameters) - {"model"}
    if section == "scheduler":
        from ..runs.optim import lr_lambda

        return set(inspect.signature(lr_lambda).parameters) - {"max_steps"}
    if section == "dataset":  # read by the datamodule, or through interpolations
        from ..data import SegmentationDataModule

        return set(inspect.signature(SegmentationDataModule).parameters)
    return set()


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node:
            path = f"{prefix}{key}"
            keys.append(path)
            if not OmegaConf.is_interpolation(node, key) and not OmegaConf.is_missing(node, key):
                keys += _leaf_keys(node[key], f"{path}.")
    return keys


def added_keys() -> list[str]:
    """The keys this run added with `+key=value` on the command line (Hydra's overrides)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    overrides = HydraConfig.get().overrides.task
    return [o[1:].split("=", 1)[0] for o in overrides if o.startswith("+") and o[1:2] != "+"]


def _unknown_keys(cfg: DictConfig, added: list[str]) -> tuple[list[str], list[str]]:
    """(errors, warnings): keys of a strict section that its consumer does not take (the build
    would fail), and added keys that nothing reads (they would be ignored), each with the
    nearest known key."""
    strict = tuple(f"{s}." for s in STRICT_SECTIONS)
    sections = {
        s: OmegaConf.select(cfg, s)
        for s in STRICT_SECTIONS
        if isinstance(OmegaConf.select(cfg, s, default=None), DictConfig)
    }
    accepted = {s: _signature_keys(s) for s in sections}
    known = [k for k in _leaf_keys(cfg) if k not in set(added) and not k.startswith(strict)]
    known += [f"{s}.{k}" for s, keys in accepted.items() for k in sorted(keys)]
    known += [f"dataset.{k}" for k in sorted(_signature_keys("dataset"))]
    errors = [
        problem(f"{s}.{k}", _get(cfg, f"{s}.{k}"), "unknown key: nothing reads it")
        + _nearest(f"{s}.{k}", known)
        for s, node in sections.items()
        for k in node
        if k not in accepted[s]
    ]
    notes = [
        f"'+{key}' is not a key m2f-lightning reads: it is ignored{_nearest(key, known)}"
        for key in added
        if not key.startswith((*strict, *FREE_FORM))
        and key not in known
        and not any(k.startswith(f"{key}.") for k in known)
    ]
    return errors, notes


def _nearest(key: str, known: list[str]) -> str:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {near[0]}?" if near else ""


# ---------------------------------------------------------------- the check


CROSS_RULES: tuple[Callable[..., Iterator[str]], ...] = (
    _heads,
    _dataset,
    _backbone,
    _class_map,
    _inference,
)
COMMAND_RULES: tuple[Callable[..., Iterator[str]], ...] = (
    _predict_inputs,
    _from_checkpoint,
    _checkpoint_given,
    _wandb_mode,
)


def config_problems(
    cfg: DictConfig,
    command: str = "train",
    gpus: int | None = None,
    added: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a composed config for `command`; `gpus`: the machine's CUDA
    devices (None: this machine's); `added`: keys added with `+` (None: Hydra's overrides)."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}; got {command!r}")
    problems: list[str] = []
    for rule in RULES:
        value = _get(cfg, rule.key)
        if value is _ABSENT:
            continue
        if bad := rule.check(value):
            problems.append(
                problem(rule.key, value, bad + (f" ({rule.hint})" if rule.hint else ""))
            )
    for cross in CROSS_RULES:
        problems += cross(cfg)
    for rule in COMMAND_RULES:
        problems += rule(cfg, command)
    problems += _machine(cfg, command, gpus)
    errors, notes = _unknown_keys(cfg, added_keys() if added is None else added)
    return problems + errors, notes


def check_config(
    cfg: DictConfig,
    command: str = "train",
    gpus: int | None = None,
    added: list[str] | None = None,
) -> None:
    """Raise one `ConfigError` listing every problem of `cfg` (one line each); warn about keys
    added with `+` that nothing reads."""
    problems, notes = config_problems(cfg, command, gpus, added)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    if problems:
        raise ConfigError("\n".join(problems), problems)
