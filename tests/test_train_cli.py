"""The training system end to end on generated data: every task × dataset runs, resume
continues, evaluate and predict write their files, precision switches (W&B: test_wandb.py,
DDP: test_ddp.py)."""

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from m2f_lightning import commands
from m2f_lightning.commands import evaluate, predict, train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.preemption import Preempted
from m2f_lightning.resume import resume_path
from tests.helpers import TINY_OVERRIDES, compose

FORMATS = {
    "coco": ["coco_panoptic", "coco_instance"],
    "ade20k": ["ade20k"],
    "cityscapes": ["cityscapes"],
    "mapillary_vistas": ["mapillary"],
    "synthetic": ["demo"],
}
AUG = {
    "coco": "dataset.train_aug={recipe: lsj, size: 128}",
    "synthetic": "dataset.train_aug={recipe: lsj, size: 128}",
    "ade20k": "dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 96]}",
    "cityscapes": "dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 128]}",
    "mapillary_vistas": "dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 96]}",
}
COMBINATIONS = [
    ("coco", "panoptic"),
    ("coco", "instance"),
    ("coco", "semantic"),
    ("ade20k", "semantic"),
    ("ade20k", "panoptic"),
    ("ade20k", "instance"),
    ("cityscapes", "semantic"),
    ("cityscapes", "instance"),
    ("cityscapes", "panoptic"),
    ("mapillary_vistas", "semantic"),
    ("mapillary_vistas", "panoptic"),
    ("synthetic", "panoptic"),
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    for i, fmt in enumerate(f for fmts in FORMATS.values() for f in fmts):
        write_dataset(fmt, root, num=4, num_val=2, seed=i)
    return root


def overrides(datasets: Path, dataset: str, task: str, *extra: str) -> list[str]:
    return [
        f"task={task}",
        f"dataset={dataset}",
        *TINY_OVERRIDES,
        f"paths.datasets_dir={datasets}",
        AUG[dataset],
        *extra,
    ]


@pytest.mark.parametrize("dataset,task", COMBINATIONS)
def test_fast_dev_run_for_every_task_and_dataset(
    datasets: Path, tmp_path: Path, dataset: str, task: str
) -> None:
    cfg = compose("train", overrides(datasets, dataset, task, "debug=fast"), tmp_path)
    summary = train(cfg, output_dir=tmp_path)
    assert summary["global_step"] == 1
    expected = {"panoptic": "val/PQ", "instance": "val/AP", "semantic": "val/mIoU"}[task]
    assert expected in summary["val"]


def test_resume_continues_steps_and_schedule(datasets: Path, tmp_path: Path) -> None:
    common = overrides(
        datasets,
        "synthetic",
        "panoptic",
        "checkpoint.every_n_train_steps=2",
        "dataset.val_every_n_steps=0",
        "test_after_training=false",
    )
    first = train(
        compose("train", [*common, "dataset.max_steps=4", "trainer.max_steps=2"], tmp_path),
        tmp_path,
    )
    assert first["global_step"] == 2
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    # same output dir, resume=auto: continues from last.ckpt up to 4 steps of the same schedule
    second = train(compose("train", [*common, "dataset.max_steps=4"], tmp_path), tmp_path)
    assert second["global_step"] == 4
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    scheduler = ckpt["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 4
    assert scheduler["_last_lr"][-1] == pytest.approx(1e-4 * (1 - 4 / 4) ** 0.9, abs=1e-12)


def test_init_weights_fine_tunes_on_another_class_set(
    datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Weights trained on one dataset start a run on another with other classes (the class head
    is re-initialised); the step count starts from 0 (not a resume)."""
    pretrain = [
        *overrides(datasets, "synthetic", "panoptic"),
        "dataset.max_steps=2",
        "dataset.val_every_n_steps=0",
        "test_after_training=false",
    ]
    train(compose("train", pretrain, tmp_path / "pre"), tmp_path / "pre")
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    finetune = overrides(datasets, "ade20k", "semantic", "debug=fast", f"init_weights={ckpt}")
    summary = train(compose("train", finetune, tmp_path / "ft"), tmp_path / "ft")
    assert summary["global_step"] == 1
    assert f"init_weights: loaded {ckpt}; class head re-initialised for 150 classes" in (
        capsys.readouterr().out
    )


class _SignalAtStep(L.Callback):
    """Sends this process SIGUSR1 (what SLURM sends before the time limit) after step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_preemption_signal_saves_at_the_step_and_the_rerun_finishes_the_schedule(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = overrides(
        datasets,
        "synthetic",
        "panoptic",
        "dataset.max_steps=6",
        "dataset.val_every_n_steps=3",
        "checkpoint.every_n_train_steps=100",  # no periodic checkpoint: only the pre-emption one
    )
    build_callbacks = commands.build_callbacks
    monkeypatch.setattr(
        commands, "build_callbacks", lambda *a: [*build_callbacks(*a), _SignalAtStep(2)]
    )
    with pytest.raises(Preempted, match="pre-empted at step 2"):
        train(compose("train", common, tmp_path), tmp_path)
    saved = torch.load(tmp_path / "preempted.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handler removed again

    monkeypatch.setattr(commands, "build_callbacks", build_callbacks)
    summary = train(compose("train", common, tmp_path), tmp_path)
    assert summary["global_step"] == 6
    assert not (tmp_path / "preempted.ckpt").exists()  # replaced by the final last.ckpt
    final = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert final["global_step"] == 6 and final["lr_schedulers"][0]["last_epoch"] == 6
    # the last validation ran on the final weights (the test after training uses them too)
    val = {k.removeprefix("val/"): v for k, v in summary["val"].items()}
    assert summary["test"] == pytest.approx(val, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_evaluate_and_predict_write_their_files(datasets: Path, tmp_path: Path, task: str) -> None:
    common = overrides(datasets, "synthetic", task)
    train(
        compose(
            "train",
            [
                *common,
                "dataset.max_steps=1",
                "dataset.val_every_n_steps=0",
                "test_after_training=false",
            ],
            tmp_path / "train",
        ),
        tmp_path / "train",
    )
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    results = evaluate(
        compose("evaluate", [*common, f"checkpoint={ckpt}"], tmp_path / "eval"), tmp_path / "eval"
    )
    written = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert written["test"] == pytest.approx(results)
    images = sorted((datasets / "synthetic" / "val2017").glob("*.jpg"))
    files = predict(
        compose(
            "predict",
            [*common, f"checkpoint={ckpt}", f"inputs=[{images[0]},{images[1]}]"],
            tmp_path / "pred",
        ),
        tmp_path / "pred",
    )
    names = {f.name for f in files}
    assert {f"{p.stem}_overlay.png" for p in images[:2]} <= names
    expected = {
        "panoptic": "panoptic.json",
        "instance": "instances_results.json",
        "semantic": f"{images[0].stem}_semantic.png",
    }
    assert expected[task] in names


def test_bf16_mixed_precision_trains_a_step(datasets: Path, tmp_path: Path) -> None:
    cfg = compose(
        "train",
        overrides(datasets, "synthetic", "panoptic", "debug=fast", "precision=bf16-mixed"),
        tmp_path,
    )
    summary = train(cfg, output_dir=tmp_path)
    assert summary["global_step"] == 1


def test_auto_resume_takes_the_newest_of_last_and_the_preemption_checkpoint(tmp_path: Path) -> None:
    import os

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"resume": "auto"})
    assert resume_path(cfg, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    assert resume_path(cfg, tmp_path) == str(last)
    preempted = tmp_path / "preempted.ckpt"  # written on SIGUSR1, after last.ckpt
    preempted.write_bytes(b"")
    os.utime(last, ns=(1_000_000_000, 1_000_000_000))
    assert resume_path(cfg, tmp_path) == str(preempted)
    assert resume_path(OmegaConf.create({"resume": None}), tmp_path) is None
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        resume_path(OmegaConf.create({"resume": str(tmp_path / "missing.ckpt")}), tmp_path)


def test_csv_logger_writes_losses_and_lr(datasets: Path, tmp_path: Path) -> None:
    import csv

    cfg = compose(
        "train",
        overrides(
            datasets,
            "synthetic",
            "panoptic",
            "logger=csv",
            "dataset.max_steps=2",
            "dataset.val_every_n_steps=0",
            "trainer.log_every_n_steps=1",
            "test_after_training=false",
        ),
        tmp_path,
    )
    train(cfg, output_dir=tmp_path)
    (metrics_file,) = (tmp_path / "csv").rglob("metrics.csv")
    columns = next(csv.reader(metrics_file.open()))
    assert {"train/loss", "train/loss_mask", "train/loss_dice_0"} <= set(columns)
    assert any(c.startswith("lr-AdamW") for c in columns), columns
