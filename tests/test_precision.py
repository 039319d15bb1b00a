"""Precision as the paper: mixed on CUDA (bf16 where native, else fp16 with loss scaling), fp32 on
CPU; an explicit `precision=` wins; fp16 runs keep their GradScaler state in checkpoints."""

from pathlib import Path

import lightning as L
import pytest
import torch

from m2f_lightning.cli.builders import build_datamodule, build_module, validate_config
from m2f_lightning.cli.main import CONFIG_DIR
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.runs.precision import resolve_precision, trainer_precision
from tests.helpers import TINY_OVERRIDES, compose

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if p.stem != "demo")


@pytest.mark.parametrize(
    "value,cuda,bf16,expected",
    [
        ("auto", True, True, "bf16-mixed"),
        ("auto", True, False, "16-mixed"),
        ("auto", False, False, "32"),
        ("auto", False, True, "32"),
        ("32", True, True, "32"),
        ("16-mixed", True, True, "16-mixed"),
        ("bf16-mixed", False, False, "bf16-mixed"),
        (32, True, True, "32"),
        (None, True, True, "32"),
    ],
)
def test_resolve_precision(value, cuda: bool, bf16: bool, expected: str) -> None:
    assert resolve_precision(value, cuda, bf16) == expected


def test_bad_precision_is_refused_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="auto, 32, 32-true, 16-mixed, bf16-mixed"):
        resolve_precision("fp16", True, True)
    cfg = compose("train", ["trainer.precision=fp16"], tmp_path)
    with pytest.raises(ValueError, match="trainer.precision=fp16: must be one of"):
        validate_config(cfg)


def test_trainer_precision_uses_cuda_only_where_the_trainer_may(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert trainer_precision({"accelerator": "gpu", "precision": "auto"}) == "16-mixed"
    assert trainer_precision({"accelerator": "cpu", "precision": "auto"}) == "32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert trainer_precision({"accelerator": "auto", "precision": "auto"}) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_precision({"accelerator": "auto", "precision": "auto"}) == "32"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_train_in_auto_precision_unless_told(experiment: str, tmp_path: Path) -> None:
    cfg = compose("train", [f"experiment={experiment}"], tmp_path)
    validate_config(cfg, gpus=8)  # the recipes' machine
    assert cfg.trainer.precision == "auto"
    cfg = compose("train", [f"experiment={experiment}", "precision=16-mixed"], tmp_path)
    assert cfg.trainer.precision == "16-mixed"
    cfg = compose("train", [f"experiment={experiment}", "trainer.precision=32"], tmp_path)
    assert str(cfg.trainer.precision) == "32"


def test_16_mixed_keeps_the_grad_scaler_in_checkpoints(tmp_path: Path) -> None:
    """Lightning turns `precision=16-mixed` on a CPU trainer into bf16 (no scaler); the CUDA
    plugin is the same class with a scaler, so it is built here for the CPU directly."""
    from lightning.pytorch.plugins import MixedPrecision

    write_dataset("demo", tmp_path / "datasets", num=2, num_val=1, seed=0)
    cfg = compose(
        "train",
        [
            "task=panoptic",
            "dataset=synthetic",
            *TINY_OVERRIDES,
            f"paths.datasets_dir={tmp_path / 'datasets'}",
            "dataset.train_aug={recipe: lsj, size: 64}",
            "precision=16-mixed",
        ],
        tmp_path,
    )
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    plugin = MixedPrecision("16-mixed", "cpu")
    assert isinstance(plugin.scaler, torch.amp.GradScaler)
    trainer = L.Trainer(
        accelerator="cpu",
        plugins=[plugin],
        max_steps=2,
        gradient_clip_val=0.01,  # the recipe's clipping: unscaled gradients are clipped
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    path = tmp_path / "amp.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=True)["MixedPrecision"]
    assert state["scale"] == plugin.scaler.get_scale() and "_growth_tracker" in state
