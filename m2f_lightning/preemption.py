"""SLURM pre-emption: checkpoint at a step boundary, requeue, resume where the job stopped.

SLURM announces the end of a job (time limit or pre-emption) with a signal, SIGUSR1 here
(`--signal=USR1@120` in the launcher config). Lightning's own auto-requeue saves the checkpoint
inside the signal handler, i.e. anywhere in the middle of a training step (an optimiser update
half applied, DDP ranks in different collectives: Lightning-AI/pytorch-lightning#21406; here a
resumed run validated one step off its schedule). This callback only records the signal in the
handler; at the next step boundary the ranks agree (one all-reduce of a flag per step), save
`<output_dir>/preempted.ckpt` together, rank 0 runs `scontrol requeue`, and the process exits
(`Preempted`). The requeued job resumes from that file (`resume: auto`). Outside SLURM the same
signal (`kill -USR1 <pid>`) saves and stops a run without requeueing it.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L

PREEMPTED_CHECKPOINT = "preempted.ckpt"


class Preempted(SystemExit):
    """Raised after the checkpoint is saved and the job requeued: leaves the process without a
    result, so the launcher (submitit) keeps waiting for the requeued run instead of taking this one
    as finished."""


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for job arrays (Hydra sweeps)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmPreemption(L.Callback):
    """Save `<output_dir>/preempted.ckpt` and requeue the job when SLURM sends `signum`.

    Call `install()` as early as possible (SLURM may signal while the job is still starting) and
    `uninstall()` when done.
    """

    def __init__(self, output_dir: Path, signum: int = signal.SIGUSR1) -> None:
        self.path = Path(output_dir) / PREEMPTED_CHECKPOINT
        self.signum = signum
        self._signalled = False
        self._previous: Any = None
        self._pid: int | None = None

    def install(self) -> None:
        self._previous = signal.signal(self.signum, self._record)
        self._pid = os.getpid()

    def uninstall(self) -> None:
        if self._pid == os.getpid():
            signal.signal(self.signum, self._previous or signal.SIG_DFL)
            self._pid = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # only a flag: data loader workers inherit the handler and a handler may run anywhere
        if os.getpid() == self._pid:
            self._signalled = True

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        # every rank takes part, so all save at the same step even when only some got the signal
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial)  # collective; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)  # never a truncated file under the resumed name
            print(f"pre-empted: saved {self.path} at step {trainer.global_step}", flush=True)
            self._requeue()
        trainer.strategy.barrier("slurm_preemption")
        # leave now: `should_stop` would still run a validation first, minutes on COCO
        raise Preempted(
            f"pre-empted at step {trainer.global_step}: {self.path} (the requeued job, or a rerun "
            f"with the same output dir and resume=auto, continues from it)"
        )

    @staticmethod
    def _requeue() -> None:
        job_id = slurm_job_id()
        if job_id is None:
            print("pre-empted outside a SLURM job: not requeued", file=sys.stderr, flush=True)
            return
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if done.returncode == 0:
            print(f"requeued SLURM job {job_id}", flush=True)
        else:
            print(
                f"scontrol requeue {job_id} failed ({done.returncode}): {done.stderr.strip()}; "
                f"resume by hand with resume=auto and the same output dir",
                file=sys.stderr,
                flush=True,
            )
