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
    """Save `<output_dir>/preempted.ckpt` and requeue the job when SLURM sends SIGUSR1; save and
    stop (no requeue) on SIGTERM.

    The signal is acted on at the next batch boundary of training, validation or the test that
    follows training, so no phase of a run dies on the signal's default action. SIGUSR1 is the
    pre-emption warning (`--signal=USR1@120`): the job is requeued. SIGTERM is what `scancel` and
    SLURM's own pre-emption send (SLURM requeues a pre-empted job itself; a cancelled one must not
    come back), so it only saves and stops. Call `install()` as early as possible (SLURM may
    signal while the job is still starting) and `uninstall()` when the command is done.
    """

    REQUEUE_ON = (signal.SIGUSR1,)

    def __init__(
        self, output_dir: Path, signums: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)
    ) -> None:
        self.path = Path(output_dir) / PREEMPTED_CHECKPOINT
        self.signums = tuple(signums)
        self._signalled: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid: int | None = None

    def install(self) -> None:
        self._previous = {s: signal.signal(s, self._record) for s in self.signums}
        self._pid = os.getpid()

    def uninstall(self) -> None:
        if self._pid == os.getpid():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous or signal.SIG_DFL)
            self._pid = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # only a flag: data loader workers inherit the handler and a handler may run anywhere
        if os.getpid() == self._pid and self._signalled is None:
            self._signalled = signum

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._stop_if_signalled(trainer, "training")

    def on_validation_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._stop_if_signalled(trainer, "validation")

    def on_test_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._stop_if_signalled(trainer, "the test after training")

    def _stop_if_signalled(self, trainer: L.Trainer, phase: str) -> None:
        # every rank takes part, so all save at the same step even when only some got the signal
        if not trainer.strategy.reduce_boolean_decision(self._signalled is not None, all=False):
            return
        requeue = self._signalled in self.REQUEUE_ON or self._signalled is None  # another rank's
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial)  # collective; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)  # never a truncated file under the resumed name
            name = signal.Signals(self._signalled).name if self._signalled else "a signal"
            print(
                f"pre-empted ({name} during {phase}): saved {self.path} at step "
                f"{trainer.global_step}",
                flush=True,
            )
            if requeue:
                self._requeue()
        trainer.strategy.barrier("slurm_preemption")
        # leave now: `should_stop` would still run a validation first, minutes on COCO
        raise Preempted(
            f"pre-empted at step {trainer.global_step} during {phase}: {self.path} (the requeued "
            f"job, or a rerun with the same output dir and resume=auto, continues from it)"
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
