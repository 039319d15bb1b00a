"""The SLURM launcher against a real cluster: a sweep goes out as a job array and every job
finishes, and a job signalled for pre-emption saves, requeues and resumes where it stopped.

Runs where a cluster answers (`bash scripts/local_slurm.sh start` makes one on this machine;
`.ci/run` does that when it can); skipped otherwise, unless M2F_REQUIRE_SLURM=1 (which `.ci/run`
sets once its cluster is up): then a cluster that does not answer fails the tests instead.
Partition: $M2F_TEST_SLURM_PARTITION or debug.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m2f_lightning.data.synthetic import write_dataset
from tests.helpers import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
PARTITION = os.environ.get("M2F_TEST_SLURM_PARTITION", "debug")


def _cluster_down_reason() -> str | None:
    """Why the partition cannot take jobs, or None when it answers with a usable node."""
    missing = [c for c in ("sinfo", "sacct", "scontrol", "scancel") if shutil.which(c) is None]
    if missing:
        return f"no SLURM client ({', '.join(missing)} not on PATH)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return f"sinfo -p {PARTITION} did not answer in 10 s"
    usable = ("idle", "mixed", "allocated", "completing")  # a trailing * means not responding
    if out.returncode != 0 or not set(out.stdout.split()) & set(usable):
        answer = (out.stdout + out.stderr).strip()
        return f"no SLURM partition '{PARTITION}' answering (sinfo -p {PARTITION}: {answer!r})"
    return None


DOWN_REASON = _cluster_down_reason()
REQUIRED = os.environ.get("M2F_REQUIRE_SLURM") == "1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.skipif(DOWN_REASON is not None and not REQUIRED, reason=str(DOWN_REASON)),
]


@pytest.fixture(autouse=True)
def _required_cluster() -> None:
    if DOWN_REASON is not None:  # only reached with M2F_REQUIRE_SLURM=1: the skipif passed
        pytest.fail(f"M2F_REQUIRE_SLURM=1 but {DOWN_REASON}", pytrace=False)


def _sweep(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    """`python train.py -m hydra/launcher=slurm ...` at tiny sizes, output under tmp_path/sweep."""
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("logger=")]
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=slurm",
        *overrides,
        *tiny,
        "logger=csv",
        f"paths.datasets_dir={tmp_path / 'datasets'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.launcher.partition={PARTITION}",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen, timeout: float = 420) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        subprocess.run(["scancel", "--name=train"], check=False)
        raise
    assert process.returncode == 0, output
    return output


def _job_ids(sweep: Path) -> list[str]:
    return sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir())


def _sacct_states(job_id: str, expected_rows: int, timeout: float = 60) -> list[str]:
    """Job-level states of an array job; sacct rows appear a few seconds after the jobs end."""
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id.split("_")[0], "-o", "State"],
            capture_output=True,
            text=True,
        )
        states = [s.strip() for s in out.stdout.splitlines() if s.strip()]
        if len(states) == expected_rows and all(s == "COMPLETED" for s in states):
            break
        time.sleep(1)
    return states


def test_users_semantic_sweep_runs_as_a_job_array(tmp_path: Path) -> None:
    """The README's sweep, `task=semantic dataset=ade20k optimizer.lr=1e-4,2e-4`, at tiny sizes."""
    write_dataset("ade20k", tmp_path / "datasets", num=4, num_val=2, seed=0)
    process = _sweep(
        tmp_path,
        "task=semantic",
        "dataset=ade20k",
        "optimizer.lr=1e-4,2e-4",
        "dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 96]}",
        "dataset.max_steps=4",
        "dataset.val_every_n_steps=4",
    )
    _finish(process)
    sweep = tmp_path / "sweep"
    for job, lr in (("0", 1e-4), ("1", 2e-4)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["global_step"] == 4 and "val/mIoU" in metrics["val"]
        assert f"optimizer.lr={lr:g}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    (job_id,) = {j.split("_")[0] for j in _job_ids(sweep)}
    assert _sacct_states(job_id, expected_rows=2) == ["COMPLETED", "COMPLETED"]


def _logged_steps(run_dir: Path) -> dict[str, list[int]]:
    steps = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with path.open() as f:
            steps[path.parent.name] = [int(row["step"]) for row in csv.DictReader(f) if row["step"]]
    return steps


def _job_printed(sweep: Path, text: str) -> bool:
    """Whether a job's submitit stdout log holds `text` yet."""
    return any(text in log.read_text() for log in sweep.glob(".submitit/*/*_log.out"))


def test_preempted_job_checkpoints_requeues_and_resumes(tmp_path: Path) -> None:
    """SIGUSR1 (what SLURM sends before the time limit) → preempted.ckpt at a step boundary and
    `scontrol requeue`; the requeued job resumes from it (no periodic checkpoint exists) at that
    step and finishes the schedule."""
    write_dataset("coco_panoptic", tmp_path / "datasets", num=8, num_val=2, seed=0)
    max_steps = 120
    process = _sweep(
        tmp_path,
        "task=panoptic",
        "dataset=coco",
        "dataset.train_aug={recipe: lsj, size: 128}",
        f"dataset.max_steps={max_steps}",
        f"dataset.val_every_n_steps={max_steps}",
        f"checkpoint.every_n_train_steps={10 * max_steps}",
        "trainer.log_every_n_steps=5",
        "progress_every_n_steps=5",
    )
    run = tmp_path / "sweep" / "0"
    deadline = time.monotonic() + 300
    # the job prints "step 5/120 ..." (flushed) once it trains: signal it then, far from the end
    while not _job_printed(tmp_path / "sweep", f"step 5/{max_steps}"):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the job printed no training step in 300 s"
        time.sleep(1)
    (job_id,) = _job_ids(tmp_path / "sweep")
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    _finish(process, timeout=600)

    logs = tmp_path / "sweep" / ".submitit" / job_id
    job_out = (logs / f"{job_id}_0_log.out").read_text()
    saved = re.search(
        r"pre-empted \(SIGUSR1 during training\): saved .*preempted.ckpt at step (\d+)", job_out
    )
    assert saved, f"no pre-emption save in the job's log:\n{job_out}"
    saved_at = int(saved[1])
    assert f"requeued SLURM job {job_id}" in job_out
    assert f"resuming from {run / 'preempted.ckpt'}" in job_out
    assert f"resumed at step {saved_at}" in job_out
    assert (
        f"Restored all states from the checkpoint at {run / 'preempted.ckpt'}"
        in (logs / f"{job_id}_0_log.err").read_text()
    )
    steps = _logged_steps(run)
    assert set(steps) == {"version_0", "version_1"}
    assert 0 < max(steps["version_0"]) <= saved_at < max_steps
    # the second run starts where the checkpoint was taken (first log row within 10 steps)
    assert saved_at <= min(steps["version_1"]) < saved_at + 10
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == max_steps
    # the last validation ran at the final step: the test after training (same images, final
    # weights) gives the same numbers
    val = {k.removeprefix("val/"): v for k, v in metrics["val"].items()}
    assert metrics["test"] == pytest.approx(val, rel=1e-5, abs=1e-6)
    assert not (run / "preempted.ckpt").exists()  # consumed: replaced by the final last.ckpt
    assert _sacct_states(job_id, expected_rows=1) == ["COMPLETED"]
