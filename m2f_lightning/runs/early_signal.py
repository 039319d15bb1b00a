"""SIGUSR1 that reaches a SLURM job's process before its command has started.

SLURM's time-limit warning (`--signal=USR1@N`) comes at a time of slurmctld's choosing (it checks
every 30 s, so up to a minute early), possibly while a rank is still importing torch or composing
its config. Python's default action for SIGUSR1 ends the process, and the rank would die without
a word. `hold()` (called where the commands are imported, before the heavy imports) records such
a signal instead; the command's `SlurmPreemption` / `StopAtNextBatch` takes it over when it
installs its own handler (`take()`) and acts on it at the first batch boundary. Stdlib only, so
that it costs nothing to import this early.
"""

import os
import signal
from types import FrameType

_pending: int | None = None
_holder_pid: int | None = None


def _record(signum: int, frame: FrameType | None) -> None:
    global _pending
    if os.getpid() == _holder_pid and _pending is None:
        _pending = signum


def hold() -> None:
    """In a SLURM job (`SLURM_JOB_ID` set), record SIGUSR1 from now on instead of dying of it;
    a handler someone else installed is left alone."""
    global _holder_pid
    if "SLURM_JOB_ID" not in os.environ or _holder_pid == os.getpid():
        return
    if signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL:
        signal.signal(signal.SIGUSR1, _record)
        _holder_pid = os.getpid()


def take() -> int | None:
    """The signal recorded since `hold()` (None if none), forgotten once taken."""
    global _pending
    signum, _pending = _pending, None
    return signum
