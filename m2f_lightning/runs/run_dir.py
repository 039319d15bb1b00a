"""The output folder of a command, checked before anything is written to it: a read-only or
impossible folder is one `error:` line naming it, not Hydra's or W&B's traceback."""

import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..errors import OutputFolderError, UserError


def check_writable_folder(folder: Path, what: str) -> None:
    """Raise `OutputFolderError` when files cannot be written to `folder` (made later if it does
    not exist yet: its nearest existing parent is tried instead). Makes nothing that stays."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(0, "a file is in the way", str(existing))
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write_test_")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        if existing != folder:
            reason = f"it cannot be made in {existing} ({reason})"
        raise OutputFolderError(
            f"cannot write {what} to {folder}: {reason}. Make it writable, or choose "
            "another output folder: hydra.run.dir=..."
        ) from None


class CheckRunDir(Callback):
    """A Hydra callback: before Hydra makes the run's folder (and fails there with its own
    traceback) or writes its files there (over those of a run still training in it), check the
    folder can be written and is not held by a live run (`run_lock`). Commands whose Hydra files
    are off (`m2f-doctor`, `hydra.output_subdir: null`) write no folder and are not checked."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.get("output_subdir") is None:
            return
        from .run_lock import RunLock

        run_dir = Path(str(config.hydra.run.dir))
        try:
            check_writable_folder(run_dir, "the run's outputs")
            RunLock(run_dir).check()
        except UserError as err:
            from .run_log import print_error

            print_error(str(err))
            raise SystemExit(1) from None
