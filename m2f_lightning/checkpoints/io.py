"""Save and load models: our checkpoints, Lightning checkpoints, HF directories, model-zoo .pkl."""

import json
from pathlib import Path
from typing import Any

import torch

from ..classes import match_classes
from ..errors import CheckpointError, CheckpointMismatchError, MissingCheckpointError
from ..modeling import Mask2Former
from ..modeling.d2_format import read_d2_pickle
from ..modeling.dtypes import refuse_half_weights
from .d2 import convert_d2_state_dict
from .hf import convert_hf_state_dict, read_hf_checkpoint
from .hub import resolve_weights
from .reading import load_torch_file, warn_if_newer_lightning

FORMAT_VERSION = 1


def save_model(
    model: Mask2Former,
    path: str | Path,
    class_names: list[str] | None = None,
    is_thing: list[bool] | None = None,
    **extra: Any,
) -> Path:
    """Write `{"model_config", "state_dict", "class_names", "is_thing", ...}`, loadable with
    weights_only. Names and thing flags default to the model's (`load_model` sets them)."""
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if is_thing is None:
        is_thing = getattr(model, "is_thing", None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "m2f_lightning",
        "format_version": FORMAT_VERSION,
        "model_config": model.config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_names": list(class_names) if class_names is not None else None,
        "is_thing": [bool(t) for t in is_thing] if is_thing is not None else None,
        **extra,
    }
    torch.save(payload, path)
    return path


def load_state_strict(model: Mask2Former, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter and buffer of `model`; list missing/unexpected keys in the error."""
    check_float_weights(model, state_dict, source)
    result = model.load_state_dict(state_dict, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys ({len(result.missing_keys)}): {result.missing_keys[:20]}")
    if result.unexpected_keys:
        problems.append(
            f"unexpected keys ({len(result.unexpected_keys)}): {result.unexpected_keys[:20]}"
        )
    if problems:
        raise CheckpointMismatchError(
            f"weights from {source} do not fit the model: " + "; ".join(problems)
        )


def check_float_weights(
    model: Mask2Former, state_dict: dict[str, torch.Tensor], source: str
) -> None:
    """Refuse integer (or bool) tensors for the model's floating-point weights: loading would
    cast them silently (a quantised or corrupted file evaluating as a wrong model)."""
    target = model.state_dict()
    wrong = [
        f"{k} ({v.dtype})"
        for k, v in state_dict.items()
        if k in target
        and target[k].is_floating_point()
        and isinstance(v, torch.Tensor)
        and not (v.is_floating_point() or v.is_complex())
    ]
    if wrong:
        raise CheckpointError(
            f"weights from {source} are not floating point: {len(wrong)} tensor(s) of an integer "
            f"type where the model has float weights, e.g. {', '.join(wrong[:5])}. Integer or "
            "quantised weights are not supported: use the float checkpoint they came from"
        )


def _lightning_model_state(ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    hparams = ckpt.get("hyper_parameters") or {}
    config = hparams.get("model_config") or hparams.get("model")
    if not isinstance(config, dict):
        raise KeyError(
            "Lightning checkpoint has no 'model_config' hyper-parameter to rebuild the model"
        )
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    return dict(config), state


def read_weights(
    path: str | Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str] | None]:
    """(model config, state dict in our key names, class names) from any supported source; the
    config is empty for a model-zoo `.pkl`, which does not store the architecture."""
    config, state, class_names, _ = read_weights_and_classes(path)
    return config, state, class_names


def _is_thing_from_hparams(hparams: dict[str, Any]) -> list[bool] | None:
    names, things = hparams.get("class_names"), hparams.get("thing_ids")
    if names is None or things is None:
        return None
    return [i in set(things) for i in range(len(names))]


def read_weights_and_classes(
    path: str | Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str] | None, list[bool] | None]:
    """`read_weights` plus the thing flag of each class, where the source stores it."""
    path = resolve_weights(path)  # a Hugging Face hub id: its folder in the HF cache
    if not path.exists():
        raise MissingCheckpointError(f"no checkpoint at {path}")
    if path.is_dir():
        config, hf_state, class_names = read_hf_checkpoint(path)
        return config, convert_hf_state_dict(hf_state), class_names, None
    if path.suffix == ".pkl":
        return {}, convert_d2_state_dict(read_d2_pickle(path)), None, None
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint dict")
    if ckpt.get("format") == "m2f_lightning":
        version = ckpt.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format_version {version!r}, newer than this "
                f"m2f-lightning reads (format_version {FORMAT_VERSION}): upgrade m2f-lightning "
                "to load it"
            )
        names, is_thing = ckpt.get("class_names"), ckpt.get("is_thing")
        return dict(ckpt["model_config"]), ckpt["state_dict"], names, is_thing
    if "state_dict" in ckpt and "pytorch-lightning_version" in ckpt:
        warn_if_newer_lightning(ckpt, path)
        config, state = _lightning_model_state(ckpt)
        hparams = ckpt.get("hyper_parameters") or {}
        return config, state, hparams.get("class_names"), _is_thing_from_hparams(hparams)
    raise CheckpointError(f"{path}: unknown checkpoint format (keys: {sorted(ckpt)[:10]})")


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any
) -> Mask2Former:
    """A ready `Mask2Former` in eval mode from any supported weights source.

    - our checkpoint file (from `save_model`) or a Lightning `.ckpt` of this project;
    - a Hugging Face `Mask2FormerForUniversalSegmentation` directory (config.json + weights),
      or its hub id (`facebook/mask2former-swin-tiny-coco-panoptic`, `owner/name@revision`):
      fetched once into the HF cache (`checkpoints/hub.py`);
    - an original detectron2 model-zoo `.pkl` (give `num_classes`, `backbone`, ... as overrides,
      since the file does not carry the architecture).
    `overrides` replace entries of the stored model config.
    """
    path = Path(path)
    if path.suffix == ".pkl" and "num_classes" not in overrides:
        raise ValueError(
            f"{path} is a model-zoo .pkl, which does not store the architecture: pass "
            "num_classes=... (and backbone=..., num_queries=... if not the R50 defaults)"
        )
    config, state, class_names, is_thing = read_weights_and_classes(path)
    # the file holds every tensor: never fetch ImageNet weights to overwrite them
    config = {**config, **overrides, "backbone_weights": None}
    config.pop("backbone_pretrained", None)  # configs saved before `backbone_weights`
    model = Mask2Former(**config)
    load_state_strict(model, state, str(path))
    model.class_names = class_names  # None where the source stores no names (.pkl)
    model.is_thing = is_thing
    model.register_forward_pre_hook(refuse_half_weights)  # model.half(): a clear error
    return model.to(map_location).eval()


CLASS_HEAD = ("transformer_decoder.class_embed.weight", "transformer_decoder.class_embed.bias")


# model-config keys a fine-tuned model may change: its classes, and what is not a tensor
_FREE_KEYS = ("num_classes", "backbone_weights", "backbone_pretrained")


def _check_same_architecture(
    path: str | Path,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    model: Mask2Former,
    target: dict[str, torch.Tensor],
) -> None:
    """Fail naming the sizes that differ when the weights at `path` are of another architecture
    than `model` (only the classes may differ: the class head's rows, not its width)."""
    mismatched = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(target[k].shape)} in the model"
        for k, v in state.items()
        if k in target
        and (v.shape[1:] != target[k].shape[1:] if k in CLASS_HEAD else v.shape != target[k].shape)
    ]
    if not mismatched:
        return

    def plain(value: Any) -> Any:  # tuples as lists
        return json.loads(json.dumps(value, default=str))

    current = getattr(model, "config", {})
    differ = [
        f"{key}={plain(config[key])!r} in the file, {plain(current[key])!r} in the model"
        for key in sorted(set(config) & set(current))
        if key not in _FREE_KEYS and plain(config[key]) != plain(current[key])
    ]
    raise CheckpointError(
        f"init_weights={path} has another architecture than the model (the same backbone, "
        "queries and widths are needed; only the classes may differ): "
        + (f"{'; '.join(differ)} (tensors: " if differ else "(")
        + "; ".join(mismatched[:3])
        + (", ...)" if len(mismatched) > 3 else ")")
        + ". Set the model.net / backbone sizes to the checkpoint's, or start from other weights"
    )


