"""Two-process DDP on CPU (ddp_spawn, gloo): trains, checkpoints and validates with metrics
synchronised across the ranks."""

from pathlib import Path

import pytest
import torch

from m2f_lightning.commands import train
from m2f_lightning.data.synthetic import write_dataset
from tests.helpers import TINY_OVERRIDES, compose


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains_and_validates(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    write_dataset("demo", datasets, num=4, num_val=2, seed=0)
    cfg = compose(
        "train",
        [
            "task=panoptic",
            "dataset=synthetic",
            *TINY_OVERRIDES,
            f"paths.datasets_dir={datasets}",
            "dataset.train_aug={recipe: lsj, size: 128}",
            "trainer.devices=2",
            "trainer.strategy=ddp_spawn",
            "dataset.max_steps=2",
            "dataset.val_every_n_steps=2",
            "test_after_training=false",
        ],
        tmp_path,
    )
    summary = train(cfg, output_dir=tmp_path / "run")
    # ddp_spawn trains in child processes: the step count lives in their checkpoint
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert "val/PQ" in summary["val"]
