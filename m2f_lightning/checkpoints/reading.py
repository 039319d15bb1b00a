"""Reading torch checkpoint files with errors a user can act on: the file named, a truncated or
foreign file said to be one, and a refused pickle never answered with "use weights_only=False"."""

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, MissingCheckpointError, RefusedPickleError


def _reason(err: BaseException) -> str:
    """The line of torch's weights-only error that says what was refused."""
    text = str(err)
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
    return text.splitlines()[0] if text else type(err).__name__


def load_torch_file(path: str | Path, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain containers only.

    Raises `MissingCheckpointError`, `RefusedPickleError` (the file holds other Python objects,
    which could run code when loaded) or `CheckpointError` (truncated, or not a torch file).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"no checkpoint at {path}")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if mmap and "mmap" in str(err):  # the legacy (non-zip) format cannot be mapped
                return torch.load(path, map_location="cpu", weights_only=True)
            raise
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(
                f"cannot read checkpoint {path}: {_reason(err)} (truncated or not a PyTorch "
                "file?); re-download or re-save it"
            ) from None
        raise RefusedPickleError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain "
            f"containers ({_reason(err)}), and loading them could run arbitrary code. Use weights "
            "saved by this project (m2f_lightning.checkpoints.save_model), an HF directory with "
            "model.safetensors, or re-save the state_dict alone where you trust the file"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or not a PyTorch checkpoint "
            f"({_reason(err)}); re-download or re-save it"
        ) from None


def warn_if_newer_lightning(ckpt: Any, path: str | Path) -> None:
    """Warn when `path` was written by a newer Lightning than the one installed: Lightning
    migrates older checkpoints forward, but cannot know what a newer one changed."""
    if not isinstance(ckpt, dict) or "pytorch-lightning_version" not in ckpt:
        return
    import warnings

    import lightning
    from packaging.version import InvalidVersion, Version

    written = str(ckpt["pytorch-lightning_version"])
    try:
        newer = Version(written) > Version(lightning.__version__)
    except InvalidVersion:
        newer = True  # a version we cannot read: say so rather than trust it
    if newer:
        warnings.warn(
            f"{path} was written by Lightning {written}, newer than the installed "
            f"{lightning.__version__}: it may hold state this version misreads; upgrade "
            "Lightning (pip install -U lightning) if resuming or loading it fails or looks wrong",
            UserWarning,
            stacklevel=2,
        )
