"""Issue 23 §4: nothing of a training run is lost at a pre-emption: a validation the signal
interrupted is done again by the resumed run (its metrics logged), and the last step's logged
loss reaches the logger."""

import csv
import os
import signal
from pathlib import Path

import lightning as L
import pytest

from m2f_lightning.cli import commands
from m2f_lightning.cli.commands import train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.runs.preemption import Preempted
from tests.helpers import compose, synthetic_panoptic


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=4, num_val=2, seed=0)
    return root


class _SignalIn(L.Callback):
    def __init__(self, hook: str, step: int) -> None:
        self.step, self.sent = step, False
        setattr(self, hook, self._send)

    def _send(self, trainer, *args) -> None:
        if not self.sent and not trainer.sanity_checking and trainer.global_step == self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)


def _rows(run: Path, version: int) -> list[dict[str, str]]:
    path = run / "csv" / f"version_{version}" / "metrics.csv"
    with path.open() as f:
        return list(csv.DictReader(f))


def _preempt(monkeypatch, cfg, run: Path, hook: str, step: int) -> None:
    build_callbacks = commands.build_callbacks
    monkeypatch.setattr(
        commands, "build_callbacks", lambda *a: [*build_callbacks(*a), _SignalIn(hook, step)]
    )
    with pytest.raises(Preempted):
        train(cfg, run)
    monkeypatch.setattr(commands, "build_callbacks", build_callbacks)


@pytest.mark.slow
def test_a_validation_cut_by_a_preemption_is_done_by_the_resumed_run(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Before: the resumed run went on to step 2; the validation of step 1 never ran again and
    its metrics were never logged."""
    overrides = synthetic_panoptic(
        datasets,
        "dataset.max_steps=2",
        "dataset.val_every_n_steps=1",
        "logger=csv",
        "test_after_training=false",
    )
    cfg = compose("train", overrides, tmp_path)
    _preempt(monkeypatch, cfg, tmp_path, "on_validation_batch_end", step=1)
    capsys.readouterr()
    summary = train(compose("train", overrides, tmp_path), tmp_path)
    assert summary["global_step"] == 2
    printed = capsys.readouterr().out
    assert "resumed at step 1" in printed
    assert "validation at step 1:" in printed and "validation at step 2:" in printed
    # Lightning logs a validation at the count of steps before its own: 0 for step 1
    validated = [int(r["step"]) for r in _rows(tmp_path, 1) if r.get("val/PQ")]
    assert validated == [0, 1]


@pytest.mark.slow
def test_the_last_step_loss_is_logged_before_a_preemption(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: Lightning hands a step's metrics to the loggers after `on_train_batch_end`, where
    the pre-emption leaves: the loss of the step the checkpoint holds was never logged."""
    overrides = synthetic_panoptic(
        datasets,
        "dataset.max_steps=4",
        "dataset.val_every_n_steps=0",
        "logger=csv",
        "trainer.log_every_n_steps=50",
        "test_after_training=false",
    )
    _preempt(monkeypatch, compose("train", overrides, tmp_path), tmp_path, "on_train_batch_end", 2)
    (row,) = [r for r in _rows(tmp_path, 0) if r.get("train/loss")]
    assert int(row["step"]) == 1  # the second step (Lightning counts logged steps from 0)
    assert float(row["train/loss"]) > 0


class _SignalInSanityCheck(L.Callback):
    def on_sanity_check_start(self, trainer, *args) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
def test_a_signal_during_the_sanity_check_stops_at_the_first_step(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """SLURM's time-limit warning can come while a job still starts. Before: the run stopped in
    the sanity check at step 0, and the resumed run logged every step one later than the step it
    trained (its first loss at step 1, the last at step 4 of a 4-step run)."""
    overrides = synthetic_panoptic(
        datasets,
        "dataset.max_steps=4",
        "dataset.val_every_n_steps=4",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        "test_after_training=false",
    )
    build_callbacks = commands.build_callbacks
    monkeypatch.setattr(
        commands, "build_callbacks", lambda *a: [*build_callbacks(*a), _SignalInSanityCheck()]
    )
    with pytest.raises(Preempted):
        train(compose("train", overrides, tmp_path), tmp_path)
    monkeypatch.undo()
    printed = capsys.readouterr().out
    assert train(compose("train", overrides, tmp_path), tmp_path)["global_step"] == 4
    versions = sorted(int(p.parent.name[8:]) for p in tmp_path.glob("csv/version_*/metrics.csv"))
    logged = [[int(r["step"]) for r in _rows(tmp_path, v) if r.get("train/loss")] for v in versions]
    assert logged == [[0], [1, 2, 3]]  # each start's steps, as Lightning counts them (from 0)
    assert "pre-empted (SIGUSR1 during training): saved" in printed
