"""The three commands, each a composed config in and a result out: train (fit, then test),
evaluate (test given weights) and predict (write result files for images)."""

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from ..classes import check_classes_agree
from ..data import SegmentationDataModule
from ..errors import CheckpointError, ConfigError, UserError
from ..modeling import Mask2Former
from ..runs.preemption import Interrupted, SlurmPreemption, StopAtNextBatch
from ..runs.resume import (
    check_resume_fits,
    load_init_weights,
    resume_path,
    retire_preemption_checkpoint,
    set_aside_earlier_checkpoints,
)
from ..runs.run_lock import RunLock
from ..runs.run_record import RunRecord
from ..runs.wandb_run import build_logger, check_wandb_folder, finish_wandb, log_world
from .builders import (
    build_callbacks,
    build_datamodule,
    build_module,
    build_trainer,
    check_run_has_work,
    check_writable,
    print_placement,
    validate_config,
    warn_if_not_the_recipe_batch,
)


def hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def scalars(metrics: dict[str, Any], prefix: str, strip: bool = True) -> dict[str, float]:
    """`{name: value}` of the logged scalars under `prefix`, the prefix removed if `strip`."""
    return {
        (k.removeprefix(prefix) if strip else k): float(v)
        for k, v in metrics.items()
        if k.startswith(prefix) and getattr(v, "numel", lambda: 1)() == 1
    }


