"""Issue 23 §4-5: SIGUSR1/SIGTERM stop `m2f-evaluate` and `m2f-predict` at the next image with a
message and exit code 75 (evaluate writes no metrics; predict lists what it did and a rerun does
the rest only; SIGUSR1 requeues a SLURM job), and each command's log file holds its console.
Every case runs the real CLI in a subprocess; the signal is sent once the first image's files are
on disk (tests/pause_after_first_batch.py holds the run there until it is sent)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.checkpoints.io import save_model
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.runs.preemption import EXIT_INTERRUPTED
from tests.helpers import TINY_OVERRIDES, tiny_model

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["task=panoptic", "dataset=synthetic", *TINY_OVERRIDES, "dataset.eval_batch_size=1"]
NUM_IMAGES = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_model(tiny_model(num_classes=5), path)
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=2, num_val=NUM_IMAGES, seed=0)
    return root


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        pixels = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR" and "SLURM" not in k}
    env.update(WANDB_MODE="disabled", PYTHONPATH=str(ROOT), **extra)
    return env


def _cli(command: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    script = (
        f"import sys; from m2f_lightning.cli.main import {command}_main; sys.exit({command}_main())"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _signalled_run(
    command: str, args: list[str], first_file: str, signum: int, tmp_path: Path, env: dict
) -> subprocess.CompletedProcess:
    """Run `command`; once a file matching `first_file` (a glob under tmp_path) is written, send
    `signum`, then let the run go on past its first batch."""
    marker = tmp_path / "signal_sent"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.pause_after_first_batch", str(marker), command, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(first_file)):
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"{command} ended before writing {first_file}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"no {first_file} in 300 s"
        time.sleep(0.05)
    process.send_signal(signum)
    marker.touch()
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _listed(predictions: Path) -> set[str]:
    return {
        a["image_id"]
        for a in json.loads((predictions / "panoptic.json").read_text())["annotations"]
    }


def _plain(log: str) -> None:
    assert "\x1b" not in log and "\r" not in log  # no terminal codes, no rewritten lines


def _missing(done: subprocess.CompletedProcess, log: str) -> list[str]:
    """The lines the console showed (a line rewritten after a carriage return: as last shown)
    that the log lacks (the log's lines lose trailing blanks)."""
    logged = set(log.splitlines())
    shown = [line.rsplit("\r", 1)[-1].rstrip() for line in (done.stdout + done.stderr).split("\n")]
    return [line for line in shown if line and line not in logged]


def _row(text: str, key: str) -> str:
    """The summary table's row of `key`, its cells stripped."""
    (row,) = [line for line in text.splitlines() if line.startswith(f"│ {key} ")]
    return " | ".join(cell.strip() for cell in row.strip("│").split("│"))


@pytest.mark.slow
def test_predict_stops_at_the_next_image_and_the_rerun_does_only_the_rest(
    tmp_path: Path, checkpoint: Path, images: Path
) -> None:
    """Before: SIGTERM killed predict (exit -15): files of some images, no panoptic.json."""
    run = tmp_path / "run"
    args = [*ARGS, f"checkpoint={checkpoint}", f"inputs={images}", f"hydra.run.dir={run}"]
    out = run / "predictions"
    stopped = _signalled_run(
        "predict", args, "run/predictions/*_overlay.png", signal.SIGTERM, tmp_path, _env(tmp_path)
    )
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stdout + stopped.stderr
    assert "predict interrupted (SIGTERM) after 1 of 4 batches" in stopped.stderr
    assert "predict stopped: 1 of 4 images done" in stopped.stderr
    assert f"hydra.run.dir={run}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    # a consistent record of what was done: the one image's files, listed in the JSON
    assert sorted(p.name for p in out.glob("*_overlay.png")) == ["img0_overlay.png"]
    assert _listed(out) == {"img0"}
    progress = json.loads((out / "predicted.json").read_text())
    assert progress["complete"] is False and set(progress["images"]) == {"img0"}
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("img0_*")}

    rerun = _cli("predict", args, _env(tmp_path))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"1 of 4 images already predicted in {out}: skipped" in rerun.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("img0_*")} == first  # not redone
    assert len(list(out.glob("*_overlay.png"))) == len(list(out.glob("*_panoptic.png"))) == 4
    assert _listed(out) == {f"img{i}" for i in range(4)}
    assert json.loads((out / "predicted.json").read_text())["complete"] is True

    log = (run / "predict.log").read_text()
    _plain(log)
    assert "predict interrupted (SIGTERM) after 1 of 4 batches" in log  # the first run's stop
    assert "1 of 4 images already predicted" in log  # the rerun, appended
    assert "predict batch 3/3" in log  # progress lines, stdout not a terminal
    assert f"wrote 8 files under {out}" in log  # 3 images x 2 files, the two JSON files


