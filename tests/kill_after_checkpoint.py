"""Test driver: `python -m tests.kill_after_checkpoint STEP <train overrides>` runs `train.py`'s
entry point and SIGKILLs itself right after the checkpoint of step STEP is on disk (before step
STEP + 1 trains): a crash with no chance to clean up, as an OOM-kill or a lost node."""

import os
import signal
import sys
from pathlib import Path

import lightning as L

from m2f_lightning.cli import commands
from m2f_lightning.cli import main as cli


class KillAfterCheckpoint(L.Callback):
    def __init__(self, step: int, checkpoint_dir: Path) -> None:
        self.step = step
        self.checkpoint_dir = checkpoint_dir

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            saved = self.checkpoint_dir / f"step{self.step:07d}.ckpt"
            if not saved.is_file():
                raise RuntimeError(f"no checkpoint {saved} to resume from")
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    step = int(sys.argv.pop(1))
    build_callbacks = commands.build_callbacks

    def with_killer(cfg, output_dir, dm):
        return [
            *build_callbacks(cfg, output_dir, dm),
            KillAfterCheckpoint(step, output_dir / "checkpoints"),
        ]

    commands.build_callbacks = with_killer
    cli.train_main()
