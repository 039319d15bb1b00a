"""Checkpoints that are either whole on disk or not there: written atomically in their own folder,
and known to be on disk before training goes on."""

import errno
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from ..errors import CheckpointError


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that `path` is either the old file or the whole new one, never a truncated
    one: `write` fills a temporary file in the same folder (same file system, so the rename is
    atomic), which is flushed, fsync'ed and renamed over `path`. On any failure (a full disk) the
    temporary file is removed and a `CheckpointError` names `path` and the reason."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        _fsync_folder(path.parent)  # the rename itself survives a crash
    except OSError as err:
        temp.unlink(missing_ok=True)
        reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else err.strerror
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason or err}. Nothing was left under its "
            f"name; the earlier checkpoints in {path.parent} are untouched (resume=auto "
            "continues from the newest). Free space or choose another output folder "
            "(hydra.run.dir=...)"
        ) from None
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some network file systems): skip
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, saving local files with `write_atomically`. Lightning's
    own save writes a temporary file in the system's temp folder and moves it: across file
    systems the move is a copy, and a full disk leaves a truncated checkpoint under its final
    name; it also swallows a PermissionError (Lightning-AI/pytorch-lightning#21800). Remote paths
    (`s3://...`) keep Lightning's save."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        # serialised in memory first (as Lightning does): torch.save into a file that fails
        # midway hides the OSError behind its own RuntimeError ("unexpected pos")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, lambda f: f.write(buffer.getbuffer()))


class CheckedModelCheckpoint(ModelCheckpoint):
    """Stops the run, naming the path, when a checkpoint it saved is not on disk (a checkpoint
    plugin that fails silently). A checkpoint name in the folder is always this run's: an
    existing file of that name (a truncated one, an earlier run's) is replaced, never kept beside a
    `-v1` copy that `resume=auto` would not pick. A module-level class: ddp_spawn pickles the
    callbacks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and not Path(filepath).is_file():
            raise CheckpointError(
                f"checkpoint {filepath} was not written (is {Path(filepath).parent} "
                "writable, is the disk full?); stopping rather than training on without one"
            )
