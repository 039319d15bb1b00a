"""Convert a Hugging Face `Mask2FormerForUniversalSegmentation` checkpoint into our model.

Accepts both key spellings the port has used: the in-memory names of transformers v5 and the
legacy names found in hub files (see docs/architecture.md). Every key must be consumed and every
parameter of our model filled; anything else is an error that lists the offending keys.
"""

import json
import re
from pathlib import Path
from typing import Any

import torch

from .reading import load_torch_file

# keys of the HF checkpoint that carry nothing for inference
_IGNORED = (
    re.compile(r"^criterion\.empty_weight$"),
    re.compile(r"\.relative_position_index$"),
    re.compile(r"^model\.pixel_level_module\.encoder\.(swin\.)?layernorm\.(weight|bias)$"),
)

_BACKBONE = "model.pixel_level_module.encoder."
_PIXEL = "model.pixel_level_module.decoder."
_TRANSFORMER = "model.transformer_module."

_QKV_LEGACY = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def _modernise_key(key: str) -> str:
    """Rewrite a legacy hub key into the transformers v5 in-memory spelling."""
    if (
        key.startswith(_BACKBONE)
        and not key.startswith(_BACKBONE + "swin.")
        and not key.startswith(_BACKBONE + "hidden_states_norms.")
    ):
        key = re.sub(
            r"^" + re.escape(_BACKBONE) + r"(embeddings|encoder|layernorm)\.",
            _BACKBONE + r"swin.\1.",
            key,
        )
    key = re.sub(
        r"\.attention\.self\.(query|key|value)\.",
        lambda m: f".attention.{_QKV_LEGACY[m.group(1)]}.",
        key,
    )
    key = key.replace(".attention.output.dense.", ".attention.o_proj.")
    key = re.sub(
        r"\.attention\.self\.relative_position_bias_table$",
        ".attention.relative_position_bias.relative_position_bias_table",
        key,
    )
    key = key.replace(".intermediate.dense.", ".mlp.fc1.")
    key = re.sub(r"\.blocks\.(\d+)\.output\.dense\.", r".blocks.\1.mlp.fc2.", key)
    return key


# (pattern on the v5 key, our key template); fused q|k|v keys are handled separately
_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(
            r"^model\.pixel_level_module\.encoder\.swin\.embeddings\.patch_embeddings\.projection\.(.+)$"
        ),
        r"backbone.body.patch_embed.proj.\1",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.encoder\.swin\.embeddings\.norm\.(.+)$"),
        r"backbone.body.patch_embed.norm.\1",
    ),
    (
        re.compile(
            r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.(.+)$"
        ),
        r"backbone.body.layers_\1.blocks.\2.norm1.\3",
    ),
    (
        re.compile(
            r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.(.+)$"
        ),
        r"backbone.body.layers_\1.blocks.\2.norm2.\3",
    ),
    (
        re.compile(
            r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.(.+)$"
        ),
        r"backbone.body.layers_\1.blocks.\2.attn.proj.\3",
    ),
    (
        re.compile(
            r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.relative_position_bias\.relative_position_bias_table$"
        ),
        r"backbone.body.layers_\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (
        re.compile(
            r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(.+)$"
        ),
        r"backbone.body.layers_\1.blocks.\2.mlp.\3.\4",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.(.+)$"),
        r"backbone.out_norms.{stage_minus_1}.\2",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.decoder\.level_embed$"),
        r"pixel_decoder.level_embed",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.decoder\.input_projections\.(\d)\.(\d)\.(.+)$"),
        r"pixel_decoder.input_proj.\1.\2.\3",
    ),
    (
        re.compile(
            r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.(.+)$"
        ),
        r"pixel_decoder.encoder.layers.\1.self_attn.\2",
    ),
    (
        re.compile(
            r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)$"
        ),
        r"pixel_decoder.encoder.layers.\1.norm1.\2",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc1\.(.+)$"),
        r"pixel_decoder.encoder.layers.\1.linear1.\2",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc2\.(.+)$"),
        r"pixel_decoder.encoder.layers.\1.linear2.\2",
    ),
    (
        re.compile(
            r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.(.+)$"
        ),
        r"pixel_decoder.encoder.layers.\1.norm2.\2",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.decoder\.mask_projection\.(.+)$"),
        r"pixel_decoder.mask_features.\1",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.decoder\.adapter_1\.(\d)\.(.+)$"),
        r"pixel_decoder.lateral_convs.0.\1.\2",
    ),
    (
        re.compile(r"^model\.pixel_level_module\.decoder\.layer_1\.(\d)\.(.+)$"),
        r"pixel_decoder.output_convs.0.\1.\2",
    ),
    (
        re.compile(r"^model\.transformer_module\.queries_embedder\.weight$"),
        r"transformer_decoder.query_embed.weight",
    ),
    (
        re.compile(r"^model\.transformer_module\.queries_features\.weight$"),
        r"transformer_decoder.query_feat.weight",
    ),
    (
        re.compile(r"^model\.transformer_module\.level_embed\.weight$"),
        r"transformer_decoder.level_embed.weight",
    ),
    (
        re.compile(r"^model\.transformer_module\.input_projections\.(\d)\.(.+)$"),
        r"transformer_decoder.input_proj.\1.\2",
    ),
    (
        re.compile(
            r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(.+)$"
        ),
        r"transformer_decoder.self_attn_layers.\1.attn.out_proj.\2",
    ),
    (
        re.compile(
            r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)$"
        ),
        r"transformer_decoder.self_attn_layers.\1.norm.\2",
    ),
    (
        re.compile(
            r"^model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.(in_proj_weight|in_proj_bias)$"
        ),
        r"transformer_decoder.cross_attn_layers.\1.attn.\2",
    ),
    (
        re.compile(
            r"^model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.out_proj\.(.+)$"
        ),
        r"transformer_decoder.cross_attn_layers.\1.attn.out_proj.\2",
    ),
    (
        re.compile(
            r"^model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn_layer_norm\.(.+)$"
        ),
        r"transformer_decoder.cross_attn_layers.\1.norm.\2",
    ),
    (
        re.compile(r"^model\.transformer_module\.decoder\.layers\.(\d+)\.fc1\.(.+)$"),
        r"transformer_decoder.ffn_layers.\1.linear1.\2",
    ),
    (
        re.compile(r"^model\.transformer_module\.decoder\.layers\.(\d+)\.fc2\.(.+)$"),
        r"transformer_decoder.ffn_layers.\1.linear2.\2",
    ),
    (
        re.compile(r"^model\.transformer_module\.decoder\.layers\.(\d+)\.final_layer_norm\.(.+)$"),
        r"transformer_decoder.ffn_layers.\1.norm.\2",
    ),
    (
        re.compile(r"^model\.transformer_module\.decoder\.layernorm\.(.+)$"),
        r"transformer_decoder.decoder_norm.\1",
    ),
    (
        re.compile(
            r"^model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.(.+)$"
        ),
        r"transformer_decoder.mask_embed.layers.\1.\2",
    ),
    (re.compile(r"^class_predictor\.(.+)$"), r"transformer_decoder.class_embed.\1"),
]

