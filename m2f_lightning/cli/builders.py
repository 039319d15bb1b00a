"""From a composed config to the objects a command runs: datamodule, model, criterion,
LightningModule, callbacks and Trainer. Nothing here trains; `commands` does."""

import inspect
import os
import socket
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..data import SegmentationDataModule
from ..data.catalog import DatasetMetadata
from ..errors import CheckpointError, ConfigError, DataError, UserError
from ..inference import InferenceSettings
from ..lightning_module import Mask2FormerModule
from ..losses import SetCriterion
from ..modeling import Mask2Former
from ..modeling.backbone_weights import weights_from_config
from ..runs.precision import trainer_precision
from .config_schema import check_config


def validate_config(cfg: DictConfig, command: str = "train", gpus: int | None = None) -> None:
    """Fail before any work on a config that cannot run, every problem named at once
    (`config_schema`: types, ranges, known names, the machine); `gpus`: None for this machine's."""
    check_config(cfg, command, gpus)


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


def world_size(cfg: DictConfig) -> int:
    """Processes a run trains on: devices × nodes (`auto`/-1 devices: every visible GPU)."""
    t = cfg.trainer
    devices = t.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    elif devices in ("auto", -1, "-1"):
        import torch

        gpu = t.get("accelerator", "auto") in ("auto", "gpu", "cuda")
        devices = max(1, torch.cuda.device_count()) if gpu else 1
    return int(devices) * int(t.get("num_nodes", 1))


def check_run_has_work(cfg: DictConfig, dm: SegmentationDataModule, train: bool) -> None:
    """Stop before starting a run that would make no training step or evaluate no image (a
    small split, a large batch, many devices), saying which numbers to change."""
    world = world_size(cfg)
    if dm.val_set is not None and len(dm.val_set) == 0:
        raise DataError(
            f"the validation split of dataset '{cfg.dataset.name}' has no images "
            f"({_source_of(dm.val_set)}): nothing to evaluate"
        )
    if not train or cfg.trainer.get("fast_dev_run"):
        return
    images = len(dm.train_set)
    if images == 0:
        raise DataError(
            f"the training split of dataset '{cfg.dataset.name}' has no images "
            f"({_source_of(dm.train_set)})"
        )
    per_device = -(-images // world)
    if per_device // dm.batch_size == 0:
        limit = " (dataset.max_train_samples)" if dm.max_train_samples is not None else ""
        raise ConfigError(
            f"no training step can be made: the training split has {images} image(s){limit}, "
            f"{per_device} per device over {world} device(s) (trainer.devices × "
            f"trainer.num_nodes), fewer than dataset.batch_size={dm.batch_size} (incomplete "
            "batches are dropped). Lower dataset.batch_size or trainer.devices, or add images."
        )


def _source_of(dataset: Any) -> str:
    reader = getattr(dataset, "reader", None)
    source = getattr(reader, "json_file", None)
    return f"read from {source}" if source else "check dataset.source / the dataset folder"


def check_writable(folder: Path) -> None:
    """Fail at start when checkpoints cannot be written to `folder` (Lightning's atomic save
    swallows a PermissionError and reports a checkpoint that does not exist)."""
    probe = folder / f".write_test_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CheckpointError(
            f"cannot write checkpoints to {folder}: {err.strerror or err}. Make the folder "
            "writable, or choose another output folder: hydra.run.dir=..."
        ) from None


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_datamodule(
    cfg: DictConfig,
    predict_paths: list[str] | None = None,
    predict_split: str | None = None,
    metadata: DatasetMetadata | None = None,
) -> SegmentationDataModule:
    """The datamodule from the `dataset` group: every key that is a datamodule argument;
    `metadata`: classes that do not come from the dataset (predict from a checkpoint)."""
    accepted = set(inspect.signature(SegmentationDataModule).parameters) - {"metadata"}
    data = {k: v for k, v in _container(cfg.dataset).items() if k in accepted}
    return SegmentationDataModule(
        **data,
        dataset=cfg.dataset.name,
        task=cfg.task.name,
        predict_paths=predict_paths,
        predict_split=predict_split,
        seed=cfg.get("seed", 0),  # data order and augmentation: (seed, epoch, index)
        metadata=metadata,
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
        cause = err.__cause__
        if isinstance(cause, ValueError) and not isinstance(cause, UserError):
            # the constructors' checks of their arguments: values of this config
            raise ConfigError(f"{node._get_full_key(None)}: {cause}") from None
        if isinstance(cause, (ValueError, FileNotFoundError, KeyError)):
            raise cause from None
        raise


def inference_settings(cfg: DictConfig) -> InferenceSettings:
    try:
        return InferenceSettings(**_container(cfg.inference))
    except (TypeError, ValueError) as err:  # a bad value, or a key InferenceSettings lacks
        raise ConfigError(f"inference: {err}") from None


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
        dataset_ids=list(meta.dataset_ids),
        max_nonfinite_steps=cfg.get("max_nonfinite_steps", 10),  # train.yaml
        test_min_size=cfg.dataset.get("test_min_size"),
        test_max_size=cfg.dataset.get("test_max_size"),
    )