@pytest.mark.slow
def test_predict_under_slurm_requeues_on_sigusr1(
    tmp_path: Path, checkpoint: Path, images: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    env = _env(tmp_path, SLURM_JOB_ID="4242", PATH=f"{bin_dir}:{os.environ['PATH']}")
    run = tmp_path / "run"
    args = [*ARGS, f"checkpoint={checkpoint}", f"inputs={images}", f"hydra.run.dir={run}"]
    stopped = _signalled_run(
        "predict", args, "run/predictions/*_overlay.png", signal.SIGUSR1, tmp_path, env
    )
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stdout + stopped.stderr
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "requeued SLURM job 4242" in stopped.stdout
    assert _listed(run / "predictions") == {"img0"}


@pytest.mark.slow
def test_evaluate_stops_without_metrics_and_says_so(
    tmp_path: Path, checkpoint: Path, datasets: Path
) -> None:
    """Before: SIGUSR1 killed evaluate (exit -10), nothing said."""
    run = tmp_path / "run"
    args = [
        *ARGS,
        f"paths.datasets_dir={datasets}",
        f"checkpoint={checkpoint}",
        "save_predictions=true",
        f"hydra.run.dir={run}",
    ]
    stopped = _signalled_run(
        "evaluate",
        args,
        "run/predictions/panoptic_val2017_m2f_results/*.png",
        signal.SIGUSR1,
        tmp_path,
        _env(tmp_path),
    )
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stdout + stopped.stderr
    assert "evaluate interrupted (SIGUSR1) after 1 of 4 batches" in stopped.stderr
    assert "no metrics written: they would be those of part of the split" in stopped.stderr
    assert "pre-empted outside a SLURM job: not requeued" in stopped.stderr
    assert not (run / "eval_metrics.json").exists()
    log = (run / "evaluate.log").read_text()
    _plain(log)
    assert "no metrics written" in log


@pytest.mark.slow
def test_each_command_log_holds_its_console(
    tmp_path: Path, checkpoint: Path, datasets: Path
) -> None:
    """Before: train.log, evaluate.log and doctor.log were 0 bytes."""
    train_run = tmp_path / "a_long_folder_name_so_that_the_summary_is_wider_than_80_columns" / "t"
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            *ARGS,
            f"paths.datasets_dir={datasets}",
            "dataset.train_aug={recipe: lsj, size: 128}",
            "dataset.max_steps=2",
            "dataset.val_every_n_steps=0",
            "progress_every_n_steps=1",
            f"hydra.run.dir={train_run}",
        ],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = (train_run / "train.log").read_text()
    _plain(log)
    for line in ("step 1/2  loss", "step 2/2  loss", "test batch 4/4"):
        assert line in log and line in done.stdout
    # the summary whole: its longest row is not cut at 80 columns, in the console or the log
    metrics_row = f"metrics file | {train_run / 'metrics.json'}"
    assert _row(done.stdout, "metrics file") == _row(log, "metrics file") == metrics_row
    assert "model       Mask2Former" in log  # the run's start block (callbacks.RunSummary)
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in log  # Lightning's log handler
    # every line the console showed (warnings, Lightning's messages, the tables) is in the log
    assert _missing(done, log) == []

    eval_run = tmp_path / "eval"
    args = [*ARGS, f"paths.datasets_dir={datasets}", f"hydra.run.dir={eval_run}"]
    done = _cli("evaluate", [*args, f"checkpoint={checkpoint}"], _env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    log = (eval_run / "evaluate.log").read_text()
    _plain(log)
    assert "test batch 4/4" in log
    assert _missing(done, log) == []
    assert _row(log, "metrics file") == f"metrics file | {eval_run / 'eval_metrics.json'}"

    doctor_run = tmp_path / "doctor"
    doctor = _cli(
        "doctor",
        [
            "task=panoptic",
            "dataset=synthetic",
            f"paths.datasets_dir={datasets}",
            "workers=1",
            f"hydra.run.dir={doctor_run}",
        ],
        _env(tmp_path),
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    log = (doctor_run / "doctor.log").read_text()
    _plain(log)
    # (its tqdm bars: the last state of each; `text=True` above reads their `\r` as new lines)
    for line in ("train: 100%", "[train] 2 records, 2 read without a problem", "no problems found"):
        assert line in log and line in doctor.stdout + doctor.stderr
    assert "train:   0%" not in log
