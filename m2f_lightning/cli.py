"""Entry points: train, evaluate and predict, driven by the Hydra configs in `conf/`.

`python train.py ...` and `m2f-train ...` run `train_main`; `m2f-evaluate` and `m2f-predict` run
`evaluate_main` and `predict_main`. Every command composes the same config tree, so `task=`,
`dataset=`, `backbone=`, `precision=`, `trainer=` and `logger=` work the same everywhere.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .data import SegmentationDataModule, check_task
from .lightning_module import Mask2FormerModule
from .preemption import PREEMPTED_CHECKPOINT, SlurmPreemption
from .resume_state import RandomState

PACKAGE_DIR = Path(__file__).resolve().parent
# `m2f_lightning/conf` links to the checkout's `conf/`; an installed wheel holds a copy of it
CONFIG_DIR = PACKAGE_DIR / "conf"
# outputs/ and datasets/ live in the checkout (editable install, `python train.py`); with the
# package installed from a wheel they live under the working directory
PROJECT_ROOT = (
    PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() else Path.cwd()
)
os.environ.setdefault("M2F_PROJECT_ROOT", str(PROJECT_ROOT))


def _console():
    from rich.console import Console

    return Console()


def validate_config(cfg: DictConfig) -> None:
    """Fail before any work on combinations that cannot run, naming the valid choices."""
    check_task(cfg.dataset.name, cfg.task.name)
    if cfg.logger.name not in ("wandb", "csv", "none"):
        raise ValueError(f"logger.name must be wandb, csv or none; got {cfg.logger.name}")
    if str(cfg.trainer.get("precision", "32")) not in (
        "32",
        "32-true",
        "16-mixed",
        "bf16-mixed",
        "64",
        "64-true",
    ):
        raise ValueError(
            f"precision must be 32, 16-mixed or bf16-mixed; got {cfg.trainer.precision}"
        )


def images_per_step(cfg: DictConfig) -> int:
    """Images per optimiser step: devices × nodes × per-device batch × accumulation."""
    t = cfg.trainer
    devices = t.get("devices", 1)
    devices = (
        len(devices)
        if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices)
        else devices
    )
    devices = 1 if devices in ("auto", -1) else int(devices)
    return (
        devices
        * int(t.get("num_nodes", 1))
        * cfg.dataset.batch_size
        * int(t.get("accumulate_grad_batches", 1))
    )


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


def build_datamodule(
    cfg: DictConfig, predict_paths: list[str] | None = None
) -> SegmentationDataModule:
    d = cfg.dataset
    return SegmentationDataModule(
        dataset=d.name,
        task=cfg.task.name,
        root=str(d.root),
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        train_aug=OmegaConf.to_container(d.train_aug, resolve=True),
        test_min_size=d.test_min_size,
        test_max_size=d.test_max_size,
        max_train_samples=d.get("max_train_samples"),
        max_val_samples=d.get("max_val_samples"),
        predict_paths=predict_paths,
        seed=cfg.get("seed", 0),  # resume/sampling hook: data order + augmentation
    )


def model_config(cfg: DictConfig, num_classes: int) -> dict[str, Any]:
    """Mask2Former keyword arguments from the `model` and `backbone` groups."""
    m = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("criterion", "inference"):
        m.pop(key, None)
    return {
        **m,
        "num_classes": num_classes,
        "backbone": cfg.backbone.name,
        "backbone_pretrained": cfg.backbone.pretrained,
        "backbone_kwargs": OmegaConf.to_container(cfg.backbone.kwargs, resolve=True) or {},
    }


def build_module(
    cfg: DictConfig, dm: SegmentationDataModule, config: dict[str, Any] | None = None
) -> Mask2FormerModule:
    meta = dm.metadata
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer["backbone_multiplier"] = cfg.backbone.lr_multiplier
    return Mask2FormerModule(
        model_config=config or model_config(cfg, meta.num_classes),
        task=cfg.task.name,
        class_names=meta.class_names,
        thing_ids=meta.thing_ids,
        stuff_ids=meta.stuff_ids,
        colors=[list(c) for c in meta.colors],
        criterion=OmegaConf.to_container(cfg.model.criterion, resolve=True),
        optimizer=optimizer,
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        max_steps=cfg.trainer.max_steps,
        inference=OmegaConf.to_container(cfg.model.inference, resolve=True),
        num_vis_images=cfg.get("num_vis_images", 0),
        ignore_label=meta.ignore_label,
    )


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_run_id(output_dir: Path) -> str:
    """The W&B run id of this output directory: made once, kept in `<output_dir>/wandb_run_id`,
    so a resumed or requeued job (same output dir) logs into the same run."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    path = output_dir / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    import secrets

    run_id = secrets.token_hex(6)  # W&B run ids: lowercase letters and digits
    if rank_zero_only.rank == 0:  # other ranks never start a W&B run
        path.write_text(run_id + "\n")
    return run_id


