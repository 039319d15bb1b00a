"""A SIGUSR1 that reaches a SLURM job's rank while it is still starting (SLURM's time-limit
warning comes at slurmctld's next check, up to a minute early): kept for the command, which stops
at its first batch boundary, instead of killing the rank before it has said anything."""

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what a job's process does: import the commands' package (unpickling submitit's job does), get
# the signal while it still imports, then install the training's pre-emption handler
_CHILD = """
import os, signal, sys
import m2f_lightning.cli
os.kill(os.getpid(), signal.SIGUSR1)
from m2f_lightning.runs.preemption import SlurmPreemption
stop = SlurmPreemption(sys.argv[1])
stop.install()
print("recorded:", stop._signal_name, flush=True)
stop.uninstall()
os.kill(os.getpid(), signal.SIGUSR1)  # after the command: held again, not fatal
print("alive", flush=True)
"""


def _child(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        cwd=ROOT,
        env={**environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_sigusr1_before_the_command_starts_is_kept_for_it_in_a_slurm_job(tmp_path: Path) -> None:
    done = _child(tmp_path, SLURM_JOB_ID="123")
    assert done.returncode == 0, f"the rank died ({done.returncode}): {done.stderr[-2000:]}"
    assert done.stdout.splitlines() == ["recorded: SIGUSR1", "alive"]


def test_outside_slurm_sigusr1_keeps_its_default_action(tmp_path: Path) -> None:
    """Only a SLURM job's process holds the signal: elsewhere `kill -USR1` before the command
    has its handler still ends the process, as Python's default does."""
    done = _child(tmp_path)
    assert done.returncode == -signal.SIGUSR1, (done.returncode, done.stdout, done.stderr[-2000:])
