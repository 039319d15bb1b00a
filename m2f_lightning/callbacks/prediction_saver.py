"""Writes each result of `predict` or `test` as soon as its batch is done (`PredictionWriter`),
each image exactly once across ranks, and the merged JSON lists on rank 0 at the end (or, for a
predict stopped by a signal, `Interrupted`, the lists of what was done)."""

from typing import Any

import lightning as L
import torch.distributed as dist

from ..outputs.prediction_writer import PredictionWriter
from ..runs.preemption import Interrupted
from ..types import Batch, SegmentationResult


class PredictionSaver(L.Callback):
    """Hands every scored result to `writer`; collects the inputs that could not be read.

    Under DDP each rank writes the per-image files of the images it scores (a padding duplicate,
    `Batch.scored` False, is skipped) and rank 0 gathers every rank's JSON entries before
    writing the lists, so each image is written once and the lists are complete."""

    def __init__(self, writer: PredictionWriter) -> None:
        self.writer = writer
        self.unreadable: list[tuple[str, str]] = []
        self.files: list = []

    def _take(self, outputs: Any, batch: Batch) -> None:
        self.unreadable += batch.unreadable
        results: list[SegmentationResult] = outputs or []
        keep = batch.scored or [True] * len(results)
        for result, scored in zip(results, keep, strict=True):
            if scored:
                self.writer.write(result)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._take(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._take(outputs, batch)

    def _finish(self, trainer: L.Trainer, complete: bool = True) -> None:
        state = {**self.writer.state(), "unreadable": self.unreadable}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
        else:
            states = [state]
        self.unreadable = [u for s in states for u in s["unreadable"]]
        if trainer.is_global_zero:
            self.writer.merge(states)
            self.files = self.writer.finish(complete)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # a resumable predict (`PredictionWriter.settings`) lists what it did before it stops
        if isinstance(exception, Interrupted) and self.writer.settings is not None:
            self._finish(trainer, complete=False)
