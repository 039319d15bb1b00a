"""Logger presentation: validation overlays (prediction and ground truth) and per-class tables,
for W&B (masks over the images, tables) and TensorBoard (the overlay panels as images, the
per-class values as a text table).

Kept out of the LightningModule, which only trains and evaluates. Everything here runs on rank 0
and does nothing unless the trainer has a `WandbLogger` or a `TensorBoardLogger`.
"""

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from ..outputs.visualize import class_map, overlay_panel, segment_map
from ..types import Batch, SegmentationResult


def _wandb_logger(trainer: L.Trainer):
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger
    return None


def _tensorboard_logger(trainer: L.Trainer):
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def image_at_original_size(batch: Batch, index: int) -> np.ndarray:
    """The batch's `index`-th image, padding cropped, resized back to its size on disk (uint8)."""
    h, w = batch.image_sizes[index]
    oh, ow = batch.orig_sizes[index]
    image = batch.images[index, :, :h, :w].float()
    if (h, w) != (oh, ow):
        image = F.interpolate(image[None], size=(oh, ow), mode="bilinear")[0]
    return image.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


class ValidationMedia(L.Callback):
    """Logs `num_images` validation images with prediction / ground-truth masks (W&B) and overlay
    panels (image beside the prediction, class names on segments, contours; W&B and TensorBoard),
    and the per-class PQ / IoU of each validation and test as a table."""

    def __init__(
        self, class_names: list[str], colors: list[list[int]], num_images: int = 4
    ) -> None:
        self.class_names = list(class_names)
        self.colors = [list(c) for c in colors]
        self.num_images = num_images
        self._kept: list[dict[str, Any]] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.is_global_zero and (
            _wandb_logger(trainer) is not None or _tensorboard_logger(trainer) is not None
        )

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: list[SegmentationResult],
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not self._active(trainer):
            return
        for i, result in enumerate(outputs or []):
            if len(self._kept) >= self.num_images:
                return
            target = batch.eval_targets[i] if batch.eval_targets else None
            gt = target.sem_seg if target is not None else None
            self._kept.append(
                {
                    "image": image_at_original_size(batch, i),
                    "pred": class_map(result),
                    "segments": segment_map(result),
                    "gt": gt.cpu().numpy() if isinstance(gt, torch.Tensor) else None,
                }
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._active(trainer):
            self._kept = []
            return
        self._log_images(trainer)
        self._log_table(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self._log_table(trainer, pl_module, "test")

    def _log_images(self, trainer: L.Trainer) -> None:
        kept, self._kept = self._kept, []
        if not kept:
            return
        step = trainer.global_step
        # image | prediction with class names and contours, upscaled to be legible
        panels = [
            overlay_panel(i["image"], i["pred"], self.colors, self.class_names, i["segments"])
            for i in kept
        ]
        tensorboard = _tensorboard_logger(trainer)
        if tensorboard is not None:
            for index, panel in enumerate(panels):
                tensorboard.experiment.add_image(
                    f"val/overlays/{index}", panel, global_step=step, dataformats="HWC"
                )
        logger = _wandb_logger(trainer)
        if logger is None:
            return
        labels = dict(enumerate(self.class_names)) | {255: "void"}
        masks = []
        for item in kept:
            entry = {
                "prediction": {"mask_data": item["pred"].astype(np.uint8), "class_labels": labels}
            }
            if item["gt"] is not None:
                entry["ground_truth"] = {
                    "mask_data": item["gt"].astype(np.uint8),
                    "class_labels": labels,
                }
            masks.append(entry)
        logger.log_image("val/examples", images=[i["image"] for i in kept], masks=masks, step=step)
        logger.log_image("val/overlays", images=panels, step=step)

    def _log_table(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        per_class = getattr(pl_module, "per_class", {}).get(stage)
        if not per_class:
            return
        columns = ["class", *per_class.keys()]
        rows = [
            [name, *[float(v[i]) for v in per_class.values()]]
            for i, name in enumerate(self.class_names)
        ]
        tensorboard = _tensorboard_logger(trainer)
        if tensorboard is not None:  # TensorBoard's text tab renders a Markdown table
            lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
            lines += [" | ".join([row[0], *(f"{v:.2f}" for v in row[1:])]) for row in rows]
            tensorboard.experiment.add_text(
                f"{stage}/per_class", "\n".join(lines), global_step=trainer.global_step
            )
        if _wandb_logger(trainer) is not None:
            _wandb_logger(trainer).log_table(f"{stage}/per_class", columns=columns, data=rows)


# the name it had while it logged to W&B only
WandbMedia = ValidationMedia
