"""A training run's folder (issue 23, part 3): checkpoints whole or absent (a full disk), resume
past a truncated last.ckpt, a fresh start leaving no file for the next resume, a checkpoint with no
step left, and one run at a time per folder."""

import builtins
import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from m2f_lightning.cli import commands
from m2f_lightning.cli.commands import train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.errors import CheckpointError
from tests.helpers import compose, synthetic_panoptic


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=4, num_val=2, seed=0)
    return root


def overrides(datasets: Path, *extra: str, every: int = 1) -> list[str]:
    """A tiny run saving a checkpoint every `every` steps."""
    return synthetic_panoptic(
        datasets,
        "dataset.val_every_n_steps=0",
        "test_after_training=false",
        f"checkpoint.every_n_train_steps={every}",
        *extra,
    )


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


class FullDisk:
    """The disk of `folder` with `free` bytes left once armed: a write into a file under `folder`
    stores what fits and raises ENOSPC, as a real full disk does. The system's temporary folder
    is on another disk (as on most clusters), so a move from it into `folder` is a copy."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder, self.free = folder.resolve(), None
        real_open, real_rename = builtins.open, os.rename

        def inside(path: object) -> bool:
            return isinstance(path, (str, os.PathLike)) and Path(path).resolve().is_relative_to(
                self.folder
            )

        def capped_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            return _Capped(f, self) if inside(file) and ("w" in mode or "a" in mode) else f

        def rename(src, dst, *args, **kwargs):
            if inside(dst) and not inside(src):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
            return real_rename(src, dst, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", capped_open)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies go through write()


class _Capped:
    def __init__(self, f, disk: FullDisk) -> None:
        self._f, self._disk = f, disk

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self._disk.free is not None and len(data) > self._disk.free:
            self._f.write(data[: self._disk.free])
            self._disk.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self._disk.free is not None:
            self._disk.free -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


class _FillDiskAfter(L.Callback):
    def __init__(self, disk: FullDisk, step: int) -> None:
        self.disk, self.step = disk, step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            self.disk.free = 100_000  # a fraction of a checkpoint


def test_a_full_disk_leaves_the_last_good_checkpoint_and_no_truncated_file(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's save moved a file from the temp folder: across disks a copy, which a full disk
    cut short under the final name (a 2 MB step checkpoint, and a raw OSError)."""
    disk = FullDisk(tmp_path / "checkpoints", monkeypatch)
    build_callbacks = commands.build_callbacks
    monkeypatch.setattr(
        commands, "build_callbacks", lambda *a: [*build_callbacks(*a), _FillDiskAfter(disk, 3)]
    )
    common = overrides(datasets, "dataset.max_steps=4", every=2)
    with pytest.raises(CheckpointError) as err:
        train(compose("train", common, tmp_path), tmp_path)
    text = str(err.value)
    assert "step0000004.ckpt" in text and "the disk is full" in text
    assert "earlier checkpoints" in text
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    assert step_of(folder / "last.ckpt") == step_of(folder / "step0000002.ckpt") == 2
    disk.free = None  # space freed: the rerun continues from step 2
    monkeypatch.setattr(commands, "build_callbacks", build_callbacks)
    assert train(compose("train", common, tmp_path), tmp_path)["global_step"] == 4
    assert step_of(folder / "last.ckpt") == 4


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # written after the step checkpoint: newer


def test_resume_auto_passes_over_a_truncated_last_ckpt_and_says_so(
    datasets: Path, tmp_path: Path
) -> None:
    """It used to stop on the truncated file, beside an intact checkpoint of the same step."""
    train(compose("train", overrides(datasets, "dataset.max_steps=2"), tmp_path), tmp_path)
    folder = tmp_path / "checkpoints"
    _truncate(folder / "last.ckpt")
    cfg = compose("train", overrides(datasets, "dataset.max_steps=3"), tmp_path)
    with pytest.warns(UserWarning, match="resume=auto: skipped 1 checkpoint") as record:
        summary = train(cfg, tmp_path)
    text = str(next(r.message for r in record if "resume=auto" in str(r.message)))
    assert str(folder / "last.ckpt") in text and "truncated" in text
    assert f"newest readable one instead: {folder / 'step0000002.ckpt'} (step 2)" in text
    assert summary["global_step"] == 3  # one step on from step 2
    names = sorted(p.name for p in folder.iterdir())
    assert "step0000003.ckpt" in names and not any("-v" in name for name in names)
    assert step_of(folder / "last.ckpt") == 3  # the truncated file replaced, not kept beside


