"""Issue 12 on a training run: checks before anything is made, nothing lost (checkpoints,
signals during validation and test), a rerun with another model refused with what to do."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from m2f_lightning.cli import commands
from m2f_lightning.cli.commands import train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.errors import CheckpointError, ConfigError, DataError
from m2f_lightning.runs.preemption import Preempted
from tests.helpers import compose, synthetic_panoptic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=4, num_val=2, seed=0)
    return root


def overrides(datasets: Path, *extra: str) -> list[str]:
    return synthetic_panoptic(datasets, "dataset.val_every_n_steps=0", *extra)


@pytest.mark.parametrize(
    "extra", [["dataset.batch_size=8"], ["trainer.devices=4", "trainer.strategy=ddp_spawn"]]
)
def test_a_run_that_would_make_no_step_stops_before_anything(
    datasets: Path, tmp_path: Path, extra: list[str]
) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"no training step can be made: .* 4 image\(s\)"):
        train(compose("train", overrides(datasets, *extra), out), out)
    assert not out.exists()  # no output folder, no checkpoints, no W&B run


def test_an_empty_validation_split_stops_before_anything(datasets: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_dataset("demo", root, num=2, num_val=1, seed=0)
    val = root / "synthetic" / "annotations" / "panoptic_val2017.json"
    data = json.loads(val.read_text())
    data["annotations"], data["images"] = [], []
    val.write_text(json.dumps(data))
    out = tmp_path / "run"
    with pytest.raises(DataError, match="validation split .* has no images"):
        train(compose("train", overrides(root), out), out)
    assert not out.exists()


def test_unwritable_checkpoint_folder_stops_at_start(datasets: Path, tmp_path: Path) -> None:
    tmp_path.joinpath("checkpoints").write_text("a file where the folder should be")
    with pytest.raises(CheckpointError, match=r"cannot write checkpoints to .*checkpoints"):
        train(compose("train", overrides(datasets, "dataset.max_steps=1"), tmp_path), tmp_path)


def test_a_checkpoint_lightning_did_not_write_stops_the_run(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning 2.6's atomic save swallows PermissionError (#21800): the run used to end with
    exit 0 and a metrics.json naming a last.ckpt that did not exist. A checkpoint writer that
    fails silently is still caught."""
    from m2f_lightning.callbacks import checkpointing

    monkeypatch.setattr(checkpointing, "write_atomically", lambda path, write: None)
    cfg = compose("train", overrides(datasets, "dataset.max_steps=1"), tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint .*\.ckpt was not written"):
        train(cfg, tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_rerun_with_another_model_size_says_what_to_do(datasets: Path, tmp_path: Path) -> None:
    common = overrides(datasets, "dataset.max_steps=1", "test_after_training=false")
    train(compose("train", common, tmp_path), tmp_path)
    bigger = [*common, "model.net.num_queries=7"]
    with pytest.raises(CheckpointError) as err:
        train(compose("train", bigger, tmp_path), tmp_path)
    text = str(err.value)
    assert (
        "last.ckpt (resume=auto found it" in text and "num_queries: 6 in the checkpoint, 7" in text
    )
    assert "resume=null" in text and "hydra.run.dir" in text
    summary = train(compose("train", [*bigger, "resume=null"], tmp_path), tmp_path)
    assert summary["global_step"] == 1


class _SignalIn(L.Callback):
    def __init__(self, hook: str, signum: int = signal.SIGUSR1) -> None:
        self.hook, self.signum, self.sent = hook, signum, False
        setattr(self, hook, self._send)

    def _send(self, trainer, *args) -> None:
        if not self.sent and not trainer.sanity_checking:
            self.sent = True
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow
@pytest.mark.parametrize(
    "hook,signum",
    [
        ("on_validation_batch_end", signal.SIGUSR1),
        ("on_validation_batch_end", signal.SIGTERM),
        ("on_test_batch_end", signal.SIGUSR1),
    ],
)
def test_signal_during_validation_or_test_stops_cleanly_and_the_rerun_finishes(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str, signum: int
) -> None:
    """The test after training used to run without the handler: SIGUSR1 killed the process."""
    common = overrides(datasets, "dataset.max_steps=2", "dataset.val_every_n_steps=1")
    build_callbacks = commands.build_callbacks
    monkeypatch.setattr(
        commands, "build_callbacks", lambda *a: [*build_callbacks(*a), _SignalIn(hook, signum)]
    )
    phase = "validation" if "validation" in hook else "the test after training"
    with pytest.raises(Preempted, match=f"during {phase}"):
        train(compose("train", common, tmp_path), tmp_path)
    assert torch.load(tmp_path / "preempted.ckpt", weights_only=True)["global_step"] >= 1
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    monkeypatch.setattr(commands, "build_callbacks", build_callbacks)
    summary = train(compose("train", common, tmp_path), tmp_path)
    assert summary["global_step"] == 2 and "PQ" in summary["test"]
    assert not (tmp_path / "preempted.ckpt").exists()


@pytest.mark.slow
def test_cli_without_data_prints_one_error_and_makes_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "task=panoptic",
            "dataset=coco",
            f"paths.datasets_dir={tmp_path / 'nothing'}",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "error: coco dataset not found" in done.stderr
    assert "Traceback" not in done.stderr
    assert not run_dir.exists()  # no output folder, no W&B run inside it
