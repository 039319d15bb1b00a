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

Evaluate and predict take the same signals (`StopAtNextBatch`): they stop after the batch in
progress, say what they wrote, requeue on SIGUSR1 and exit with code 75 (`EXIT_INTERRUPTED`).
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L

from . import early_signal

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


EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: stopped before the end, run it again


class Interrupted(SystemExit):
    """Raised by `StopAtNextBatch` when evaluate or predict is stopped by a signal: the process
    exits with `EXIT_INTERRUPTED` (75) after the command has said what it did and left undone."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_INTERRUPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _SignalStop(L.Callback):
    """Records SIGUSR1/SIGTERM in a handler (a flag only: data loader workers inherit the handler
    and a handler may run anywhere) so that a callback hook acts on it at a batch boundary. Call
    `install()` as early as possible (SLURM may signal while the job is still starting; a SIGUSR1
    from before, held by `early_signal`, is taken over) and `uninstall()` when the command is
    done (the handler from before comes back: in a SLURM job, `early_signal`'s recorder, so a late
    warning cannot kill the process while it writes its results)."""

    REQUEUE_ON = (signal.SIGUSR1,)

    def __init__(self, signums: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)) -> None:
        self.signums = tuple(signums)
        self._signalled: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid: int | None = None

    def install(self) -> None:
        self._previous = {s: signal.signal(s, self._record) for s in self.signums}
        self._pid = os.getpid()
        early = early_signal.take()  # a SIGUSR1 that came while the process was starting
        if early in self.signums and self._signalled is None:
            self._signalled = early

    def uninstall(self) -> None:
        if self._pid == os.getpid():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous or signal.SIG_DFL)
            self._pid = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() == self._pid and self._signalled is None:
            self._signalled = signum

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether any rank got the signal; every rank takes part, so all stop at one batch."""
        return bool(
            trainer.strategy.reduce_boolean_decision(self._signalled is not None, all=False)
        )

    @property
    def _signal_name(self) -> str:
        return signal.Signals(self._signalled).name if self._signalled else "a signal"

    def _requeue_if_asked(self, trainer: L.Trainer) -> None:
        """SIGUSR1 (or another rank's signal) requeues the SLURM job, from rank 0; SIGTERM does not
        (`scancel`, or SLURM's own pre-emption, which requeues by itself)."""
        if trainer.is_global_zero and (
            self._signalled in self.REQUEUE_ON or self._signalled is None
        ):
            self._requeue()

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


class StopAtNextBatch(_SignalStop):
    """Evaluate and predict: on SIGUSR1/SIGTERM stop after the batch in progress (its results are
    written first: this callback comes after the writers), requeue the SLURM job on SIGUSR1, and
    leave with `Interrupted` (exit code 75). The command catches it to say what was written."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def on_test_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._stop_if_signalled(trainer, trainer.num_test_batches)

    def on_predict_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._stop_if_signalled(trainer, trainer.num_predict_batches)

    def _stop_if_signalled(self, trainer: L.Trainer, num_batches: list[int | float]) -> None:
        if not self._agreed(trainer):
            return
        loop = trainer.predict_loop if trainer.predicting else trainer.test_loop
        done, total = loop.batch_progress.current.processed, int(sum(num_batches))
        message = (
            f"{self.command} interrupted ({self._signal_name}) after {done} of {total} batches"
        )
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)
        self._requeue_if_asked(trainer)
        trainer.strategy.barrier("stop_at_next_batch")
        raise Interrupted(message)


class SlurmPreemption(_SignalStop):
    """Save `<output_dir>/preempted.ckpt` and requeue the job when SLURM sends SIGUSR1; save and
    stop (no requeue) on SIGTERM.

    The signal is acted on at the next batch boundary of training, validation or the test that
    follows training, so no phase of a run dies on the signal's default action. SIGUSR1 is the
    pre-emption warning (`--signal=USR1@120`): the job is requeued. SIGTERM is what `scancel` and
    SLURM's own pre-emption send (SLURM requeues a pre-empted job itself; a cancelled one must not
    come back), so it only saves and stops. The last training step's logged metrics are handed to
    the loggers before the exit (Lightning logs them only after the hook that stops the run), and a
    checkpoint taken during validation resumes into that validation from its start (Lightning
    would skip it: its metrics were never logged).
    """

    def __init__(
        self, output_dir: Path, signums: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)
    ) -> None:
        super().__init__(signums)
        self.path = Path(output_dir) / PREEMPTED_CHECKPOINT
        self._saving_in: str | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._stop_if_signalled(trainer, "training")

    def on_validation_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        # a signal during the sanity check waits for the first training step: a checkpoint
        # taken in it resumed with every logged step one later than the step it trained
        if not trainer.sanity_checking:
            self._stop_if_signalled(trainer, "validation")

    def on_test_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._stop_if_signalled(trainer, "the test after training")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving_in == "validation" and not trainer.sanity_checking:
            redo_validation_on_resume(checkpoint)

    def _stop_if_signalled(self, trainer: L.Trainer, phase: str) -> None:
        if not self._agreed(trainer):
            return
        if trainer.world_size > 1:  # each rank's own log says whether the signal reached it
            heard = f"got {self._signal_name}" if self._signalled else "signal seen by another rank"
            print(
                f"rank {trainer.global_rank} on {socket.gethostname()}: stopping at step "
                f"{trainer.global_step} ({heard})",
                flush=True,
            )
        if phase == "training":
            log_last_step(trainer)
        partial = self.path.with_name(self.path.name + ".partial")
        self._saving_in = phase
        try:
            trainer.save_checkpoint(partial)  # collective; rank 0 writes
        finally:
            self._saving_in = None
        if trainer.is_global_zero:
            os.replace(partial, self.path)  # never a truncated file under the resumed name
            print(
                f"pre-empted ({self._signal_name} during {phase}): saved {self.path} at step "
                f"{trainer.global_step}",
                flush=True,
            )
        self._requeue_if_asked(trainer)
        trainer.strategy.barrier("slurm_preemption")
        # leave now: `should_stop` would still run a validation first, minutes on COCO
        raise Preempted(
            f"pre-empted at step {trainer.global_step} during {phase}: {self.path} (the requeued "
            f"job, or a rerun with the same output dir and resume=auto, continues from it)"
        )


def log_last_step(trainer: L.Trainer) -> None:
    """Hand this step's logged metrics to the loggers now: Lightning does it after
    `on_train_batch_end` (and only every `log_every_n_steps`), which a pre-emption never reaches;
    the loggers are flushed by Lightning's `finalize` on the way out."""
    connector = trainer._logger_connector
    if trainer.fit_loop._should_accumulate() or not trainer.loggers:
        return
    connector.log_metrics(connector.metrics["log"])


# Lightning's fit-loop state of the validation loop inside the training epoch
_VAL_PROGRESS = "epoch_loop.val_loop.batch_progress"


def redo_validation_on_resume(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint saved at a validation batch read as "the validation loop started its first
    batch and did not finish it": Lightning resumes such a checkpoint into that validation and runs
    it from the start. As saved (batches completed), Lightning fast-forwards past the validation
    and its metrics are never computed nor logged."""
    progress = checkpoint["loops"]["fit_loop"][_VAL_PROGRESS]
    current, total = progress["current"], progress["total"]
    before = total["completed"] - current["completed"]  # batches of earlier validations
    progress["current"] = {**current, "ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["total"] = {
        **total,
        "ready": before + 1,
        "started": before + 1,
        "processed": before,
        "completed": before,
    }
