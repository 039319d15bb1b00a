"""Plain-text progress for logs that are not a terminal, and Rich's live bars for a terminal."""

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only

from ..runs.run_log import log_only

HEADLINE_METRICS = ("PQ", "PQ_th", "PQ_st", "AP", "AP50", "mIoU")


class TextProgress(L.Callback):
    """One plain line every `every_n_steps` optimiser steps (step, loss, lr, speed, ETA), one
    after each validation, and one every `every_n_steps` batches of an evaluation or a prediction
    (and at its last): the progress report for logs that are not a terminal (SLURM, CI,
    `make demo | tee`), where Rich's live bars print nothing useful. `console=False` (a terminal
    run, whose console shows the live bars) writes the lines to the command's log file only."""

    def __init__(self, every_n_steps: int = 50, console: bool = True) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.console = console
        self._start: float | None = None
        self._start_step = 0
        self._eval_start: float | None = None

    def _emit(self, line: str) -> None:
        if self.console:
            print(line, flush=True)
        else:
            log_only(line)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._start_step = trainer.global_step
        if trainer.global_step > 0 and trainer.is_global_zero:
            self._emit(f"resumed at step {trainer.global_step}")

    @rank_zero_only
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or self._start is None:
            return
        done = step - self._start_step
        seconds_per_step = (time.perf_counter() - self._start) / max(done, 1)
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        line = f"step {step}" + (f"/{max_steps}" if max_steps else "")
        line += f"  loss {float(loss):.3f}  lr {lr:.2e}  {seconds_per_step:.2f} s/step"
        if max_steps:
            line += f"  eta {(max_steps - step) * seconds_per_step / 60:.1f} min"
        self._emit(line)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {
            k.split("/", 1)[1]: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and v.numel() == 1
        }
        if values:
            headline = [k for k in HEADLINE_METRICS if k in values] or list(values)[:8]
            shown = "  ".join(f"{k} {values[k]:.1f}" for k in headline)
            self._emit(f"validation at step {trainer.global_step}: {shown}")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start = time.perf_counter()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start = time.perf_counter()

    @rank_zero_only
    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._batch_line("test", trainer.test_loop.batch_progress.current.processed, trainer)

    @rank_zero_only
    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._batch_line("predict", trainer.predict_loop.batch_progress.current.processed, trainer)

    def _batch_line(self, phase: str, done: int, trainer: L.Trainer) -> None:
        batches = trainer.num_test_batches if phase == "test" else trainer.num_predict_batches
        total = sum(batches) if all(b != float("inf") for b in batches) else None
        if done % self.every_n_steps and done != total:
            return
        seconds = (time.perf_counter() - (self._eval_start or time.perf_counter())) / max(done, 1)
        line = f"{phase} batch {done}" + (f"/{int(total)}" if total else "")
        line += f"  {seconds:.2f} s/batch"
        if total:
            line += f"  eta {(total - done) * seconds / 60:.1f} min"
        self._emit(line)


class StepProgressBar(RichProgressBar):
    """Rich's live bars for a terminal, the training bar labelled `step N/max_steps` (the schedule
    is counted in steps; Rich's own `Epoch 0/-2` means nothing with `max_epochs=-1`)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        return f"step {trainer.global_step}" + (f"/{max_steps}" if max_steps else "")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(
                self.train_progress_bar_id, description=self._get_train_description(0)
            )
