"""Training is a function of its seed and its checkpoint (CPU, bitwise): the same config and
seed give the same loss at every step whatever the number of loader workers, and a run killed
(SIGKILL) or pre-empted mid-epoch and resumed in the same output folder continues with exactly
the losses of the uninterrupted run."""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from m2f_lightning.cli import commands
from m2f_lightning.cli.commands import train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.runs.preemption import Preempted
from tests.helpers import TINY_OVERRIDES, compose

ROOT = Path(__file__).resolve().parents[1]
# 6 training images, 2 per batch: 3 steps per epoch; 7 steps cross two epoch boundaries and the
# checkpoint at step 4 is in the middle of the second epoch
STEPS, CHECKPOINT_STEP = 7, 4


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=6, num_val=2, seed=0)
    return root


def run_overrides(datasets: Path, *extra: str) -> list[str]:
    tiny = [o for o in TINY_OVERRIDES if not o.startswith(("logger=", "dataset.num_workers"))]
    return [
        "task=panoptic",
        "dataset=synthetic",
        *tiny,
        # drop path and LSJ on, so both random streams are exercised
        "++backbone.kwargs.drop_path_rate=0.2",
        "dataset.train_aug={recipe: lsj, size: 96, min_scale: 0.3, max_scale: 1.5}",
        f"paths.datasets_dir={datasets}",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        f"dataset.max_steps={STEPS}",
        "dataset.val_every_n_steps=0",
        f"checkpoint.every_n_train_steps={CHECKPOINT_STEP}",
        "test_after_training=false",
        "seed=3",
        *extra,
    ]


def losses(run_dir: Path) -> dict[int, float]:
    """`train/loss` per step from the newest CSV log of a run folder (a resumed run logs into a
    new version)."""
    files = sorted(
        (run_dir / "csv").glob("version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[1]),
    )
    assert files, f"no CSV log under {run_dir}"
    out: dict[int, float] = {}
    with files[-1].open() as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def train_in_process(datasets: Path, run_dir: Path, *extra: str) -> dict[int, float]:
    train(compose("train", run_overrides(datasets, *extra), run_dir), run_dir)
    return losses(run_dir)


@pytest.fixture(scope="module")
def uninterrupted(datasets: Path, tmp_path_factory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return train_in_process(datasets, run_dir, "dataset.num_workers=0")


@pytest.mark.slow
def test_same_seed_gives_the_same_loss_at_every_step_with_0_or_2_workers(
    datasets: Path, tmp_path: Path, uninterrupted: dict[int, float]
) -> None:
    assert len(uninterrupted) == STEPS
    assert len(set(uninterrupted.values())) == STEPS  # a real, varying loss
    again = train_in_process(datasets, tmp_path / "again", "dataset.num_workers=0")
    assert again == uninterrupted  # bitwise: float(str) of the logged values
    workers = train_in_process(datasets, tmp_path / "workers", "dataset.num_workers=2")
    assert workers == uninterrupted
    other_seed = train_in_process(datasets, tmp_path / "seed", "dataset.num_workers=0", "seed=4")
    assert other_seed[0] != uninterrupted[0]


def _subprocess_train(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_continues_the_same_losses(
    datasets: Path, tmp_path: Path, uninterrupted: dict[int, float]
) -> None:
    run_dir = tmp_path / "run"
    args = [*run_overrides(datasets, "dataset.num_workers=2"), f"hydra.run.dir={run_dir}"]
    killed = _subprocess_train(["-m", "tests.kill_after_checkpoint", str(CHECKPOINT_STEP), *args])
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert (run_dir / "checkpoints" / f"step{CHECKPOINT_STEP:07d}.ckpt").is_file()
    resumed = _subprocess_train(["train.py", *args])  # resume=auto, same hydra.run.dir
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout
    after = losses(run_dir)
    expected = {s: v for s, v in uninterrupted.items() if s >= CHECKPOINT_STEP}
    assert after == expected


class _SignalAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
def test_preemption_checkpoint_resumes_with_the_same_losses(
    datasets: Path, tmp_path: Path, uninterrupted: dict[int, float], monkeypatch
) -> None:
    build_callbacks = commands.build_callbacks
    monkeypatch.setattr(
        commands, "build_callbacks", lambda *a: [*build_callbacks(*a), _SignalAtStep(5)]
    )
    with pytest.raises(Preempted):
        train_in_process(datasets, tmp_path, "dataset.num_workers=0")
    monkeypatch.setattr(commands, "build_callbacks", build_callbacks)
    after = train_in_process(datasets, tmp_path, "dataset.num_workers=0")
    assert after == {s: v for s, v in uninterrupted.items() if s >= 5}
