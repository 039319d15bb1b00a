"""Pretrained backbone weights: a timm tag (fetched by timm from the Hugging Face hub, then cached)
or a local file in any layout the paper's weights were published in, loaded strictly.

Accepted local files:
- a timm / torchvision state dict (`.pth`, `.pt`, `.bin`, `.safetensors`), possibly wrapped in
  `{"model": ...}` or `{"state_dict": ...}`;
- detectron2's ImageNet backbone pickles `R-50.pkl` / `R-101.pkl` (`stem.conv1.weight`,
  `res2.0.conv1.norm.weight`, `res2.0.shortcut.weight`, ...), read with an unpickler that only
  rebuilds dicts and numpy arrays;
- a Microsoft Swin `.pth` (`{"model": {"patch_embed.proj.weight", "layers.0.downsample...", ...}}`),
  converted by timm's own Swin checkpoint filter.

Every tensor of the backbone must come from the weights; the only ones that may start fresh are
our per-stage output norms (`out_norms`, not part of any ImageNet model). Tensors of the ImageNet
model that the feature pyramid does not use (classifier head, final norm) are dropped. Anything
else missing, unexpected or of another shape fails the load with the tensors named.
"""

import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..errors import RefusedPickleError

logger = logging.getLogger(__name__)

# the weights of the official Mask2Former configs, as timm tags (shared/reference/fidelity.md §1)
OFFICIAL_WEIGHTS = {
    "resnet50": "resnet50.tv_in1k",
    "resnet101": "resnet101.tv_in1k",
    "swin_tiny_patch4_window7_224": "swin_tiny_patch4_window7_224.ms_in1k",
    "swin_small_patch4_window7_224": "swin_small_patch4_window7_224.ms_in1k",
    "swin_base_patch4_window12_384": "swin_base_patch4_window12_384.ms_in1k",
    "swin_large_patch4_window12_384": "swin_large_patch4_window12_384.ms_in22k",
}

FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".pkl", ".ckpt")


class BackboneWeightsUnavailable(FileNotFoundError):
    """A timm tag that is neither cached nor downloadable (offline cluster, no network)."""


def official_weights(name: str) -> str:
    """The timm tag of the paper's weights for a timm model name (timm's default tag otherwise)."""
    return OFFICIAL_WEIGHTS.get(name, name)


def resolve_weights_argument(
    name: str, weights: str | Path | None, pretrained: bool | str | Path | None = None
) -> str | None:
    """The weights to load, from `weights` and the deprecated `pretrained` spelling.

    `pretrained=True` means the official tag of `name`, a string a local file; False/None mean
    nothing. `weights` null/empty means random initialisation.
    """
    if pretrained not in (None, False, ""):
        warnings.warn(
            "backbone `pretrained` is deprecated: use `backbone.weights` (model argument "
            "`backbone_weights`) with a timm tag such as "
            f"'{official_weights(name)}' or the path of a local weights file",
            FutureWarning,
            stacklevel=3,
        )
        weights = official_weights(name) if pretrained is True else str(pretrained)
    if weights is None or weights is False or str(weights).strip().lower() in ("", "none", "null"):
        return None
    return str(weights)


def weights_from_config(cfg: Any) -> str | None:
    """`backbone_weights` of the model from a composed Hydra config (`backbone.weights`, or the
    deprecated `backbone.pretrained`). None when `init_weights` replaces every tensor anyway, so
    that fine-tuning from our checkpoints never downloads ImageNet weights."""
    if cfg.get("init_weights"):
        return None
    backbone = cfg.backbone
    name = _timm_name(backbone.name)
    return resolve_weights_argument(name, backbone.get("weights"), backbone.get("pretrained"))


def _timm_name(name: str) -> str:
    from .backbone import resolve_backbone_name

    return resolve_backbone_name(name)


def is_weights_file(weights: str | Path) -> bool:
    """A local path (rather than a timm tag such as `resnet50.tv_in1k`)."""
    text = str(weights)
    return (
        Path(text).expanduser().exists()
        or text.lower().endswith(FILE_SUFFIXES)
        or "/" in text
        or "\\" in text
        or text.startswith(("~", "."))
    )


