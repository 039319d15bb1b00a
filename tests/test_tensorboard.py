"""logger=tensorboard: event files with the scalars and images W&B gets (losses, learning rate,
validation metrics, overlay panels), read back with TensorBoard's own reader."""

from pathlib import Path

import pytest

from m2f_lightning.cli.commands import train
from m2f_lightning.data.synthetic import write_dataset
from tests.helpers import compose, synthetic_panoptic


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=4, num_val=2, seed=0)
    return root


def test_tensorboard_logger_writes_losses_metrics_and_overlays(
    datasets: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = synthetic_panoptic(
        datasets,
        "logger=tensorboard",
        "dataset.max_steps=2",
        "dataset.val_every_n_steps=2",
        "trainer.log_every_n_steps=1",
        "num_vis_images=1",
        "test_after_training=false",
    )
    train(compose("train", overrides, tmp_path), output_dir=tmp_path)
    folder = tmp_path / "tensorboard"
    assert list(folder.glob("events.out.tfevents.*")), list(tmp_path.rglob("*"))
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/loss_mask", "val/PQ", "val/mIoU"} <= set(tags["scalars"]), tags
    assert any(t.startswith("lr-AdamW") for t in tags["scalars"]), tags["scalars"]
    assert [t for t in tags["images"] if t.startswith("val/overlays")], tags
    (image,) = events.Images(tags["images"][0])
    assert image.step == 2 and image.width > 0 and image.height > 0
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps and max(steps) <= 2