def build_callbacks(
    cfg: DictConfig, output_dir: Path, dm: SegmentationDataModule
) -> list[L.Callback]:
    """Checkpoints, progress reporting, learning-rate logging and the logger's media (W&B,
    TensorBoard) for training."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    from ..callbacks import StepProgressBar, TextProgress, ValidationMedia
    from ..callbacks.checkpointing import CheckedModelCheckpoint
    from ..callbacks.run_summary import RunSummary, run_details
    from ..runs.resume_state import RandomState

    callbacks: list[L.Callback] = [
        CheckedModelCheckpoint(
            dirpath=str(output_dir / "checkpoints"),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.checkpoint.every_n_train_steps,
            save_last=True,
            save_top_k=cfg.checkpoint.save_top_k,
            monitor=cfg.checkpoint.get("monitor"),
            mode="max",
        ),
        RandomState(),  # every RNG state travels in the checkpoint (exact resume)
    ]
    if cfg.trainer.get("enable_model_summary", True):  # the run's start lines
        callbacks.append(RunSummary(output_dir, run_details(cfg)))
    every = cfg.get("progress_every_n_steps", 50)
    if sys.stdout.isatty():  # live bars; the plain lines go to the log file (run_log)
        callbacks += [StepProgressBar(), TextProgress(every, console=False)]
    else:  # a log file (SLURM, CI, a pipe): plain lines instead of a live bar
        callbacks.append(TextProgress(every))
    if cfg.logger.name != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.logger.name in ("wandb", "tensorboard"):  # loggers that show images
        meta = dm.metadata
        colors = [list(c) for c in meta.colors]
        callbacks.append(ValidationMedia(meta.class_names, colors, cfg.get("num_vis_images", 0)))
    return callbacks


def quiet_lightning() -> None:
    """Silence third-party lines that do not apply here (`console_noise`), among them
    Lightning's "`srun` is available but not used" (SLURM jobs are launched by submitit or
    scripts/, which use srun; a login-node run is meant to be local) and the litlogger tip."""
    from ..runs.console_noise import quiet_third_party

    quiet_third_party()


def print_placement(trainer: L.Trainer) -> None:
    """On every rank of a multi-node run: its rank, node rank, host and the main address it joins,
    one line in that rank's own log (SLURM writes one per task), to check where the ranks ran."""
    if trainer.num_nodes < 2:
        return
    env = trainer.strategy.cluster_environment
    print(
        f"rank {trainer.global_rank}/{trainer.world_size}: node {trainer.node_rank}/"
        f"{trainer.num_nodes} ({socket.gethostname()}), local rank {trainer.local_rank}, "
        f"main address {env.main_address}:{env.main_port}",
        flush=True,
    )


def build_trainer(
    cfg: DictConfig, output_dir: Path, logger: Any = False, callbacks: list | None = None
) -> L.Trainer:
    """A Trainer from the `trainer` group (precision included), writing under `output_dir`."""
    quiet_lightning()
    kwargs = _container(cfg.trainer)
    kwargs["precision"] = trainer_precision(kwargs)  # `auto`: bf16/fp16 mixed on CUDA, else 32
    if not kwargs.get("val_check_interval"):
        kwargs["val_check_interval"] = None
        kwargs["limit_val_batches"] = kwargs.get("limit_val_batches", 0)
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from ..callbacks.checkpointing import AtomicCheckpointIO

    plugins: list[Any] = [AtomicCheckpointIO()]  # whole checkpoints or none, never truncated
    if SLURMEnvironment.detect():
        # ranks and addresses from SLURM; pre-emption is handled by SlurmPreemption (train), which
        # saves at a step boundary, not by Lightning's auto-requeue, which saves mid-step
        plugins.append(SLURMEnvironment(auto_requeue=False))
    callbacks = list(callbacks or [])
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.callbacks.progress import ProgressBar

    from ..callbacks import StepProgressBar, TextProgress

    if not any(isinstance(c, TextProgress) for c in callbacks):  # evaluate, predict
        every = cfg.get("progress_every_n_steps", 50)
        callbacks.append(TextProgress(every, console=not sys.stdout.isatty()))
    if kwargs.get("enable_progress_bar", True) and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        if sys.stdout.isatty():
            callbacks.append(StepProgressBar())
        else:  # a log file: no live bar (TextProgress prints plain lines)
            kwargs["enable_progress_bar"] = False
    # the model summary is ours (`RunSummary`, train only): no Lightning table, and no message
    # that it is skipped because another summary callback is there
    kwargs["enable_model_summary"] = False
    return L.Trainer(
        **kwargs,
        # per job: never shared between the jobs of a sweep
        default_root_dir=str(output_dir),
        logger=logger,
        callbacks=callbacks,
        plugins=plugins,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
