"""Convert a detectron2 model-zoo `.pkl` of the original Mask2Former into our key layout.

The file is a pickle; we read it with an unpickler that only rebuilds plain containers and numpy
arrays, so a malicious file cannot run code.
"""

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import RefusedPickleError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: a model-zoo .pkl may only hold dicts, lists, "
            "strings, numbers and numpy arrays"
        )


def read_d2_pickle(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the `model` dict of a detectron2 checkpoint `.pkl` as torch tensors."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            data = _RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise RefusedPickleError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict in the .pkl, got {type(data).__name__}")
    weights = data.get("model", data)
    tensors = {}
    for key, value in weights.items():
        if not isinstance(value, np.ndarray):
            continue
        key = key.removeprefix("module.")
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
    return tensors


_D2_RENAMES: list[tuple[str, str]] = [
    # pixel decoder
    (r"^sem_seg_head\.pixel_decoder\.input_proj\.", "pixel_decoder.input_proj."),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.level_embed$", "pixel_decoder.level_embed"),
    (
        r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.",
        "pixel_decoder.encoder.layers.",
    ),
    (r"^sem_seg_head\.pixel_decoder\.mask_features\.", "pixel_decoder.mask_features."),
    (r"^sem_seg_head\.pixel_decoder\.adapter_1\.norm\.", "pixel_decoder.lateral_convs.0.1."),
    (r"^sem_seg_head\.pixel_decoder\.adapter_1\.weight$", "pixel_decoder.lateral_convs.0.0.weight"),
    (r"^sem_seg_head\.pixel_decoder\.layer_1\.norm\.", "pixel_decoder.output_convs.0.1."),
    (r"^sem_seg_head\.pixel_decoder\.layer_1\.weight$", "pixel_decoder.output_convs.0.0.weight"),
    # transformer decoder
    (
        r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.",
        r"transformer_decoder.self_attn_layers.\1.attn.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.",
        r"transformer_decoder.self_attn_layers.\1.norm.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.",
        r"transformer_decoder.cross_attn_layers.\1.attn.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.",
        r"transformer_decoder.cross_attn_layers.\1.norm.",
    ),
    (r"^sem_seg_head\.predictor\.transformer_ffn_layers\.", "transformer_decoder.ffn_layers."),
    (r"^sem_seg_head\.predictor\.", "transformer_decoder."),
    # swin backbone (original naming → timm features_only naming)
    (r"^backbone\.norm(\d)\.", r"backbone.out_norms.\1."),
    (r"^backbone\.patch_embed\.", "backbone.body.patch_embed."),
]


def _rename_resnet(key: str) -> str | None:
    m = re.match(r"^backbone\.res(\d)\.(\d+)\.(conv(\d)|shortcut)(\.norm)?\.(.+)$", key)
    if m is None:
        if key.startswith("backbone.stem.conv1.norm."):
            return "backbone.body.bn1." + key.rsplit(".", 1)[1]
        if key == "backbone.stem.conv1.weight":
            return "backbone.body.conv1.weight"
        return None
    stage, block, part, conv_idx, norm, leaf = m.groups()
    prefix = f"backbone.body.layer{int(stage) - 1}.{block}."
    if part == "shortcut":
        return prefix + ("downsample.1." if norm else "downsample.0.") + leaf
    return prefix + (f"bn{conv_idx}." if norm else f"conv{conv_idx}.") + leaf


def _rename_swin_layers(key: str, tensor: torch.Tensor, out: dict[str, torch.Tensor]) -> bool:
    m = re.match(r"^backbone\.layers\.(\d+)\.(blocks\.\d+\..+|downsample\..+)$", key)
    if m is None:
        return False
    stage, rest = int(m.group(1)), m.group(2)
    if rest.startswith("downsample."):
        out[f"backbone.body.layers_{stage + 1}.{rest}"] = tensor
    elif not rest.endswith("relative_position_index") and not rest.endswith("attn_mask"):
        out[f"backbone.body.layers_{stage}.{rest}"] = tensor
    return True


def convert_d2_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original Mask2Former keys into ours. Unknown keys raise a KeyError listing them."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in weights.items():
        if key in ("criterion.empty_weight", "pixel_mean", "pixel_std"):
            continue
        if _rename_swin_layers(key, tensor, out):
            continue
        renamed = _rename_resnet(key)
        if renamed is None:
            for pattern, replacement in _D2_RENAMES:
                if re.search(pattern, key):
                    renamed = re.sub(pattern, replacement, key)
                    break
        if renamed is None:
            unknown.append(key)
        else:
            out[renamed] = tensor
    if unknown:
        raise KeyError(f"model-zoo checkpoint has {len(unknown)} unknown key(s): {unknown[:20]}")
    return out
