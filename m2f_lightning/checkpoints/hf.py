"""Convert a Hugging Face `Mask2FormerForUniversalSegmentation` checkpoint into our model.

Accepts both key spellings the port has used: the in-memory names of transformers v5 and the
legacy names found in hub files (see docs/architecture.md). Every key must be consumed and every
parameter of our model filled; anything else is an error that lists the offending keys.
"""

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .hf_keys import FUSED, IGNORED, RENAMES, downsample_key, modernise_key
from .reading import load_torch_file


def convert_hf_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and fuse) HF tensors into our key layout. Unknown keys raise a KeyError listing them."""
    ours: dict[str, torch.Tensor] = {}
    fused_parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for raw_key, tensor in hf_state.items():
        key = modernise_key(raw_key)
        if any(p.search(key) for p in IGNORED):
            continue
        target = downsample_key(key)
        if target is None:
            for pattern, template in RENAMES:
                m = pattern.match(key)
                if m:
                    if "{stage_minus_1}" in template:
                        template = template.replace("{stage_minus_1}", str(int(m.group(1)) - 1))
                    target = m.expand(template)
                    break
        if target is None:
            for pattern, template in FUSED:
                m = pattern.match(key)
                if m:
                    groups = m.groups()
                    which = groups[-2]
                    fused_key = template.format(*groups)
                    fused_parts.setdefault(fused_key, {})[which] = tensor
                    target = ""
                    break
        if target is None:
            unknown.append(raw_key)
        elif target:
            ours[target] = tensor
    for fused_key, parts in fused_parts.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise KeyError(f"HF checkpoint lacks the {missing} projection(s) of {fused_key}")
        ours[fused_key] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    if unknown:
        raise KeyError(
            f"HF checkpoint has {len(unknown)} unexpected key(s) that we cannot map: {unknown[:20]}"
        )
    return ours


# transformers' `SwinConfig` defaults (what HF fills into a `backbone_config` dict lacking a key)
SWIN_DEFAULTS: dict[str, Any] = {
    "model_type": "swin",
    "patch_size": 4,
    "embed_dim": 96,
    "depths": [2, 2, 6, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "mlp_ratio": 4.0,
    "drop_path_rate": 0.1,
}
# `Mask2FormerConfig`'s backbone when config.json has no `backbone_config` at all
DEFAULT_BACKBONE: dict[str, Any] = {**SWIN_DEFAULTS, "depths": [2, 2, 18, 2], "drop_path_rate": 0.3}


def hf_config_to_ours(hf_config: dict[str, Any]) -> dict[str, Any]:
    """Translate an HF `Mask2FormerConfig` (as a dict, i.e. config.json) into our model config.

    A key the file leaves out takes the value transformers would give it, so a hand-written or
    trimmed config.json builds the same architecture here as in `from_pretrained`.
    """
    backbone = {**SWIN_DEFAULTS, **(hf_config.get("backbone_config") or DEFAULT_BACKBONE)}
    if backbone["model_type"] != "swin":
        raise ValueError(
            f"only Swin backbones are supported for HF checkpoints, got {backbone['model_type']}"
        )
    if backbone["patch_size"] != 4:
        raise ValueError(f"only Swin with patch size 4 is supported, got {backbone['patch_size']}")
    id2label = hf_config.get("id2label") or {}
    num_labels = hf_config.get("num_labels") or len(id2label)
    if not num_labels:
        raise ValueError("HF config has neither num_labels nor id2label")
    heads = hf_config.get("num_attention_heads", 8)
    return {
        "num_classes": int(num_labels),
        "backbone": "swin_tiny_patch4_window7_224",
        "backbone_kwargs": {
            "embed_dim": backbone["embed_dim"],
            "depths": list(backbone["depths"]),
            "num_heads": list(backbone["num_heads"]),
            "window_size": backbone["window_size"],
            "mlp_ratio": backbone["mlp_ratio"],
            "drop_path_rate": backbone["drop_path_rate"],
        },
        "num_queries": hf_config.get("num_queries", 100),
        "hidden_dim": hf_config.get("hidden_dim", 256),
        "mask_dim": hf_config.get("mask_feature_size", 256),
        "pixel_decoder_dim": hf_config.get("feature_size", 256),
        "encoder_layers": hf_config.get("encoder_layers", 6),
        "encoder_ffn_dim": hf_config.get("encoder_feedforward_dim", 1024),
        "encoder_heads": heads,
        "encoder_points": 4,
        "decoder_layers": hf_config.get("decoder_layers", 10) - 1,
        "decoder_heads": heads,
        "decoder_ffn_dim": hf_config.get("dim_feedforward", 2048),
        "norm_groups": 32,
    }


def check_mask2former_config(hf_config: Any, source: str) -> None:
    """Refuse a config.json of another kind of model (a hand-written one may omit model_type)."""
    model_type = hf_config.get("model_type", "mask2former") if isinstance(hf_config, dict) else None
    if model_type != "mask2former":
        raise CheckpointError(
            f"{source} describes a {model_type!r} model, not a Mask2Former (config.json "
            "model_type 'mask2former', transformers' Mask2FormerForUniversalSegmentation)"
        )


def read_hf_checkpoint(
    directory: str | Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str] | None]:
    """Read config.json and the weights (model.safetensors or pytorch_model.bin) of an HF directory.

    Returns (our model config, HF state dict, class names or None).
    """
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"not an HF checkpoint directory (no config.json): {directory}")
    hf_config = json.loads(config_file.read_text())
    check_mask2former_config(hf_config, str(config_file))
    safetensors_file = directory / "model.safetensors"
    bin_file = directory / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(safetensors_file))
    elif bin_file.is_file():
        state = load_torch_file(bin_file)
    else:
        raise FileNotFoundError(
            f"HF checkpoint directory {directory} has neither model.safetensors nor pytorch_model.bin"
        )
    id2label = hf_config.get("id2label")
    names = [id2label[str(i)] for i in range(len(id2label))] if id2label else None
    return hf_config_to_ours(hf_config), state, names
