"""The start of a training run in a few lines: where it writes, what it trains on, how big the
model is, the precision and device, whether it resumes, the schedule. It stands in for
Lightning's module table (14 rows, most of them metric objects with no parameters, and a FLOPs
column that is all zeros without an example input)."""

from pathlib import Path
from typing import Any

import lightning as L
import torch

# the parts of `Mask2Former` shown with their sizes, in forward order
PARTS = {
    "backbone": "backbone",
    "pixel_decoder": "pixel decoder",
    "transformer_decoder": "transformer decoder",
}


def count(module: torch.nn.Module, trainable: bool = False) -> int:
    """Parameters of `module` (only the trainable ones if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def human(number: float) -> str:
    """1.9 M, 174 K: the sizes as Lightning's summary writes them."""
    from lightning.pytorch.utilities.model_summary import get_human_readable_count

    return get_human_readable_count(int(number)).strip()


class RunSummary(L.Callback):
    """Prints the run's start lines on rank 0 once fitting starts. `details`: what only the
    config knows (dataset and backbone names, the schedule), each an already worded line."""

    def __init__(self, output_dir: Path, details: dict[str, str]) -> None:
        self.output_dir = Path(output_dir)
        self.details = dict(details)

    def lines(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        rows = {"run folder": str(self.output_dir)}
        data = trainer.datamodule
        if data is not None and getattr(data, "train_set", None) is not None:
            val = getattr(data, "val_set", None)
            images = f"{len(data.train_set)} training images"
            if val is not None:
                images += f", {len(val)} validation images"
            classes = getattr(getattr(data, "metadata", None), "num_classes", None)
            name = self.details.get("data", "")
            name = f"{name} ({classes} classes)" if classes and name else name
            loading = self.details.get("loading")
            rows["data"] = f"{name}: {images}".lstrip(": ") + (f"; {loading}" if loading else "")
        model = getattr(pl_module, "model", pl_module)
        total, trainable = count(pl_module), count(pl_module, trainable=True)
        parts = [
            f"{label} {human(count(getattr(model, name)))}"
            for name, label in PARTS.items()
            if isinstance(getattr(model, name, None), torch.nn.Module)
        ]
        size = f"{human(total)} parameters ({human(trainable)} trainable"
        size += f"; {', '.join(parts)})" if parts else ")"
        rows["model"] = f"{self.details.get('model', type(model).__name__)}: {size}"
        device = trainer.strategy.root_device
        where = str(device.type)
        if device.type == "cuda":
            where = torch.cuda.get_device_name(device)
        devices = trainer.num_devices * trainer.num_nodes
        rows["precision"] = f"{trainer.precision} on {where}" + (
            f" × {devices} devices" if devices > 1 else ""
        )
        rows["resume"] = f"from {trainer.ckpt_path}" if trainer.ckpt_path else "no (a fresh start)"
        if "schedule" in self.details:
            rows["schedule"] = self.details["schedule"]
        return rows

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows = self.lines(trainer, pl_module)
        width = max(len(key) for key in rows)
        print("\n".join(f"{key:<{width}}  {value}" for key, value in rows.items()), flush=True)


def run_details(cfg: Any) -> dict[str, str]:
    """The worded lines of `RunSummary` that come from a training config."""
    dataset = cfg.dataset
    loading = f"batch {dataset.batch_size}, {dataset.get('num_workers', 0)} loader workers"
    every = cfg.trainer.get("val_check_interval") or 0
    schedule = f"{cfg.trainer.max_steps} steps"
    schedule += f", validation every {every} steps" if every else ", no validation during training"
    schedule += f", a checkpoint every {cfg.checkpoint.every_n_train_steps} steps"
    return {
        "data": f"{dataset.name}, {cfg.task.name}",
        "loading": loading,
        "model": f"Mask2Former, {cfg.backbone.get('name', '?')} backbone",
        "schedule": schedule,
    }