def build_logger(cfg: DictConfig, output_dir: Path):
    name = cfg.logger.name
    if name == "none":
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(output_dir), name="csv")
    from lightning.pytorch.loggers import WandbLogger

    offline = cfg.logger.get("offline")
    if offline is None:
        offline = not _wandb_has_credentials()
    env_mode = os.environ.get("WANDB_MODE")
    mode = env_mode if env_mode in ("disabled", "offline") else ("offline" if offline else "online")
    # pass the mode to wandb.init instead of `offline=True`, which rewrites WANDB_MODE for the
    # whole process (and so for later jobs of a multirun)
    logger = WandbLogger(
        id=wandb_run_id(output_dir),
        resume="allow",  # a resumed or requeued job continues its W&B run
        project=cfg.logger.project,
        entity=cfg.logger.get("entity"),
        group=cfg.logger.get("group"),
        tags=list(cfg.logger.get("tags") or []),
        save_dir=str(output_dir),
        mode=mode,
        log_model=cfg.logger.get("log_model", False) if mode == "online" else False,
    )
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def build_callbacks(cfg: DictConfig, output_dir: Path) -> list[L.Callback]:
    from lightning.pytorch.callbacks import (
        LearningRateMonitor,
        ModelCheckpoint,
        RichModelSummary,
        RichProgressBar,
    )

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
        RandomState(),  # resume hook: every RNG state travels in the checkpoint
    ]
    if sys.stdout.isatty():
        callbacks.append(RichProgressBar())
    else:  # a log file (SLURM, CI, a pipe): plain lines instead of a live bar
        from .callbacks import TextProgress

        callbacks.append(TextProgress(cfg.get("progress_every_n_steps", 50)))
    if cfg.logger.name != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return callbacks