def test_resume_auto_with_no_readable_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from m2f_lightning.runs.resume import resume_path

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint .*last\.ckpt.*resume=null"):
        resume_path(OmegaConf.create({"resume": "auto"}), tmp_path)


def test_a_fresh_start_leaves_no_file_for_the_next_resume(datasets: Path, tmp_path: Path) -> None:
    """resume=null beside a truncated last.ckpt used to write last-v1.ckpt, and the next
    resume=auto stopped on the truncated last.ckpt (or continued an earlier run's)."""
    train(compose("train", overrides(datasets, "dataset.max_steps=2"), tmp_path), tmp_path)
    folder = tmp_path / "checkpoints"
    _truncate(folder / "last.ckpt")
    fresh = overrides(datasets, "dataset.max_steps=1", "resume=null")
    assert train(compose("train", fresh, tmp_path), tmp_path)["global_step"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step0000001.ckpt"]
    (aside,) = tmp_path.glob("replaced-*")  # the earlier run's, kept but out of the way
    assert sorted(p.name for p in aside.iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    cfg = compose("train", overrides(datasets, "dataset.max_steps=2"), tmp_path)
    assert train(cfg, tmp_path)["global_step"] == 2  # resumed from this run's step 1
    assert step_of(folder / "last.ckpt") == 2


def test_a_checkpoint_with_no_step_left_stops_before_training(
    datasets: Path, tmp_path: Path
) -> None:
    """It used to end with exit 0 after 0 steps."""
    run = tmp_path / "run"
    train(compose("train", overrides(datasets, "dataset.max_steps=2"), run), run)
    last = run / "checkpoints" / "last.ckpt"
    for max_steps in (1, 2):
        again = overrides(datasets, f"dataset.max_steps={max_steps}", f"resume={last}")
        with pytest.raises(CheckpointError) as err:
            train(compose("train", again, tmp_path / "other"), tmp_path / "other")
        text = str(err.value)
        assert f"{last} (resume={last}): it is at step 2" in text
        assert f"dataset.max_steps (trainer.max_steps) is {max_steps}" in text
    auto = overrides(datasets, "dataset.max_steps=1")
    with pytest.raises(CheckpointError, match="found by resume=auto.*at step 2"):
        train(compose("train", auto, run), run)
    assert not (tmp_path / "other").exists()


@pytest.fixture
def live_pid():
    """The PID of a process that runs during the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


LOCK_NAME = "run.lock"


def _lock_of(folder: Path, **holder: object) -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(holder))
    return folder / LOCK_NAME


def test_a_second_run_in_a_busy_folder_stops_naming_the_first(
    datasets: Path, tmp_path: Path, live_pid: int, capsys: pytest.CaptureFixture
) -> None:
    """It used to resume from the first run's live checkpoint and train beside it."""
    from m2f_lightning.errors import UserError

    train(compose("train", overrides(datasets, "dataset.max_steps=1"), tmp_path), tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end
    host = socket.gethostname()
    lock = _lock_of(tmp_path, host=host, pid=live_pid, started="today")
    capsys.readouterr()
    with pytest.raises(UserError) as err:
        train(compose("train", overrides(datasets, "dataset.max_steps=2"), tmp_path), tmp_path)
    assert f"PID {live_pid} on host {host}" in str(err.value) and str(lock) in str(err.value)
    assert "resuming" not in capsys.readouterr().out
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 1
    assert lock.is_file()  # the first run's lock is left alone


def test_a_lock_left_by_a_process_that_ended_is_taken_over(tmp_path: Path) -> None:
    from m2f_lightning.runs.run_lock import RunLock

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = int(proc.stdout)
    _lock_of(tmp_path, host=socket.gethostname(), pid=dead)
    lock = RunLock(tmp_path)
    lock.check()
    with pytest.warns(UserWarning, match=f"process {dead} on this host, which no longer runs"):
        lock.acquire()
    assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_NAME).read_text()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path: Path) -> None:
    from m2f_lightning.runs.run_lock import RunFolderLocked, RunLock

    path = _lock_of(tmp_path, host="node-17", pid=4242, slurm_job="991", started="08:00")
    for step in (RunLock(tmp_path).check, RunLock(tmp_path).acquire):
        with pytest.raises(RunFolderLocked) as err:
            step()
        text = str(err.value)
        assert "PID 4242 on host node-17 (SLURM job 991), started 08:00" in text
        assert f"delete {path}" in text
    assert "node-17" in path.read_text()


def test_a_requeued_slurm_job_takes_over_its_own_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_pid: int
) -> None:
    """SLURM requeues a job under the same id, on this node or another; the old instance is gone."""
    from m2f_lightning.runs.run_lock import RunFolderLocked, RunLock

    monkeypatch.setenv("SLURM_JOB_ID", "991")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    _lock_of(tmp_path, host="node-17", pid=4242, slurm_job="991")
    with pytest.warns(UserWarning, match=r"earlier instance of this SLURM job \(991, requeued\)"):
        RunLock(tmp_path).acquire()
    # the same job on this host with its process alive is a second run (another srun step)
    _lock_of(tmp_path, host=socket.gethostname(), pid=live_pid, slurm_job="991")
    with pytest.raises(RunFolderLocked, match=f"PID {live_pid}"):
        RunLock(tmp_path).acquire()


