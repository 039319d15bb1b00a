"""One training run per output folder: `<output_dir>/run.lock` names the run that holds it (host,
PID, SLURM job), so a second run started in the same folder stops with an error naming the first
instead of resuming from the first's live checkpoints and overwriting them.

A lock whose run is gone is taken over with a warning: the same host and a PID that no longer runs
(or runs another program, told by its start time), or the same SLURM job (a requeued job is the
same job, on the same or another node, and SLURM ends the old instance before it requeues). A lock
held from another host cannot be checked from here: the error says how to remove it.
"""

import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import UserError
from .preemption import slurm_job_id

LOCK_NAME = "run.lock"


class RunFolderLocked(UserError, RuntimeError):
    """Another run (named in the message) is training in this output folder."""


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None elsewhere: tells a
    PID reused by another process from the one that wrote the lock."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """`check()` before reading the folder, `acquire()` once the run's checks pass, `release()`
    when it ends (however it ends). Global rank 0 only: the other ranks belong to its run."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self.held = False

    def _mine(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "slurm_job": slurm_job_id(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or half written: treated as held from elsewhere
        return holder if isinstance(holder, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> str | None:
        """Why the run named in `holder` is gone, or None when it may still run."""
        job, pid = holder.get("slurm_job"), holder.get("pid")
        here = holder.get("host") == socket.gethostname() and isinstance(pid, int)
        gone = None
        if here and not _runs(pid):
            gone = f"process {pid} on this host, which no longer runs"
        elif here and holder.get("process_start") not in (None, _process_start(pid)):
            gone = f"process {pid} on this host, whose PID another process has taken since"
        if job is not None and job == slurm_job_id() and (gone or not here):
            return f"an earlier instance of this SLURM job ({job}, requeued)"
        return gone

    def _refuse(self, holder: dict[str, Any]) -> None:
        who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        if holder.get("slurm_job"):
            who += f" (SLURM job {holder['slurm_job']})"
        since = f", started {holder['started']}" if holder.get("started") else ""
        remote = holder.get("host") != socket.gethostname()
        hint = (
            f"If that run has ended (it cannot be checked from this host), delete {self.path} "
            "and start again"
            if remote
            else "Wait for it to end or stop it"
        )
        raise RunFolderLocked(
            f"another run is training in {self.path.parent}: {who}{since} holds {self.path}. "
            f"{hint}, or give this run another output folder (hydra.run.dir=...)"
        )

    def check(self) -> None:
        """Raise `RunFolderLocked` if a live run holds the folder (changes nothing)."""
        if self._rank_zero():
            holder = self._holder()
            if holder is not None and self._stale(holder) is None and not self._is_me(holder):
                self._refuse(holder)

    def acquire(self) -> None:
        """Take the lock (the folder is made if needed), taking over a stale one with a warning."""
        if not self._rank_zero() or self.held:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self._mine()
        try:
            with open(self.path, "x") as f:  # exclusive create: of two runs, one wins
                json.dump(mine, f)
        except FileExistsError:
            holder = self._holder() or {}
            why = self._stale(holder)
            if why is None and not self._is_me(holder):
                self._refuse(holder)
            if why is not None:
                warnings.warn(
                    f"{self.path} was left by {why}: taken over by this run", stacklevel=2
                )
            temp = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}")
            temp.write_text(json.dumps(mine))
            os.replace(temp, self.path)
            if not self._is_me(self._holder() or {}):  # another run took it over at once
                self._refuse(self._holder() or {})
        self.held = True

    def release(self) -> None:
        """Remove the lock if this run holds it."""
        if self.held and self._is_me(self._holder() or {}):
            self.path.unlink(missing_ok=True)
        self.held = False

    @staticmethod
    def _is_me(holder: dict[str, Any]) -> bool:
        return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()

    @staticmethod
    def _rank_zero() -> bool:
        from lightning.pytorch.utilities import rank_zero_only

        return rank_zero_only.rank == 0
