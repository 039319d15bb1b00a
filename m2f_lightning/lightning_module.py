"""The Lightning layer: wires the plain Mask2Former, its criterion, post-processing and metrics."""

from typing import Any

import lightning as L
import numpy as np
import torch

from .inference import postprocess
from .losses import SetCriterion
from .metrics import SegmentationMetrics
from .modeling import Mask2Former
from .optim import build_optimizer, build_scheduler
from .visualize import overlay, panoptic_class_map


class Mask2FormerModule(L.LightningModule):
    """Training, evaluation and prediction of a Mask2Former for one task.

    Args:
        model_config: keyword arguments of `Mask2Former` (num_classes included).
        task: panoptic | instance | semantic.
        class_names, thing_ids, stuff_ids, colors: the dataset's classes (contiguous ids).
        criterion: keyword arguments of `SetCriterion` (weights, points, ...).
        optimizer: {lr, weight_decay, backbone_multiplier, betas, eps}.
        scheduler: {name: poly|multistep|constant, power, milestones, gamma, warmup_steps,
            warmup_factor}; stepped per iteration up to `max_steps`.
        inference: {object_mask_threshold, overlap_threshold, topk}.
        num_vis_images: validation images logged with prediction / ground-truth overlays.
    """

    def __init__(
        self,
        model_config: dict[str, Any],
        task: str,
        class_names: list[str],
        thing_ids: list[int],
        stuff_ids: list[int],
        colors: list[list[int]] | None = None,
        criterion: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        max_steps: int = -1,
        inference: dict[str, Any] | None = None,
        num_vis_images: int = 4,
        ignore_label: int = 255,
    ) -> None:
        super().__init__()
        self.model = Mask2Former(**model_config)
        self.save_hyperparameters()
        # what rebuilds this model later: weights are in the state dict, never re-downloaded
        self.hparams["model_config"] = self.model.config
        num_classes = self.model.num_classes
        if len(class_names) != num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a model with {num_classes} classes"
            )
        self.task = task
        self.criterion = SetCriterion(num_classes, **(criterion or {}))
        metric_args = dict(
            task=task,
            num_classes=num_classes,
            thing_ids=thing_ids,
            stuff_ids=stuff_ids,
            ignore_label=ignore_label,
        )
        self.val_metrics = SegmentationMetrics(**metric_args)
        self.test_metrics = SegmentationMetrics(**metric_args, class_metrics=True)
        self.inference_args = {
            "object_mask_threshold": 0.8,
            "overlap_threshold": 0.8,
            "topk": 100,
            **(inference or {}),
        }
        self._vis: list[dict[str, Any]] = []

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        return self.model(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.model(batch["images"])
        losses = self.criterion(outputs, batch["targets"])
        batch_size = len(batch["targets"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=batch_size
        )
        return losses["loss"]

    def _postprocess(self, batch: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        outputs = self.model(batch["images"])
        results = postprocess(
            outputs,
            batch["image_sizes"],
            batch["orig_sizes"],
            self.task,
            self.hparams.thing_ids,
            **self.inference_args,
        )
        return outputs, results

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, results = self._postprocess(batch)
        self.val_metrics.update(results, batch)
        if len(self._vis) < self.hparams.num_vis_images:
            self._keep_for_visualisation(batch, results)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, results = self._postprocess(batch)
        self.test_metrics.update(results, batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        _, results = self._postprocess(batch)
        for result, name in zip(results, batch["file_names"], strict=True):
            result["file_name"] = name
        return results

    def _log_metrics(self, metrics: SegmentationMetrics, stage: str) -> dict[str, float]:
        values = metrics.compute()
        # already synchronised across ranks by torchmetrics
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False)
        self._log_per_class(metrics, stage)
        metrics.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a smoke test of the loop, not a result to log
            self.val_metrics.reset()
            self._vis = []
            return
        self._log_metrics(self.val_metrics, "val")
        self._log_images()
        self._vis = []

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_metrics(self.test_metrics, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, **(self.hparams.optimizer or {}))
        max_steps = self.hparams.max_steps
        if max_steps is None or max_steps <= 0:
            max_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(
            optimizer, max_steps=max_steps, **(self.hparams.scheduler or {"name": "poly"})
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ---- W&B extras: overlays and per-class tables (no-ops for other loggers) ----

    def _wandb(self):
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                return logger
        return None

    def _keep_for_visualisation(self, batch: dict[str, Any], results: list[dict[str, Any]]) -> None:
        if self._wandb() is None or self.global_rank != 0:
            return
        for i, result in enumerate(results):
            h, w = batch["image_sizes"][i]
            image = batch["images"][i, :, :h, :w].permute(1, 2, 0).byte().cpu().numpy()
            oh, ow = batch["orig_sizes"][i]
            if (h, w) != (oh, ow):
                image = (
                    torch.nn.functional.interpolate(
                        torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                        size=(oh, ow),
                        mode="bilinear",
                    )[0]
                    .permute(1, 2, 0)
                    .byte()
                    .numpy()
                )
            if "panoptic_seg" in result:
                pred = panoptic_class_map(
                    result["panoptic_seg"].cpu().numpy(), result["segments_info"]
                )
            elif "sem_seg" in result:
                pred = result["sem_seg"].argmax(0).cpu().numpy()
            else:
                inst = result["instances"]
                pred = np.full((oh, ow), 255, dtype=np.int64)
                for mask, label, score in zip(
                    inst["masks"], inst["labels"], inst["scores"], strict=True
                ):
                    if score > 0.5:
                        pred[mask.cpu().numpy()] = int(label)
            gt = batch["sem_seg"][i].cpu().numpy() if "sem_seg" in batch else None
            self._vis.append({"image": image, "pred": pred, "gt": gt})

    def _log_images(self) -> None:
        logger = self._wandb()
        if logger is None or not self._vis:
            return
        labels = {i: n for i, n in enumerate(self.hparams.class_names)} | {255: "void"}
        images, masks = [], []
        for item in self._vis:
            images.append(item["image"])
            entry = {
                "prediction": {"mask_data": item["pred"].astype(np.uint8), "class_labels": labels}
            }
            if item["gt"] is not None:
                entry["ground_truth"] = {
                    "mask_data": item["gt"].astype(np.uint8),
                    "class_labels": labels,
                }
            masks.append(entry)
        logger.log_image("val/examples", images=images, masks=masks, step=self.global_step)
        if self.hparams.colors:
            logger.log_image(
                "val/overlays",
                images=[overlay(i["image"], i["pred"], self.hparams.colors) for i in self._vis],
                step=self.global_step,
            )

    def _log_per_class(self, metrics: SegmentationMetrics, stage: str) -> None:
        logger = self._wandb()
        if logger is None:
            return
        per_class = metrics.per_class()
        if not per_class:
            return
        columns = ["class", *per_class.keys()]
        rows = [
            [name, *[float(v[i]) for v in per_class.values()]]
            for i, name in enumerate(self.hparams.class_names)
        ]
        logger.log_table(f"{stage}/per_class", columns=columns, data=rows)
