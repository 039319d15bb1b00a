"""From a composed config to the objects a command runs: datamodule, model, criterion,
LightningModule, callbacks and Trainer. Nothing here trains; `commands` does."""

import inspect
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .data import SegmentationDataModule, check_task
from .inference import InferenceSettings
from .lightning_module import Mask2FormerModule
from .losses import SetCriterion
from .modeling import Mask2Former
from .modeling.backbone_weights import weights_from_config
from .precision import resolve_precision, trainer_precision


def validate_config(cfg: DictConfig) -> None:
    """Fail before any work on combinations that cannot run, naming the valid choices."""
    check_task(cfg.dataset.name, cfg.task.name, _container(cfg.dataset.get("source")))
    if cfg.logger.name not in ("wandb", "csv", "none"):
        raise ValueError(f"logger.name must be wandb, csv or none; got {cfg.logger.name}")
    resolve_precision(cfg.trainer.get("precision", "32"), False, False)  # raises on bad values


def images_per_step(cfg: DictConfig) -> int:
    """Images per optimiser step: devices × nodes × per-device batch × accumulation."""
    t = cfg.trainer
    devices = t.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    devices = 1 if devices in ("auto", -1) else int(devices)
    accumulate = int(t.get("accumulate_grad_batches", 1))
    return devices * int(t.get("num_nodes", 1)) * cfg.dataset.batch_size * accumulate


def warn_if_not_the_recipe_batch(cfg: DictConfig) -> None:
    """The paper's recipes assume 16 images per step; say so when a run differs (lr is not
    rescaled: the authors found no reliable rule for AdamW)."""
    recipe = cfg.get("recipe_batch_size")
    if not recipe or cfg.trainer.get("fast_dev_run"):
        return
    actual = images_per_step(cfg)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1))
    if actual != recipe:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"this recipe was trained with {recipe} images per step; this run uses {actual} "
            f"(trainer.devices × trainer.num_nodes × dataset.batch_size × "
            f"trainer.accumulate_grad_batches). Match it with e.g. "
            f"trainer.accumulate_grad_batches={max(1, accumulate * recipe // actual)}."
        )


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_datamodule(
    cfg: DictConfig, predict_paths: list[str] | None = None
) -> SegmentationDataModule:
    """The datamodule from the `dataset` group: every key that is a datamodule argument."""
    accepted = set(inspect.signature(SegmentationDataModule).parameters)
    data = {k: v for k, v in _container(cfg.dataset).items() if k in accepted}
    return SegmentationDataModule(
        **data,
        dataset=cfg.dataset.name,
        task=cfg.task.name,
        predict_paths=predict_paths,
        seed=cfg.get("seed", 0),  # data order and augmentation: (seed, epoch, index)
    )


def build_model(cfg: DictConfig, num_classes: int) -> Mask2Former:
    """The plain `Mask2Former` of `model.net` (the backbone group fills its backbone keys; the
    weights are none when `init_weights` replaces them anyway)."""
    return _instantiate(
        cfg.model.net, num_classes=num_classes, backbone_weights=weights_from_config(cfg)
    )


def build_criterion(cfg: DictConfig, num_classes: int) -> SetCriterion:
    return _instantiate(cfg.model.criterion, num_classes=num_classes)


def _instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, letting a user's mistake (missing weights, a bad size) through
    as itself rather than wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError, KeyError)):
            raise err.__cause__ from None
        raise


def inference_settings(cfg: DictConfig) -> InferenceSettings:
    return InferenceSettings(**_container(cfg.inference))


def build_module(
    cfg: DictConfig, dm: SegmentationDataModule, model: Mask2Former | None = None
) -> Mask2FormerModule:
    """The LightningModule around `model` (built from the config when not given)."""
    meta = dm.metadata
    model = model or build_model(cfg, meta.num_classes)
    optimizer = _container(cfg.get("optimizer")) or {}
    if optimizer:
        optimizer["backbone_multiplier"] = cfg.backbone.lr_multiplier
    return Mask2FormerModule(
        model,
        task=cfg.task.name,
        class_names=meta.class_names,
        thing_ids=meta.thing_ids,
        stuff_ids=meta.stuff_ids,
        criterion=build_criterion(cfg, meta.num_classes),
        optimizer=optimizer,
        scheduler=_container(cfg.get("scheduler")),
        max_steps=cfg.trainer.max_steps,
        inference=inference_settings(cfg),
        ignore_label=meta.ignore_label,
        max_nonfinite_steps=cfg.get("max_nonfinite_steps", 10),  # train.yaml
    )


def build_callbacks(
    cfg: DictConfig, output_dir: Path, dm: SegmentationDataModule
) -> list[L.Callback]:
    """Checkpoints, progress reporting, learning-rate logging and W&B media for training."""
    from lightning.pytorch.callbacks import (
        LearningRateMonitor,
        ModelCheckpoint,
        RichModelSummary,
        RichProgressBar,
    )

    from .callbacks import TextProgress, WandbMedia
    from .resume_state import RandomState

    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=str(output_dir / "checkpoints"),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.checkpoint.every_n_train_steps,
            save_last=True,
            save_top_k=cfg.checkpoint.save_top_k,
            monitor=cfg.checkpoint.get("monitor"),
            mode="max",
        ),
        RichModelSummary(max_depth=2),
        RandomState(),  # every RNG state travels in the checkpoint (exact resume)
    ]
    if sys.stdout.isatty():
        callbacks.append(RichProgressBar())
    else:  # a log file (SLURM, CI, a pipe): plain lines instead of a live bar
        callbacks.append(TextProgress(cfg.get("progress_every_n_steps", 50)))
    if cfg.logger.name != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.logger.name == "wandb":
        meta = dm.metadata
        colors = [list(c) for c in meta.colors]
        callbacks.append(WandbMedia(meta.class_names, colors, cfg.get("num_vis_images", 0)))
    return callbacks


def build_trainer(
    cfg: DictConfig, output_dir: Path, logger: Any = False, callbacks: list | None = None
) -> L.Trainer:
    """A Trainer from the `trainer` group (precision included), writing under `output_dir`."""
    kwargs = _container(cfg.trainer)
    kwargs["precision"] = trainer_precision(kwargs)  # `auto`: bf16/fp16 mixed on CUDA, else 32
    if not kwargs.get("val_check_interval"):
        kwargs["val_check_interval"] = None
        kwargs["limit_val_batches"] = kwargs.get("limit_val_batches", 0)
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins = []
    if SLURMEnvironment.detect():
        # ranks and addresses from SLURM; pre-emption is handled by SlurmPreemption (train), which
        # saves at a step boundary, not by Lightning's auto-requeue, which saves mid-step
        plugins.append(SLURMEnvironment(auto_requeue=False))
    callbacks = callbacks or []
    return L.Trainer(
        **kwargs,
        # per job: never shared between the jobs of a sweep
        default_root_dir=str(output_dir),
        logger=logger,
        callbacks=callbacks,
        plugins=plugins or None,
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
    )