def init_from_weights(
    model: Mask2Former,
    path: str | Path,
    class_names: list[str] | None = None,
    class_map: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """Copy the weights at `path` (any source `load_model` reads) into `model` to fine-tune it.

    Every tensor must fit, except the class head (`transformer_decoder.class_embed`), which is
    mapped by class name when both the file and `class_names` (the model's classes) name them:
    a class whose name matches one of the file's (case and punctuation insensitive, or through
    `class_map={new: old}`) keeps that class's row, the no-object row is kept, and the other
    rows keep their fresh initialisation. Without names, a head of the same size is copied whole
    and one of another size stays fresh. Returns `{"matched": [...], "fresh": [...]}` (names,
    or indices as strings where the model has no names).
    """
    config, state, old_names = read_weights(path)
    target = model.state_dict()
    _check_same_architecture(path, config, state, model, target)
    num_new = target[CLASS_HEAD[0]].shape[0] - 1
    new_names = list(class_names) if class_names is not None else [str(i) for i in range(num_new)]
    head = {k: state.pop(k) for k in CLASS_HEAD if k in state}
    if class_names is not None and old_names is not None and len(head) == len(CLASS_HEAD):
        rows = match_classes(new_names, old_names, class_map)
        rows[num_new] = len(old_names)  # the no-object row
        for key in CLASS_HEAD:
            fresh = target[key].clone()
            for new, old in rows.items():
                fresh[new] = head[key][old]
            state[key] = fresh
    elif class_map:
        raise ValueError(f"class_map needs class names in {path} and in the dataset")
    elif all(head[k].shape == target[k].shape for k in head):
        state.update(head)
        rows = dict.fromkeys(range(num_new + 1)) if head else {}
    else:
        rows = {}
    check_float_weights(model, state, str(path))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in CLASS_HEAD]
    if missing or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"weights from {path} do not fit the model: missing {missing[:20]}, "
            f"unexpected {result.unexpected_keys[:20]}"
        )
    return {
        "matched": [new_names[i] for i in range(num_new) if i in rows],
        "fresh": [new_names[i] for i in range(num_new) if i not in rows],
    }