def build_trainer(cfg: DictConfig, output_dir: Path, logger=False, callbacks=None) -> L.Trainer:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if not kwargs.get("val_check_interval"):
        kwargs["val_check_interval"] = None
        kwargs["limit_val_batches"] = kwargs.get("limit_val_batches", 0)
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins = []
    if SLURMEnvironment.detect():
        # ranks and addresses from SLURM; pre-emption is handled by SlurmPreemption (train), which
        # saves at a step boundary, not by Lightning's auto-requeue, which saves mid-step
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        **kwargs,
        # per job: never shared between the jobs of a sweep
        default_root_dir=str(output_dir),
        logger=logger,
        callbacks=callbacks or [],
        plugins=plugins or None,
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks or []),
    )


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def resume_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint `fit` continues from.

    `resume: auto` takes the newest of `<output_dir>/checkpoints/last.ckpt` (periodic) and
    `<output_dir>/preempted.ckpt` (saved on SLURM's pre-emption signal), so a requeued job
    loses at most the steps since the later of the two.
    """
    if cfg.resume in (None, False, "none"):
        return None
    if cfg.resume == "auto":
        candidates = [output_dir / "checkpoints" / "last.ckpt", output_dir / PREEMPTED_CHECKPOINT]
        existing = [p for p in candidates if p.is_file()]
        if not existing:
            return None
        return str(max(existing, key=lambda p: p.stat().st_mtime_ns))
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    return str(path)


def retire_preemption_checkpoint(trainer: L.Trainer, output_dir: Path) -> None:
    """After a finished fit, replace `preempted.ckpt` by a final `last.ckpt`, so that a rerun in
    the same folder resumes at the end rather than at the pre-emption."""
    stale = output_dir / PREEMPTED_CHECKPOINT
    if not stale.is_file():
        return
    trainer.save_checkpoint(output_dir / "checkpoints" / "last.ckpt")  # collective: all ranks
    if trainer.is_global_zero:
        stale.unlink()
    trainer.strategy.barrier("retire_preemption_checkpoint")


def load_init_weights(module: Mask2FormerModule, path: str) -> None:
    """Start training from the weights at `path` (not a resume: step, optimiser and schedule start
    fresh). A class head of another size stays freshly initialised, for fine-tuning on new classes."""
    from lightning.pytorch.utilities import rank_zero_only

    from .checkpoints import init_from_weights

    kept = init_from_weights(module.model, path)
    if rank_zero_only.rank == 0:
        note = f"; class head re-initialised for {module.model.num_classes} classes" if kept else ""
        print(f"init_weights: loaded {path}{note}", flush=True)


def _scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith(prefix) and torch.as_tensor(v).numel() == 1
    }


def train(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Fit (resuming if asked), then evaluate on the validation split. Returns metrics and paths."""
    try:
        return _train(cfg, output_dir)
    finally:
        _finish_wandb()


def _train(cfg: DictConfig, output_dir: Path | None) -> dict[str, Any]:
    validate_config(cfg)
    warn_if_not_the_recipe_batch(cfg)
    output_dir = Path(output_dir or _output_dir())
    output_dir.mkdir(parents=True, exist_ok=True)
    preemption = SlurmPreemption(output_dir)
    preemption.install()  # early: SLURM may signal while the job is still starting
    try:
        L.seed_everything(cfg.seed, workers=True)
        dm = build_datamodule(cfg)
        module = build_module(cfg, dm)
        if cfg.get("init_weights"):
            load_init_weights(module, cfg.init_weights)
        logger = build_logger(cfg, output_dir)
        trainer = build_trainer(
            cfg, output_dir, logger, [*build_callbacks(cfg, output_dir), preemption]
        )
        ckpt_path = resume_path(cfg, output_dir)
        if ckpt_path and trainer.is_global_zero:
            print(f"resuming from {ckpt_path}", flush=True)
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        train_seconds = time.perf_counter() - start
    finally:  # a pre-emption leaves through here as `Preempted`, after its checkpoint
        preemption.uninstall()
    retire_preemption_checkpoint(trainer, output_dir)
    summary: dict[str, Any] = {
        "output_dir": str(output_dir),
        "train_seconds": round(train_seconds, 1),
        "global_step": trainer.global_step,
        "val": _scalars(trainer.callback_metrics, "val/"),
    }
    if cfg.get("test_after_training") and not cfg.trainer.get("fast_dev_run"):
        trainer.test(module, datamodule=dm, verbose=False)
        summary["test"] = getattr(module, "test_results", {})
    checkpoint_cb = trainer.checkpoint_callback
    if checkpoint_cb is not None and checkpoint_cb.last_model_path:
        summary["last_checkpoint"] = checkpoint_cb.last_model_path
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title="m2f-lightning", show_header=False)
    table.add_row("outputs", summary["output_dir"])
    if "last_checkpoint" in summary:
        table.add_row("last checkpoint", summary["last_checkpoint"])
    if "train_seconds" in summary:
        table.add_row("training", f"{summary['global_step']} steps in {summary['train_seconds']} s")
    results = summary.get("test") or summary.get("val") or {}
    for key, value in results.items():
        table.add_row(key, f"{value:.2f}")
    table.add_row(
        "metrics file",
        str(Path(summary["output_dir"]) / summary.get("metrics_file", "metrics.json")),
    )
    console.print(table)


