"""`m2f-evaluate report=true`: scores each test image as its batch ends (`report.ReportCollector`)
and writes `report.html` on rank 0 at the end, with every rank's images gathered."""

import functools
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from ..outputs.report import ReportCollector, write_report
from ..types import Batch, SegmentationResult
from .wandb_media import image_at_original_size


class ReportWriter(L.Callback):
    """Feeds every scored test image to `collector`; writes the report into `folder`.

    The headline is what the test logged (`test/…`), the per-class values are the module's
    (`per_class["test"]`: PQ, IoU) and its AP metric's per-class AP, so the report shows the
    numbers of `eval_metrics.json`; the per-image scores, PQ by size and the confusion matrix
    are the collector's."""

    def __init__(
        self, collector: ReportCollector, folder: Path, details: dict[str, str] | None = None
    ) -> None:
        self.collector = collector
        self.folder = Path(folder)
        self.details = details or {}
        self.path: Path | None = None
        self._per_class_ap: list[float] | None = None

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        results: list[SegmentationResult] = outputs or []
        keep = batch.scored or [True] * len(results)
        for i, (result, scored) in enumerate(zip(results, keep, strict=True)):
            if scored:  # a rank's padding duplicate is scored by the rank that owns it
                image = functools.partial(image_at_original_size, batch, i)  # only if needed
                self.collector.update(result, batch.eval_targets[i], image)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before the module's hook, which computes and resets the metrics: the AP metric's
        # per-class values are read here (torchmetrics caches the result, so it is computed once)
        metrics = getattr(pl_module, "test_metrics", None)
        ap = getattr(metrics, "ap", None)
        self._per_class_ap = None
        if ap is None or not getattr(ap, "class_metrics", False):
            return
        values = ap.compute()
        classes = values.get("classes")
        per_class = values.get("map_per_class")
        if classes is None or per_class is None or per_class.numel() != classes.numel():
            return
        out = [math.nan] * self.collector.num_classes
        for c, v in zip(classes.reshape(-1).tolist(), per_class.reshape(-1).tolist(), strict=True):
            if 0 <= c < len(out) and v >= 0:
                out[int(c)] = 100 * v
        self._per_class_ap = out

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = self.collector.state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            self.collector.merge(states)
        if not trainer.is_global_zero:
            return
        headline = {
            k.removeprefix("test/"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("test/") and getattr(v, "numel", lambda: 1)() == 1
        }
        per_class: dict[str, list[float]] = {}
        module_per_class = getattr(pl_module, "per_class", {}).get("test", {})
        if "PQ" in module_per_class:
            per_class["PQ"] = _floats(module_per_class["PQ"])
        if self._per_class_ap is not None:
            per_class["AP"] = self._per_class_ap
        if "IoU" in module_per_class:
            per_class["IoU"] = _floats(module_per_class["IoU"])
        self.path = write_report(self.folder, self.collector, headline, per_class, self.details)
        print(f"report: {self.path}", flush=True)


def _floats(values: Any) -> list[float]:
    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.detach().cpu().reshape(-1)]
    return [float(v) for v in values]