# split q/k/v projections that we store fused (rows q|k|v)
_FUSED = [
    (
        re.compile(
            r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)$"
        ),
        "backbone.body.layers_{0}.blocks.{1}.attn.qkv.{3}",
    ),
    (
        re.compile(
            r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$"
        ),
        "transformer_decoder.self_attn_layers.{0}.attn.in_proj_{2}",
    ),
]


def _downsample_key(key: str) -> str | None:
    """HF puts patch merging at the end of stage s; timm at the start of stage s+1."""
    m = re.match(
        r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.downsample\.(.+)$", key
    )
    if m is None:
        return None
    return f"backbone.body.layers_{int(m.group(1)) + 1}.downsample.{m.group(2)}"


def convert_hf_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and fuse) HF tensors into our key layout. Unknown keys raise a KeyError listing them."""
    ours: dict[str, torch.Tensor] = {}
    fused_parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for raw_key, tensor in hf_state.items():
        key = _modernise_key(raw_key)
        if any(p.search(key) for p in _IGNORED):
            continue
        target = _downsample_key(key)
        if target is None:
            for pattern, template in _RENAMES:
                m = pattern.match(key)
                if m:
                    if "{stage_minus_1}" in template:
                        template = template.replace("{stage_minus_1}", str(int(m.group(1)) - 1))
                    target = m.expand(template)
                    break
        if target is None:
            for pattern, template in _FUSED:
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


def hf_config_to_ours(hf_config: dict[str, Any]) -> dict[str, Any]:
    """Translate an HF `Mask2FormerConfig` (as a dict, i.e. config.json) into our model config."""
    backbone = hf_config.get("backbone_config") or {}
    if backbone.get("model_type", "swin") != "swin":
        raise ValueError(
            f"only Swin backbones are supported for HF checkpoints, got {backbone.get('model_type')}"
        )
    if backbone.get("patch_size", 4) != 4:
        raise ValueError("only Swin with patch size 4 is supported")
    id2label = hf_config.get("id2label") or {}
    num_labels = hf_config.get("num_labels") or len(id2label)
    if not num_labels:
        raise ValueError("HF config has neither num_labels nor id2label")
    heads = hf_config.get("num_attention_heads", 8)
    return {
        "num_classes": int(num_labels),
        "backbone": "swin_tiny_patch4_window7_224",
        "backbone_kwargs": {
            "embed_dim": backbone.get("embed_dim", 96),
            "depths": list(backbone.get("depths", [2, 2, 6, 2])),
            "num_heads": list(backbone.get("num_heads", [3, 6, 12, 24])),
            "window_size": backbone.get("window_size", 7),
            "mlp_ratio": backbone.get("mlp_ratio", 4.0),
            "drop_path_rate": backbone.get("drop_path_rate", 0.3),
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
