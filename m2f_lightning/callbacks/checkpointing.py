"""Periodic checkpoints that are known to be on disk."""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from ..errors import CheckpointError


class CheckedModelCheckpoint(ModelCheckpoint):
    """Stops the run, naming the path, when a checkpoint it saved is not on disk (Lightning 2.6's
    atomic save swallows PermissionError: Lightning-AI/pytorch-lightning#21800). A module-level
    class: ddp_spawn pickles the callbacks."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and not Path(filepath).is_file():
            raise CheckpointError(
                f"checkpoint {filepath} was not written (is {Path(filepath).parent} "
                "writable, is the disk full?); stopping rather than training on without one"
            )