def _module_from_weights(
    cfg: DictConfig, dm: SegmentationDataModule, path: str
) -> Mask2FormerModule:
    from .checkpoints import load_model

    overrides = {}
    if str(path).endswith(".pkl"):
        overrides = model_config(cfg, dm.metadata.num_classes)
    model = load_model(path, **overrides)
    if model.num_classes != dm.metadata.num_classes:
        raise ValueError(
            f"{path} predicts {model.num_classes} classes but dataset '{cfg.dataset.name}' "
            f"({cfg.task.name}) has {dm.metadata.num_classes}"
        )
    module = build_module(cfg, dm, config=model.config)
    module.model.load_state_dict(model.state_dict())
    return module


def evaluate(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, float]:
    """Metrics of given weights on the validation split; printed as a table and written as JSON."""
    validate_config(cfg)
    output_dir = Path(output_dir or _output_dir())
    output_dir.mkdir(parents=True, exist_ok=True)
    dm = build_datamodule(cfg)
    module = _module_from_weights(cfg, dm, cfg.checkpoint)
    trainer = build_trainer(cfg, output_dir, build_logger(cfg, output_dir), [])
    trainer.test(module, datamodule=dm, verbose=False)
    results = getattr(module, "test_results", None)
    if results is None:  # ddp_spawn: ranks ran in children; Lightning sends back their metrics
        results = {k[5:]: v for k, v in _scalars(trainer.callback_metrics, "test/").items()}
    summary = {
        "output_dir": str(output_dir),
        "checkpoint": str(cfg.checkpoint),
        "test": results,
        "metrics_file": "eval_metrics.json",
    }
    if trainer.is_global_zero:  # metrics are already synchronised across ranks
        (output_dir / "eval_metrics.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    return results


def predict(cfg: DictConfig, output_dir: Path | None = None) -> list[Path]:
    """Run on plain images; write overlays and the task's result files."""
    from .prediction_writer import write_predictions

    validate_config(cfg)
    output_dir = Path(output_dir or _output_dir())
    inputs = list(cfg.inputs) if not isinstance(cfg.inputs, str) else [cfg.inputs]
    dm = build_datamodule(cfg, predict_paths=inputs)
    module = _module_from_weights(cfg, dm, cfg.checkpoint)
    # one process: a DDP predict would return each rank's share only (and write partial files)
    single = cfg.copy()
    with open_dict(single):
        single.trainer.update(devices=1, num_nodes=1, strategy="auto", sync_batchnorm=False)
    trainer = build_trainer(single, output_dir, False, [])
    batches = trainer.predict(module, datamodule=dm)
    results = [r for batch in batches for r in batch]
    written = write_predictions(
        results,
        cfg.task.name,
        dm.metadata,
        output_dir / "predictions",
        cfg.get("instance_score_threshold", 0.5),
    )
    _console().print(f"wrote {len(written)} files under {output_dir / 'predictions'}")
    return written


def _run(task_fn, cfg: DictConfig) -> Any:
    try:
        return task_fn(cfg)
    except (ValueError, FileNotFoundError, KeyError) as err:
        _console().print(f"[bold red]error:[/] {err}")
        raise
    finally:
        _finish_wandb()


def _finish_wandb() -> None:
    """Close an open W&B run, failed or not, so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    summary = _run(train, cfg)
    results = summary.get("test") or summary.get("val") or {}
    return next(iter(results.values()), None)  # the sweep objective (PQ / AP / mIoU)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def evaluate_main(cfg: DictConfig) -> None:
    _run(evaluate, cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def predict_main(cfg: DictConfig) -> None:
    _run(predict, cfg)
