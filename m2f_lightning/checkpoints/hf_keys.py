"""The key map from a Hugging Face Mask2Former state dict to ours, as data: legacy hub spellings
modernised, renames, the q/k/v projections we store fused, Swin's patch merging moved a stage.
"""

import re

# keys of the HF checkpoint that carry nothing for inference
IGNORED = (
    re.compile(r"^criterion\.empty_weight$"),
    re.compile(r"\.relative_position_index$"),
    re.compile(r"^model\.pixel_level_module\.encoder\.(swin\.)?layernorm\.(weight|bias)$"),
)


_BACKBONE = "model.pixel_level_module.encoder."


_PIXEL = "model.pixel_level_module.decoder."


_TRANSFORMER = "model.transformer_module."


_QKV_LEGACY = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def modernise_key(key: str) -> str:
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
RENAMES: list[tuple[re.Pattern[str], str]] = [
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
FUSED = [
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


def downsample_key(key: str) -> str | None:
    """HF puts patch merging at the end of stage s; timm at the start of stage s+1."""
    m = re.match(
        r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.downsample\.(.+)$", key
    )
    if m is None:
        return None
    return f"backbone.body.layers_{int(m.group(1)) + 1}.downsample.{m.group(2)}"