def train(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Fit (resuming if asked), then test on the validation split. Returns metrics and paths.
    The W&B run is closed however this ends, so the next job of a sweep starts its own; the
    run's state is kept in `<output_dir>/summary.json` (`run_record`) however it ends."""
    output_dir = Path(output_dir or hydra_output_dir())
    record = RunRecord(output_dir)
    try:
        summary = _train(cfg, output_dir, record)
    except BaseException as err:
        record.stopped(err)  # nothing unless the run got as far as holding its folder
        raise
    finally:
        finish_wandb()
    record.finished(summary)
    return summary


def _train(cfg: DictConfig, output_dir: Path, record: RunRecord) -> dict[str, Any]:
    preemption = SlurmPreemption(output_dir)
    preemption.install()  # early: SLURM may signal while the job is still starting
    lock = RunLock(output_dir)
    try:
        # everything a user can get wrong is checked before a folder, a W&B run or a process
        # is made: the config, every annotation file, the run's size, the checkpoint to resume
        validate_config(cfg)
        warn_if_not_the_recipe_batch(cfg)
        dm = build_datamodule(cfg)
        dm.setup("fit")
        check_run_has_work(cfg, dm, train=True)
        L.seed_everything(cfg.seed, workers=True)
        module = build_module(cfg, dm)
        lock.check()  # another run in this folder: stop before reading its live checkpoints
        ckpt_path = resume_path(cfg, output_dir)
        if ckpt_path:
            check_resume_fits(ckpt_path, module, cfg)
        if cfg.get("init_weights"):  # weights of another size stop the run before its folder
            class_map = cfg.get("class_map")  # {new name: checkpoint name}
            class_map = OmegaConf.to_container(class_map, resolve=True) if class_map else {}
            load_init_weights(module, cfg.init_weights, class_map)
        check_wandb_folder(cfg, output_dir)
        check_writable(output_dir / "checkpoints")
        lock.acquire()
        record.start(str(cfg.task.name), resumed=ckpt_path is not None)
        set_aside_earlier_checkpoints(cfg, output_dir)
        maybe_compile(cfg, module.model)
        callbacks = [*build_callbacks(cfg, output_dir, dm), preemption]
        trainer = build_trainer(cfg, output_dir, build_logger(cfg, output_dir), callbacks)
        record.trainer = trainer
        log_world(trainer.logger, trainer)
        print_placement(trainer)
        if ckpt_path and trainer.is_global_zero:
            print(f"resuming from {ckpt_path}", flush=True)
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        train_seconds = time.perf_counter() - start
        retire_preemption_checkpoint(trainer, output_dir)
        summary: dict[str, Any] = {
            "output_dir": str(output_dir),
            "train_seconds": round(train_seconds, 1),
            "global_step": trainer.global_step,
            "val": scalars(trainer.callback_metrics, "val/", strip=False),  # "val/PQ", ...
        }
        if cfg.get("test_after_training") and not cfg.trainer.get("fast_dev_run"):
            # still covered by the pre-emption handler: a signal stops the test cleanly
            (logged,) = trainer.test(module, datamodule=dm, verbose=False)
            summary["test"] = scalars(logged, "test/")
    finally:  # a pre-emption leaves through here as `Preempted`, after its checkpoint
        preemption.uninstall()
        lock.release()
    checkpoint_cb = trainer.checkpoint_callback
    if checkpoint_cb is not None and Path(checkpoint_cb.last_model_path or "").is_file():
        summary["last_checkpoint"] = checkpoint_cb.last_model_path
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    return summary


def maybe_compile(cfg: DictConfig, model: Mask2Former) -> None:
    """`compile=true`: torch.compile the network in place (checkpoints keep the same keys), its
    compiled graphs cached in `compile_cache_dir` for the next run with the same shapes."""
    if cfg.get("compile"):
        model.compile_network(cache_dir=cfg.get("compile_cache_dir"))


def use_runtime(cfg: DictConfig, module: Any) -> None:
    """`runtime=eager|compile|onnxruntime` of evaluate and predict (`runtimes.build_runtime`):
    what runs the network in `predict_batch`. `compile=true` is `runtime=compile`."""
    from ..predictor.runtimes import build_runtime

    name = str(cfg.get("runtime") or "eager")
    if cfg.get("compile"):
        if name == "onnxruntime":
            raise ConfigError("compile=true and runtime=onnxruntime: choose one")
        name = "compile"
    runtime = build_runtime(
        module.model,
        name,
        checkpoint=str(cfg.checkpoint),
        compile_cache_dir=cfg.get("compile_cache_dir"),
    )
    if runtime is not module.model:  # the model itself stays a submodule only
        module.runtime = runtime


def read_model(cfg: DictConfig, path: str, num_classes: int | None) -> Mask2Former:
    """The model stored at `path` (any format `load_model` reads). A model-zoo `.pkl` holds no
    architecture: it comes from the `model`/`backbone` groups, with `num_classes`."""
    from ..checkpoints import load_model

    overrides: dict[str, Any] = {}
    if str(path).endswith(".pkl"):
        overrides = OmegaConf.to_container(cfg.model.net, resolve=True)
        overrides.pop("_target_", None)
        overrides["num_classes"] = num_classes
    return load_model(path, **overrides)


def load_weights_for(cfg: DictConfig, dm: SegmentationDataModule, path: str) -> Mask2Former:
    """The model stored at `path` (any format `load_model` reads), checked against the dataset."""
    model = read_model(cfg, path, dm.metadata.num_classes)
    if model.num_classes != dm.metadata.num_classes:
        raise CheckpointError(
            f"{path} predicts {model.num_classes} classes but dataset '{cfg.dataset.name}' "
            f"({cfg.task.name}) has {dm.metadata.num_classes}"
        )
    # the checkpoint's own class names (stored since training) against the dataset's
    check_classes_agree(
        getattr(model, "class_names", None),
        dm.metadata.class_names,
        str(path),
        cfg.dataset.name,
        getattr(model, "is_thing", None),
        dm.metadata.is_thing,
    )
    return model.train()  # Lightning switches modes itself


def evaluate(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, float]:
    """Metrics of given weights on the validation split; printed as a table and written as JSON.
    SIGUSR1/SIGTERM stop it at the next batch with no metrics written (`Interrupted`, exit 75;
    SIGUSR1 requeues a SLURM job)."""
    stop = StopAtNextBatch("evaluate")
    stop.install()  # early: SLURM may signal while the job is still starting
    try:
        return _evaluate(cfg, output_dir, stop)
    except Interrupted:
        print(
            "no metrics written: they would be those of part of the split; run the same command "
            "again to evaluate (a requeued SLURM job does)",
            file=sys.stderr,
            flush=True,
        )
        raise
    finally:
        stop.uninstall()
        finish_wandb()


def _evaluate(cfg: DictConfig, output_dir: Path | None, stop: L.Callback) -> dict[str, float]:
    validate_config(cfg, "evaluate")
    dm = build_datamodule(cfg)
    dm.setup("test")  # the annotation files checked before a folder or a W&B run is made
    check_run_has_work(cfg, dm, train=False)
    module = build_module(cfg, dm, model=load_weights_for(cfg, dm, cfg.checkpoint))
    use_runtime(cfg, module)
    output_dir = Path(output_dir or hydra_output_dir())
    output_dir.mkdir(parents=True, exist_ok=True)
    callbacks: list[L.Callback] = []
    if cfg.get("save_predictions"):
        from ..callbacks import PredictionSaver

        callbacks.append(
            PredictionSaver(prediction_writer(cfg, dm, output_dir / "predictions", "val"))
        )
    if cfg.get("report"):
        callbacks.append(report_writer(cfg, dm, output_dir))
    callbacks.append(stop)  # after the writers: a stopped batch's files are written first
    trainer = build_trainer(cfg, output_dir, build_logger(cfg, output_dir), callbacks)
    (logged,) = trainer.test(module, datamodule=dm, verbose=False)
    results = scalars(logged, "test/")
    summary = {
        "output_dir": str(output_dir),
        "checkpoint": str(cfg.checkpoint),
        "test": results,
        "metrics_file": "eval_metrics.json",
    }
    if cfg.get("save_predictions"):
        summary["predictions"] = str(output_dir / "predictions")
    if cfg.get("report"):
        summary["report"] = str(output_dir / "report.html")
    if trainer.is_global_zero:  # metrics are already synchronised across ranks
        (output_dir / "eval_metrics.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    return results


def report_writer(cfg: DictConfig, dm: SegmentationDataModule, output_dir: Path) -> L.Callback:
    """The callback of `report=true`: per-image scores during the test, report.html at the end."""
    from ..callbacks import ReportWriter
    from ..outputs.report import ReportCollector

    meta = dm.metadata
    collector = ReportCollector(
        cfg.task.name,
        meta.num_classes,
        meta.thing_ids,
        meta.stuff_ids,
        meta.class_names,
        meta.colors,
        worst_k=int(cfg.get("report_worst_k", 8)),
        thumb_size=int(cfg.get("report_thumb_size", 384)),
        ignore_label=meta.ignore_label,
        instance_score_threshold=cfg.get("instance_score_threshold", 0.5),
    )
    details = {"checkpoint": str(cfg.checkpoint), "dataset": str(cfg.dataset.name)}
    return ReportWriter(collector, output_dir, details)


class InputsFailed(UserError, RuntimeError):
    """Predict ran on every readable input and wrote its files, but some inputs could not be
    read: `failed` lists (input, reason), `written` the files of the others."""

    def __init__(self, failed: list[tuple[str, str]], written: list[Path]) -> None:
        self.failed = failed
        self.written = written
        names = "\n".join(f"  {name}: {reason}" for name, reason in failed)
        super().__init__(f"{len(failed)} input(s) could not be read:\n{names}")


def prediction_writer(
    cfg: DictConfig,
    dm: SegmentationDataModule,
    out_dir: Path,
    split: str | None,
    settings: str | None = None,
):
    """The writer of predict (`split` None: folder inputs) or of evaluate's save_predictions;
    `settings` (predict): the fingerprint that lets a rerun resume the folder."""
    from ..outputs.prediction_writer import PredictionWriter

    return PredictionWriter(
        cfg.task.name,
        dm.metadata,
        out_dir,
        dataset=cfg.dataset.name if split else None,
        split=split,
        method=str(cfg.get("method", "m2f")),
        overlays=bool(cfg.get("overlays", True)),
        score_threshold=cfg.get("instance_score_threshold", 0.5),
        settings=settings,
    )


# keys that do not change what predict writes for an image
_NOT_SETTINGS = ("inputs", "verbose", "progress_every_n_steps", "logger")


def prediction_settings(cfg: DictConfig) -> str:
    """A fingerprint of what makes predict's files: the config (but the inputs) and the
    checkpoint file (path, size, time; for a hub id its cached snapshot, i.e. its commit). A rerun
    resumes a folder only under the same one."""
    config = OmegaConf.to_container(cfg, resolve=False)
    for key in _NOT_SETTINGS:
        config.pop(key, None)
    from ..checkpoints.hub import resolve_weights

    try:  # a hub id: its snapshot folder in the HF cache, named by the commit
        checkpoint = resolve_weights(str(cfg.checkpoint), local_only=True)
    except CheckpointError:
        checkpoint = Path(str(cfg.checkpoint))
    if checkpoint.exists():
        stat = checkpoint.stat()
        config["checkpoint file"] = [str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns]
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def predict(cfg: DictConfig, output_dir: Path | None = None) -> list[Path]:
    """Run on plain images (`inputs=`) or on a dataset split (`split=`); write overlays and the
    task's result files, each image's as soon as it is done. Inputs that cannot be read are
    named at the end (`InputsFailed`, after everything else is written). SIGUSR1/SIGTERM stop it
    at the next batch with the lists of what was done (`Interrupted`, exit 75; SIGUSR1 requeues
    a SLURM job); a rerun in the same folder skips the images that are done."""
    stop = StopAtNextBatch("predict")
    stop.install()  # early: SLURM may signal while the job is still starting
    try:
        return _predict(cfg, output_dir, stop)
    finally:
        stop.uninstall()


def _predict(cfg: DictConfig, output_dir: Path | None, stop: L.Callback) -> list[Path]:
    from ..callbacks import PredictionSaver
    from ..checkpoints.stored import read_stored_settings
    from ..outputs.prediction_writer import PROGRESS_FILE
    from ..predictor.from_checkpoint import (
        FROM_CHECKPOINT,
        model_from_checkpoint,
        resolve_task_choice,
        uses_checkpoint,
    )

    validate_config(cfg, "predict")  # inputs= or split=, not both
    output_dir = Path(output_dir or hydra_output_dir())
    inputs, split = cfg.get("inputs"), cfg.get("split")
    if inputs:
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    model, metadata = None, None
    if uses_checkpoint(cfg):  # the task and/or the classes: the checkpoint's own
        if cfg.dataset.name == FROM_CHECKPOINT:
            cfg, model, metadata = model_from_checkpoint(cfg)
        else:
            cfg = resolve_task_choice(cfg, read_stored_settings(cfg.checkpoint))
    dm = build_datamodule(cfg, inputs or None, split or None, metadata)
    module = build_module(cfg, dm, model=model or load_weights_for(cfg, dm, cfg.checkpoint))
    use_runtime(cfg, module)
    dm.setup("predict")
    for name, reason in dm.predict_set.skipped:
        print(f"skipped {name}: {reason}", flush=True)
    out_dir = output_dir / "predictions"
    writer = prediction_writer(cfg, dm, out_dir, split or None, prediction_settings(cfg))
    saver = PredictionSaver(writer)
    total = len(dm.predict_set)
    done = dm.predict_set.skip(writer.resume())
    if done:
        print(f"{done} of {total} images already predicted in {out_dir}: skipped", flush=True)
    # one process: a DDP predict would return each rank's share only (and write partial files)
    single = cfg.copy()
    with open_dict(single):
        single.trainer.update(devices=1, num_nodes=1, strategy="auto", sync_batchnorm=False)
    trainer = build_trainer(single, output_dir, False, [saver, stop])
    try:
        if len(dm.predict_set):
            trainer.predict(module, datamodule=dm, return_predictions=False)
        else:
            saver.files = writer.finish()
    except Interrupted:
        print(
            f"predict stopped: {len(writer.images)} of {total} images done, their files and the "
            f"lists of them under {out_dir} ({PROGRESS_FILE}); run the same command with "
            f"hydra.run.dir={output_dir} to predict the other {total - len(writer.images)} (a "
            "requeued SLURM job does)",
            file=sys.stderr,
            flush=True,
        )
        raise
    written = saver.files
    print(f"wrote {len(written)} files under {out_dir}", flush=True)
    if saver.unreadable:
        raise InputsFailed(saver.unreadable, written)
    return written


def print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from ..runs.run_log import plain_console

    table = Table(title="m2f-lightning", show_header=False)
    table.add_row("outputs", summary["output_dir"])
    if "last_checkpoint" in summary:
        table.add_row("last checkpoint", summary["last_checkpoint"])
    if "train_seconds" in summary:
        table.add_row("training", f"{summary['global_step']} steps in {summary['train_seconds']} s")
    results = summary.get("test") or summary.get("val") or {}
    for key, value in results.items():
        table.add_row(key, f"{value:.2f}")
    metrics_file = summary.get("metrics_file", "metrics.json")
    table.add_row("metrics file", str(Path(summary["output_dir"]) / metrics_file))
    if "report" in summary:
        table.add_row("report", summary["report"])
    plain_console().print(table)
