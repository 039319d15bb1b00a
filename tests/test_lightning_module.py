"""Mask2FormerModule on its own (no Hydra, no data code): every loss term is logged, a checkpoint
rebuilds the same model with its class names, predict returns results at the original size."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from m2f_lightning.lightning_module import Mask2FormerModule
from m2f_lightning.losses import SetCriterion
from m2f_lightning.modeling import Mask2Former
from m2f_lightning.types import Batch
from tests.helpers import TINY_SWIN

CLASS_NAMES = ["sky", "ground", "circle", "square"]
MODEL_CONFIG = {
    "num_classes": 4,
    "backbone": "swin_t",
    "backbone_kwargs": {**TINY_SWIN, "window_size": 4, "drop_path_rate": 0.0},
    "num_queries": 6,
    "hidden_dim": 32,
    "mask_dim": 32,
    "pixel_decoder_dim": 32,
    "encoder_layers": 1,
    "encoder_ffn_dim": 32,
    "encoder_heads": 4,
    "decoder_layers": 3,
    "decoder_heads": 4,
    "decoder_ffn_dim": 32,
    "norm_groups": 8,
}


def make_module(task: str = "panoptic") -> Mask2FormerModule:
    return Mask2FormerModule(
        Mask2Former(**MODEL_CONFIG),
        task=task,
        class_names=CLASS_NAMES,
        thing_ids=[2, 3],
        stuff_ids=[0, 1],
        criterion=SetCriterion(4, num_points=64),
        optimizer={"lr": 1e-4},
        scheduler={"name": "poly"},
        max_steps=4,
    )


def make_batch(size: tuple[int, int] = (64, 64)) -> Batch:
    """Two images, each with a stuff region and one square thing."""
    h, w = size
    images = torch.rand(2, 3, h, w) * 255
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, : h // 2] = True
    masks[1, 10:30, 10:30] = True
    target = {"labels": torch.tensor([0, 3]), "masks": masks}
    return Batch(
        images=images,
        targets=[target, {k: v.clone() for k, v in target.items()}],
        image_sizes=[(h, w), (h, w)],
        orig_sizes=[(h, w), (h, w)],
        file_names=["a.jpg", "b.jpg"],
        image_ids=[0, 1],
    )


def loader(num_batches: int) -> DataLoader:
    batches = [make_batch() for _ in range(num_batches)]
    return DataLoader(batches, batch_size=None)


def test_training_logs_every_loss_term_and_the_lr_schedule(tmp_path: Path) -> None:
    module = make_module()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, train_dataloaders=loader(2))
    logged = set(trainer.logged_metrics)
    layers = MODEL_CONFIG["decoder_layers"]  # aux predictions 0..layers-1, plus the last layer
    expected = {"train/loss", "train/loss_ce", "train/loss_mask", "train/loss_dice"}
    expected |= {f"train/loss_{t}_{i}" for t in ("ce", "mask", "dice") for i in range(layers)}
    assert expected <= logged
    assert all(torch.isfinite(trainer.logged_metrics[k]) for k in expected)
    # stepped per iteration: poly over max_steps=4 after 2 steps
    lrs = trainer.lr_scheduler_configs[0].scheduler.get_last_lr()
    assert max(lrs) == pytest.approx(1e-4 * (1 - 2 / 4) ** 0.9)
    assert min(lrs) == pytest.approx(1e-5 * (1 - 2 / 4) ** 0.9)  # the backbone's ×0.1


def test_checkpoint_rebuilds_the_model_and_its_class_names(tmp_path: Path) -> None:
    module = make_module().eval()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = Mask2FormerModule.load_from_checkpoint(path, map_location="cpu").eval()
    assert restored.hparams.class_names == CLASS_NAMES
    assert restored.model.config == module.model.config
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        expected, got = module(images), restored(images)
    torch.testing.assert_close(got["pred_masks"], expected["pred_masks"])
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"])


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_predict_step_returns_results_at_the_original_size(task: str) -> None:
    module = make_module(task).eval()
    batch = make_batch((64, 96))
    batch.orig_sizes = [(50, 75), (50, 75)]
    with torch.no_grad():
        results = module.predict_step(batch, 0)
    assert [r.file_name for r in results] == ["a.jpg", "b.jpg"]
    assert [r.image_id for r in results] == [0, 1]
    for result in results:
        if task == "panoptic":
            assert tuple(result.panoptic_seg.shape) == (50, 75)
            assert all(0 <= s.category_id < 4 for s in result.segments)
        elif task == "instance":
            assert tuple(result.instances.masks.shape[1:]) == (50, 75)
        else:
            assert tuple(result.sem_seg.shape) == (4, 50, 75)


def test_class_names_must_match_the_model() -> None:
    with pytest.raises(ValueError, match="3 class names for a model with 4 classes"):
        Mask2FormerModule(
            Mask2Former(**MODEL_CONFIG),
            task="semantic",
            class_names=CLASS_NAMES[:3],
            thing_ids=[],
            stuff_ids=[0, 1, 2, 3],
        )


def test_text_progress_prints_step_loss_lr_and_eta(tmp_path: Path, capsys) -> None:
    from m2f_lightning.callbacks import TextProgress

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TextProgress(every_n_steps=1)],
    )
    trainer.fit(make_module(), train_dataloaders=loader(2))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all("loss" in line and "lr" in line and "eta" in line for line in lines)
    with pytest.raises(ValueError, match="every_n_steps"):
        TextProgress(every_n_steps=0)
