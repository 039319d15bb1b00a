"""detectron2's file format for weights: a pickle of numpy arrays (model-zoo `.pkl` and the
ImageNet-pretrained `R-50.pkl` / `R-101.pkl`), read without running code, and its ResNet names.

Here in `modeling` (not `checkpoints`) because backbone weights load while the model is built.
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
    ("numpy.core.numeric", "_frombuffer"),  # arrays under pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as pickles of protocol <= 2 written by Python 3 use it: to rebuild a
    bytes object (the data of each numpy array) from its latin-1 text. No other encoding."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
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


def rename_resnet(key: str) -> str | None:
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