ROOT = Path(__file__).resolve().parents[1]


def test_a_folder_that_cannot_be_written_is_named_and_nothing_is_made(tmp_path: Path) -> None:
    from m2f_lightning.errors import OutputFolderError
    from m2f_lightning.runs.run_dir import check_writable_folder

    check_writable_folder(tmp_path / "new" / "run", "outputs")
    assert list(tmp_path.iterdir()) == []  # checked, not made
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(OutputFolderError) as err:
        check_writable_folder(tmp_path / "file" / "run", "the run's outputs")
    text = str(err.value)
    assert f"cannot write the run's outputs to {tmp_path / 'file' / 'run'}" in text
    assert f"cannot be made in {tmp_path / 'file'}" in text and "hydra.run.dir" in text


def test_a_wandb_folder_that_cannot_be_written_stops_before_anything(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B used to fail inside wandb.init with an OSError traceback, called a bug."""
    from m2f_lightning.errors import OutputFolderError

    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").write_text("a file where W&B's folder should be")
    cfg = compose("train", [*overrides(datasets, "dataset.max_steps=1"), "logger=wandb"], tmp_path)
    with pytest.raises(OutputFolderError, match=r"W&B's files \(logger=wandb\) to .*wandb"):
        train(cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wandb"]  # no checkpoints, no lock


def _cli(entry: str, args: list[str], cwd: Path, env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(WANDB_MODE="disabled", PYTHONPATH=str(ROOT), **env_extra)
    code = f"from m2f_lightning.cli.main import {entry}; {entry}()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_run_folder_that_cannot_be_made_is_one_error_line(tmp_path: Path) -> None:
    """Hydra used to fail making the folder, with its traceback."""
    (tmp_path / "file").write_text("")
    done = _cli("train_main", ["task=panoptic", f"hydra.run.dir={tmp_path}/file/run"], tmp_path, {})
    assert done.returncode == 1, done.stderr
    assert " ".join(done.stderr.split()).startswith("error: cannot write the run's outputs to ")
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr


@pytest.mark.slow
def test_doctor_makes_no_folder_and_no_file(datasets: Path, tmp_path: Path) -> None:
    """It used to make outputs/<date>/<time>/doctor.log (common.yaml's run folder won)."""
    project, cwd = tmp_path / "project", tmp_path / "cwd"
    project.mkdir(), cwd.mkdir()
    args = ["task=panoptic", "dataset=synthetic", f"paths.datasets_dir={datasets}"]
    done = _cli("doctor_main", args, cwd, {"M2F_PROJECT_ROOT": str(project)})
    assert done.returncode == 0, done.stderr
    assert "no problems found" in done.stdout
    assert list(project.iterdir()) == [] and list(cwd.iterdir()) == []


@pytest.mark.slow
def test_cli_in_a_busy_folder_stops_before_hydra_writes_there(
    tmp_path: Path, live_pid: int
) -> None:
    """Hydra used to write its .hydra/ files over those of the run training there."""
    run = tmp_path / "run"
    _lock_of(run, host=socket.gethostname(), pid=live_pid)
    done = _cli("train_main", ["task=panoptic", f"hydra.run.dir={run}"], tmp_path, {})
    assert done.returncode == 1, done.stderr
    text = " ".join(done.stderr.split())  # the console wraps long lines
    assert text.startswith("error: another run is training in ")
    assert f"PID {live_pid}" in text and "Traceback" not in text
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
