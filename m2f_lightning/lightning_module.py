"""The Lightning layer: wires a built Mask2Former, its criterion, post-processing and metrics.

Presentation (W&B images and per-class tables) lives in `callbacks.WandbMedia`; building from
configs lives in `builders`.
"""

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from .errors import UserError
from .inference import InferenceSettings, predict_images
from .losses import SetCriterion
from .metrics import SegmentationMetrics
from .modeling import Mask2Former
from .runs.optim import build_optimizer, build_scheduler
from .types import Batch, ModelOutput, SegmentationResult


class Mask2FormerModule(L.LightningModule):
    """Training, evaluation and prediction of a Mask2Former for one task.

    Args:
        model: the built `Mask2Former` (or `model_config`, the dict that rebuilds one: what a
            checkpoint stores, so `load_from_checkpoint` works).
        task: panoptic | instance | semantic.
        class_names, thing_ids, stuff_ids: the dataset's classes (contiguous ids).
        criterion: the `SetCriterion` (default: the paper's, for the model's classes).
        optimizer: {lr, weight_decay, backbone_multiplier, betas, eps}.
        scheduler: {name: poly|multistep|constant, power, milestones, gamma, warmup_steps,
            warmup_factor}; stepped per iteration up to `max_steps`.
        inference: post-processing thresholds, sliding windows and test-time augmentation
            (`InferenceSettings` or its fields as a dict).
        dataset_ids: contiguous class → the dataset's label id (Cityscapes: cityscapesScripts'
            instance evaluation reads them).
        max_nonfinite_steps: a step whose loss is NaN or inf is skipped (no optimiser update,
            counted in `train/skipped_steps`); this many consecutive skips stop the run with
            `NonFiniteLossError` (0: never stop).
        test_min_size, test_max_size: the test-time resize the model is evaluated at, kept in
            the checkpoint's hyper-parameters so that predict (and `Segmenter`) can use the
            checkpoint alone.
    """

    def __init__(
        self,
        model: Mask2Former | None = None,
        *,
        task: str,
        class_names: list[str],
        thing_ids: list[int],
        stuff_ids: list[int],
        criterion: SetCriterion | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        max_steps: int = -1,
        inference: InferenceSettings | dict[str, Any] | None = None,
        ignore_label: int = 255,
        model_config: dict[str, Any] | None = None,
        dataset_ids: list[int] | None = None,
        max_nonfinite_steps: int = 10,
        test_min_size: int | None = None,
        test_max_size: int | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            if model_config is None:
                raise ValueError("Mask2FormerModule needs a model (or its model_config)")
            model = Mask2Former.from_config(model_config)
        if len(class_names) != model.num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a model with {model.num_classes} classes"
            )
        settings = (
            inference
            if isinstance(inference, InferenceSettings)
            else InferenceSettings(**(inference or {}))
        )
        # what a checkpoint needs to rebuild this module (weights are in the state dict)
        model_config = model.config
        # lists, not tuples: hparams.yaml and checkpoints hold plain values
        inference = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
        self.save_hyperparameters(ignore=["model", "criterion"])
        self.model = model
        self.task = task
        self.inference_settings = settings
        self.criterion = criterion or SetCriterion(model.num_classes)
        metric_args = dict(
            task=task,
            num_classes=model.num_classes,
            thing_ids=thing_ids,
            stuff_ids=stuff_ids,
            ignore_label=ignore_label,
            dataset_ids=dataset_ids,
        )
        self.val_metrics = SegmentationMetrics(**metric_args)
        self.test_metrics = SegmentationMetrics(**metric_args, class_metrics=True)
        # per-class values of the last validation / test, for tables (see callbacks.WandbMedia)
        self.per_class: dict[str, dict[str, torch.Tensor]] = {}
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        # what runs the network in predict_batch (evaluate, predict): `runtimes.build_runtime`'s
        # callable; None: the model itself
        self.runtime: Callable[..., Any] | None = None

    def forward(self, images: torch.Tensor, image_sizes=None) -> ModelOutput:
        return self.model(images, image_sizes)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # no full mask logits: the criterion makes them only where it reads them (exact)
        outputs = self.model(batch.images, batch.image_sizes, full_masks=False)
        losses = self.criterion(outputs, batch.targets, batch.point_seeds)
        # non-finite loss guard: a device flag here (no host read), decided on all ranks alike
        # and acted on in on_before_optimizer_step (after the backward, so DDP's gradient
        # all-reduce still runs). Logged values stay tensors: nothing is read by the host here.
        self.nonfinite.record(torch.isfinite(losses["loss"].detach()), losses["loss"])
        logged = _mean_over_ranks(losses)  # the backward takes this rank's own loss
        self.log("train/loss", logged["loss"], prog_bar=True, batch_size=len(batch))
        self.log_dict(
            {f"train/{k}": v for k, v in logged.items() if k != "loss"}, batch_size=len(batch)
        )
        return losses["loss"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the update of a step that saw a non-finite loss (see `NonFiniteGuard`).

        With the fused AdamW (`configure_optimizers`) the skip flag stays on the device: the
        optimiser takes it as `found_inf` and leaves parameters, moments and its step count as
        they were, so the step needs no host read. fp16's GradScaler (and an optimiser state
        resumed from a non-fused run) read the flag on the host instead."""
        step = self.global_step
        skip = self.nonfinite.close_step(step, reduce=_sum_over_ranks)
        self.log("train/skipped_steps", self.nonfinite.skipped_steps)
        if self._skips_on_device(optimizer):
            optimizer.found_inf = skip.float()
        elif bool(skip):
            scaler = self._grad_scaler()
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    if scaler is None:
                        param.grad = None  # torch optimisers leave a parameter without grad as is
                    else:  # fp16's GradScaler skips a step whose gradients are not finite
                        param.grad.fill_(float("nan"))
        if self._is_check_step(step):
            self.nonfinite.check(step)

    def on_train_end(self) -> None:
        self.nonfinite.check(self.global_step)  # the skips since the last logging interval

    def _is_check_step(self, step: int) -> bool:
        """The guard reads its counters when Lightning reads the logged values (every
        `log_every_n_steps`) and at the last step, not on every step."""
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 1) or 1))
        last = self.trainer.max_steps is not None and step + 1 >= self.trainer.max_steps > 0
        return (step + 1) % every == 0 or last

    def _grad_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def _skips_on_device(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimiser applies `found_inf` itself: torch's fused AdamW, without a GradScaler
        (which sets `found_inf` itself)."""
        fused = all(group.get("fused") for group in optimizer.param_groups)
        return fused and self._grad_scaler() is None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, except under bf16-mixed with the fused AdamW: Lightning's
        mixed-precision plugin refuses to clip for any optimiser that can unscale gradients
        itself (it guards fp16's GradScaler, which bf16 has none of), so clip with torch."""
        if not gradient_clip_val or not self._skips_on_device(optimizer):
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)

    def predict_batch(self, batch: Batch) -> list[SegmentationResult]:
        """Post-processed results of a batch, at each image's original size."""
        net = self.model.infer if self.runtime is None else self.runtime
        results = predict_images(
            net,
            batch.images,
            batch.image_sizes,
            batch.orig_sizes,
            self.task,
            self.hparams.thing_ids,
            self.inference_settings,
        )
        for result, name, image_id in zip(results, batch.file_names, batch.image_ids, strict=True):
            result.file_name, result.image_id = name, image_id
        return results

    def validation_step(self, batch: Batch, batch_idx: int) -> list[SegmentationResult]:
        results = self.predict_batch(batch)
        self.val_metrics.update(*_scored(results, batch))
        return results  # handed to callbacks (W&B overlays)

    def test_step(self, batch: Batch, batch_idx: int) -> list[SegmentationResult]:
        results = self.predict_batch(batch)
        self.test_metrics.update(*_scored(results, batch))
        return results  # handed to callbacks (PredictionSaver); Lightning keeps none

    def predict_step(self, batch: Batch, batch_idx: int) -> list[SegmentationResult]:
        if len(batch) == 0:  # every input of the batch was unreadable (Batch.unreadable)
            return []
        return self.predict_batch(batch)

    def _log_metrics(self, metrics: SegmentationMetrics, stage: str) -> None:
        values = metrics.compute()  # synchronised across ranks by torchmetrics
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False)
        self.per_class[stage] = metrics.per_class()
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a smoke test of the loop, not a result to log
            self.val_metrics.reset()
            return
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        # fused AdamW (CPU and CUDA) applies the non-finite guard's skip on the device; fp16's
        # GradScaler needs Lightning to unscale and clip before the step, which it refuses to
        # do for an optimiser that could unscale itself
        fused = self._grad_scaler() is None and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point()
            for p in self.model.parameters()
        )
        optimizer = build_optimizer(self.model, fused=fused, **(self.hparams.optimizer or {}))
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


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive training steps had a NaN or infinite loss: the documented stop of a
    diverged run (its message says what to change), so the CLI prints it as an `error:` line."""


class NonFiniteGuard:
    """Bookkeeping of steps with a non-finite loss: a step (all micro-batches of an accumulated
    step) with one is skipped; `limit` consecutive skipped steps raise `NonFiniteLossError`
    naming the step and the last finite loss.

    The bookkeeping lives on the loss's device, so that deciding a skip needs no host read:
    `close_step` returns the step's skip flag as a device tensor (a fused optimiser takes it as
    `found_inf` and leaves every parameter and moment as they were). `check` reads the counters
    in one copy — warns of the steps skipped since the last check and raises once the limit
    was reached — and runs every `log_every_n_steps`, when Lightning reads the logged values
    anyway. `end_step` does both at once (the host-read path: fp16's GradScaler, tests)."""

    _COUNTERS = ("skipped", "consecutive", "last_skipped_step", "limit_step", "last_finite_step")

    def __init__(self, limit: int = 10) -> None:
        self.limit = limit
        # a micro-batch of the current optimiser step was not finite (a device flag once a
        # loss was recorded)
        self._bad: torch.Tensor | bool = False
        self._step_loss: torch.Tensor | None = None
        # device counters (float32: exact integers up to 2^24 steps): steps skipped in this run, skipped in a
        # row, the last skipped step, the step at which `limit` in a row was first reached,
        # the last finite step (-1: none) and its loss
        self._counts: torch.Tensor | None = None
        self._last_finite_loss: torch.Tensor | None = None
        self._skipped_at_check = 0

    def record(self, finite: torch.Tensor | bool, loss: torch.Tensor) -> None:
        """Note a micro-batch's loss and whether it is finite, without reading either."""
        self._step_loss = loss.detach()  # used only when every micro-batch was finite
        self._bad = self._bad | ~torch.as_tensor(finite, device=loss.device)

    def close_step(
        self, step: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Close optimiser step `step` on the device: a bool tensor, True when its update must
        be skipped. `reduce` sums a tensor over DDP ranks, so that every rank skips when one
        saw a non-finite loss. No host read."""
        bad, self._bad = self._bad, False
        device = self._step_loss.device if self._step_loss is not None else None
        bad = torch.as_tensor(bad, device=device)
        if reduce is not None:
            bad = reduce(bad.float()) > 0
        if self._counts is None:
            self._counts = torch.tensor([0.0, 0.0, -1.0, -1.0, -1.0], device=bad.device)
            self._last_finite_loss = torch.full((), float("nan"), device=bad.device)
        skipped, consecutive, last_skipped, limit_step, last_finite = self._counts.unbind()
        consecutive = torch.where(bad, consecutive + 1, 0.0)
        reached = bad & (consecutive >= self.limit) & (limit_step < 0) & (self.limit > 0)
        self._counts = torch.stack(
            [
                skipped + bad.float(),
                consecutive,
                torch.where(bad, float(step), last_skipped),
                torch.where(reached, float(step), limit_step),
                torch.where(bad, last_finite, float(step)),
            ]
        )
        if self._step_loss is not None:
            self._last_finite_loss = torch.where(
                bad, self._last_finite_loss, self._step_loss.float()
            )
        return bad

    @property
    def skipped_steps(self) -> torch.Tensor:
        """Steps skipped in this run, on the device (for logging without a host read)."""
        return self._counts[0] if self._counts is not None else torch.zeros(())

    @property
    def skipped(self) -> int:
        """Steps skipped in this run (a host read)."""
        return int(self.skipped_steps)

    def check(self, step: int) -> None:
        """Read the counters (one copy): warn of the steps skipped since the last check, raise
        `NonFiniteLossError` when `limit` consecutive steps were skipped."""
        if self._counts is None:
            return
        values = torch.cat([self._counts, self._last_finite_loss[None].to(self._counts)])
        skipped, consecutive, last_skipped, limit_step, last_finite, last_loss = (
            values.cpu().tolist()
        )
        skipped, new = int(skipped), int(skipped) - self._skipped_at_check
        self._skipped_at_check = skipped
        if new:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"step {int(last_skipped)}: loss is not finite; skipped the optimiser step "
                f"({new} skipped since the last check, {int(consecutive)} in a row, "
                f"{skipped} in this run)"
            )
        if limit_step < 0:
            return
        last = (
            f"the last finite loss was {last_loss:.4f} at step {int(last_finite)}"
            if last_finite >= 0
            else "no step had a finite loss"
        )
        seen = f" (seen at step {step})" if step != int(limit_step) else ""
        raise NonFiniteLossError(
            f"training stopped at step {int(limit_step)}{seen}: the loss was NaN or infinite "
            f"for {self.limit} consecutive steps (max_nonfinite_steps={self.limit}); {last}. "
            "Lower the learning rate, check the data, or use precision=32."
        )

    def end_step(
        self, step: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> bool:
        """`close_step` and `check` at once: True when the update of `step` must be skipped."""
        skip = bool(self.close_step(step, reduce))
        self.check(step)
        return skip


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over DDP ranks by one all-reduce queued on the device (unchanged with one
    process). Not `strategy.reduce`: it puts a barrier first, which on NCCL blocks the host
    until the device has caught up."""
    if _world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value


def _mean_over_ranks(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loss terms averaged over DDP ranks, as detectron2 logs them: one all-reduce of all of
    them; unchanged with one process."""
    if _world_size() == 1:
        return losses
    stacked = _sum_over_ranks(torch.stack([value.detach().float() for value in losses.values()]))
    return dict(zip(losses, (stacked / _world_size()).unbind(), strict=True))


def _scored(results: list[SegmentationResult], batch: Batch) -> tuple[list, list]:
    """Results and targets of the images this rank scores: a distributed evaluation sampler
    repeats an image only to fill a rank's last batch, and marks the copy (data/sampling.py)."""
    keep = batch.scored or [True] * len(results)
    pairs = [(r, t) for r, t, k in zip(results, batch.eval_targets, keep, strict=True) if k]
    return [r for r, _ in pairs], [t for _, t in pairs]