# ---------------------------------------------------------------- reading


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file, keys as stored (wrappers and `module.` removed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file not found: {path} (backbone.weights takes a timm tag such "
            "as resnet50.tv_in1k or the path of a local .pth / .safetensors / .pkl file)"
        )
    if path.suffix == ".pkl":
        from .d2_format import read_d2_pickle  # restricted unpickler: arrays and dicts only

        return read_d2_pickle(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise ValueError(
                f"cannot read backbone weights file {path}: it is truncated or not a PyTorch "
                "file; re-download or re-save it"
            ) from None
        raise RefusedPickleError(
            f"backbone weights file {path} is refused: it holds Python objects other than "
            "tensors and plain containers, and loading them could run arbitrary code. Save the "
            "weights as a plain state_dict where you trust the file (torch.save(model."
            "state_dict(), 'weights.pth'), or safetensors' save_file) and pass that file"
        ) from None
    return _unwrap(state, str(path))


def _pretrained_cfg(tag: str) -> Any:
    """timm's record of a weights tag (local, no network), None for an unknown one."""
    try:
        return timm.models.get_pretrained_cfg(tag)
    except RuntimeError:  # a known architecture with an unknown tag
        return None


def _unknown_tag(tag: str) -> str:
    arch = tag.split(".")[0]
    return (
        f"unknown backbone weights '{tag}': give a timm tag (the paper's for {arch}: "
        f"'{official_weights(arch)}'; timm.list_pretrained('{arch}.*') lists the others) "
        "or the path of a local weights file"
    )


def weights_tag_problem(name: str, tag: str) -> str | None:
    """What is wrong with the timm tag `tag` as weights of the timm model `name` (None: nothing),
    from timm's registry, without a network."""
    arch = tag.split(".")[0]
    if arch != name:
        return f"are for '{arch}', the backbone is '{name}' (its paper weights: '{official_weights(name)}')"
    if _pretrained_cfg(tag) is None:
        return _unknown_tag(tag)
    return None


def download_weights(tag: str) -> dict[str, torch.Tensor]:
    """The state dict of a timm tag, through timm's Hugging Face hub download (cached)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    pretrained_cfg = _pretrained_cfg(tag)
    if pretrained_cfg is None:
        raise ValueError(_unknown_tag(tag))
    try:
        if pretrained_cfg.hf_hub_id:
            from timm.models import load_state_dict_from_hf

            kwargs = (
                {"filename": pretrained_cfg.hf_hub_filename}
                if pretrained_cfg.hf_hub_filename
                else {}
            )
            state = load_state_dict_from_hf(pretrained_cfg.hf_hub_id, weights_only=True, **kwargs)
        elif pretrained_cfg.url:
            state = torch.hub.load_state_dict_from_url(
                pretrained_cfg.url, map_location="cpu", weights_only=True
            )
        else:
            raise ValueError(f"timm has no download location for '{tag}'")
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError) as err:
        raise BackboneWeightsUnavailable(
            f"backbone weights '{tag}' are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and cannot be downloaded ({type(err).__name__}). "
            f'On a machine with a network, fill the cache once (python -c "import timm; '
            f"timm.create_model('{tag}', pretrained=True)\") and copy it, or download the file "
            f"and pass it: backbone.weights=/path/to/file (.pth, .safetensors, detectron2 "
            f".pkl or Microsoft Swin .pth)"
        ) from err
    return _unwrap(state, tag)


# ---------------------------------------------------------------- layouts


def _from_detectron2_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2 ResNet names (stem.conv1, res2.0.conv1.norm, .shortcut) → timm's."""
    from .d2_format import rename_resnet

    out = {}
    for key, value in state.items():
        if re.match(r"^(stem\.fc|fc1000|linear)\.", key):  # ImageNet classifier
            out["fc." + key.rsplit(".", 1)[1]] = value
            continue
        renamed = rename_resnet("backbone." + key)
        out[renamed.removeprefix("backbone.body.") if renamed else key] = value
    return out


def _is_detectron2_resnet(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("stem.conv1.", "res2.")) for k in state)


def to_timm_layout(
    state: dict[str, torch.Tensor], name: str, model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename a state dict of any accepted layout into timm's names for model `name`."""
    if _is_detectron2_resnet(state):
        return _from_detectron2_resnet(state)
    if name.startswith("swin"):
        # timm's filter: Microsoft layout (downsample at the end of a stage, `head.`) → timm's,
        # non-persistent buffers dropped; a timm-layout dict passes through
        from timm.models.swin_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(state, model)
    return state


# ---------------------------------------------------------------- loading


def _body_to_model_key(key: str) -> str:
    """A key of timm's features_only wrapper → the key in the full model (`layers_1.x` →
    `layers.1.x`: the wrapper flattens sequential stages into `name_index`)."""
    return re.sub(r"^([A-Za-z]\w*?)_(\d+)\.", r"\1.\2.", key)


def _listed(keys: list[str]) -> str:
    return f"{len(keys)}: {keys[:20]}" + (" ..." if len(keys) > 20 else "")


def load_backbone_weights(
    body: nn.Module, name: str, timm_kwargs: dict[str, Any], weights: str | Path
) -> list[str]:
    """Load `weights` (timm tag or local file) into the features_only timm model `body`.

    Returns the keys of the weights that were dropped (classifier head, unused final norm).
    Raises ValueError naming every missing, unexpected or mis-shaped tensor.
    """
    source = str(weights)
    if is_weights_file(weights):
        state = read_weights_file(weights)
    else:
        if problem := weights_tag_problem(name, source):
            raise ValueError(f"backbone weights '{source}' {problem}")
        state = download_weights(source)
    # the full ImageNet model on the meta device: its key names and shapes, no memory
    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False, **timm_kwargs)
    state = to_timm_layout(state, name, full)
    full_shapes = {k: v.shape for k, v in full.state_dict().items()}

    body_state = body.state_dict()
    wanted = {key: _body_to_model_key(key) for key in body_state}
    unmapped = [k for k, m in wanted.items() if m not in full_shapes]
    if unmapped:  # a timm wrapper we do not know how to map
        raise ValueError(f"cannot map backbone tensors to '{name}' names: {_listed(unmapped)}")
    # BatchNorm's step counter is not a weight (detectron2's pickles do not carry it)
    wanted = {
        k: m
        for k, m in wanted.items()
        if not (k.endswith("num_batches_tracked") and m not in state)
    }
    used = set(wanted.values())
    missing = [m for m in wanted.values() if m not in state]
    unexpected = [k for k in state if k not in full_shapes]
    mismatched = [
        f"{k}: {tuple(state[k].shape)} in the weights, {tuple(full_shapes[k])} in the model"
        for k in used
        if k in state and state[k].shape != full_shapes[k]
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected {_listed(unexpected)}")
        if mismatched:
            problems.append(f"other shape {_listed(sorted(mismatched))}")
        raise ValueError(
            f"backbone weights {source} do not fit '{name}' ({timm_kwargs or 'default sizes'}): "
            + "; ".join(problems)
        )
    result = body.load_state_dict({key: state[m] for key, m in wanted.items()}, strict=False)
    left = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    assert not left and not result.unexpected_keys, (left, result.unexpected_keys)
    dropped = sorted(k for k in state if k not in used)
    logger.info("backbone %s: loaded %s (dropped %s)", name, source, dropped)
    return dropped
