"""Sweeps end in a table: `summary.csv` / `summary.md` in the sweep folder, one row per
configuration (seeds grouped), every job shown with its state. A real tiny multirun with the
basic launcher, and hand-made sweep folders for the states a short test cannot reach."""

import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from m2f_lightning.cli.sweep_summary import main, read_sweep, write_summary
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.runs.preemption import Preempted
from m2f_lightning.runs.run_record import RunRecord, read_summary
from tests.helpers import synthetic_panoptic

ROOT = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_real_multirun_ends_with_its_table_even_when_a_job_fails(tmp_path: Path) -> None:
    """`train.py -m seed=1,x`: the job with seed x fails its config check, which makes Hydra's
    sweeper raise before `on_multirun_end`; the table is written anyway, the finished job with
    the metrics of its metrics.json, the failed one with its error line, grouped as seeds."""
    write_dataset("demo", tmp_path / "datasets", num=4, num_val=2, seed=0)
    sweep = tmp_path / "sweep"
    args = synthetic_panoptic(
        tmp_path / "datasets",
        "dataset.max_steps=1",
        "dataset.val_every_n_steps=1",
        "test_after_training=false",
        "seed=1,x",
        f"hydra.sweep.dir={sweep}",
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # Hydra reports the failed job
    assert "| 1 x | 2 | 1 |" in done.stdout  # the table is printed

    finished = json.loads((sweep / "0" / "metrics.json").read_text())  # the run's own file
    jobs = _rows(sweep / "jobs.csv")
    assert [j["job"] for j in jobs] == ["0", "1"] and [j["seed"] for j in jobs] == ["1", "x"]
    assert jobs[0]["state"] == "finished" and jobs[0]["steps"] == "1"
    for name in ("PQ", "PQ_th", "PQ_st"):
        assert float(jobs[0][name]) == pytest.approx(finished["val"][f"val/{name}"])
    assert jobs[1]["state"] == "failed" and jobs[1]["error"] == "seed=x: must be an integer"
    assert jobs[1]["PQ"] == ""

    (group,) = _rows(sweep / "summary.csv")
    assert (group["seeds"], group["n_seeds"], group["n_failed"]) == ("1 x", "2", "1")
    assert float(group["PQ_median"]) == pytest.approx(finished["val"]["val/PQ"])
    assert group["PQ_std"] == ""  # one finished seed: no standard deviation
    assert group["state"] == "1 finished, 1 failed"
    markdown = (sweep / "summary.md").read_text()
    assert "| 1 | x |  |  |  |  |  | failed | seed=x: must be an integer |" in markdown

    # the command on the finished folder writes the same table
    (sweep / "summary.csv").unlink()
    main([str(sweep)])
    assert _rows(sweep / "summary.csv") == [group]


# ---- hand-made sweep folders ---------------------------------------------------------------


def _sweep_folder(folder: Path, task_overrides: list[str]) -> None:
    folder.mkdir(parents=True)
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": None,
            },
            "overrides": {"task": task_overrides},
        },
        "task": {"name": "panoptic"},
    }
    (folder / "multirun.yaml").write_text(yaml.safe_dump(multirun))


def _job(
    folder: Path, num: int, overrides: list[str], summary: dict | None, task: str = "panoptic"
) -> Path:
    job = folder / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"task": {"name": task}}))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    return job


def _finished(pq: float, pq_th: float, pq_st: float, steps: int = 10) -> dict:
    metrics = {"PQ": pq, "PQ_th": pq_th, "PQ_st": pq_st, "SQ": 70.0}
    return {"state": "finished", "task": "panoptic", "steps": steps, "wall_seconds": 12.5,
            "metrics": metrics}  # fmt: skip


def test_seeds_make_one_row_per_other_setting_with_their_statistics(tmp_path: Path) -> None:
    """`optimizer.lr=1e-4,2e-4 seed=1,2,3`: two rows; median / min / max / sample std of each
    metric over the finished seeds (numpy's, ddof=1), the seeds counted, a failed one too."""
    sweep = tmp_path / "sweep"
    _sweep_folder(sweep, ["task=panoptic", "optimizer.lr=1e-4,2e-4", "seed=1,2,3"])
    rng = np.random.default_rng(0)
    values = {}
    num = 0
    for lr in ("0.0001", "0.0002"):
        for seed in ("1", "2", "3"):
            overrides = ["task=panoptic", f"optimizer.lr={lr}", f"seed={seed}"]
            if lr == "0.0002" and seed == "2":
                summary = {"state": "failed", "task": "panoptic", "steps": 4,
                           "error": "RuntimeError: CUDA out of memory"}  # fmt: skip
            else:
                pq, th, st = (float(v) for v in rng.uniform(10, 60, size=3))
                summary = _finished(pq, th, st)
                values.setdefault(lr, []).append({"PQ": pq, "PQ_th": th, "PQ_st": st})
            _job(sweep, num, overrides, summary)
            num += 1

    write_summary(sweep)
    rows = _rows(sweep / "summary.csv")
    assert [r["optimizer.lr"] for r in rows] == ["0.0001", "0.0002"]
    assert [r["seeds"] for r in rows] == ["1 2 3", "1 2 3"]
    assert [(r["n_seeds"], r["n_failed"]) for r in rows] == [("3", "0"), ("3", "1")]
    assert [r["state"] for r in rows] == ["3 finished", "2 finished, 1 failed"]
    for row in rows:
        for name in ("PQ", "PQ_th", "PQ_st"):
            per_seed = np.array([v[name] for v in values[row["optimizer.lr"]]])
            assert float(row[f"{name}_median"]) == pytest.approx(np.median(per_seed))
            assert float(row[f"{name}_min"]) == pytest.approx(per_seed.min())
            assert float(row[f"{name}_max"]) == pytest.approx(per_seed.max())
            assert float(row[f"{name}_std"]) == pytest.approx(per_seed.std(ddof=1))
    assert "SQ_median" not in rows[0]  # the task's final metrics only
    jobs = _rows(sweep / "jobs.csv")
    assert len(jobs) == 6 and jobs[4]["error"] == "RuntimeError: CUDA out of memory"
    markdown = (sweep / "summary.md").read_text()
    median = statistics.median(v["PQ"] for v in values["0.0001"])
    assert f"| 0.0001 | 1 2 3 | 3 | 0 | {median:.2f} |" in markdown
    assert "## Jobs" in markdown


def test_every_job_is_shown_with_its_state_never_dropped(tmp_path: Path) -> None:
    """Finished, pre-empted, failed (recorded, or only in train.log), running, killed and not
    yet started jobs of one sweep: one row each, in job order, with their state and error."""
    sweep = tmp_path / "sweep"
    _sweep_folder(sweep, ["dataset.max_steps=10,20,30,40,50,60,70"])
    values = [f"dataset.max_steps={n}" for n in (10, 20, 30, 40, 50, 60, 70)]
    _job(sweep, 0, [values[0]], _finished(41.0, 40.0, 43.0))
    _job(sweep, 1, [values[1]], {"state": "preempted", "task": "panoptic", "steps": 7,
                                 "wall_seconds": 30.0, "error": "pre-empted at step 7"})  # fmt: skip
    _job(sweep, 2, [values[2]], {"state": "failed", "task": "panoptic", "steps": 3,
                                 "error": "FloatingPointError: loss is nan"})  # fmt: skip
    log_only = _job(sweep, 3, [values[3]], None)
    (log_only / "train.log").write_text("starting\nerror: dataset 'x': no folder /d/x\n")
    now = time.time()
    running = {"state": "running", "task": "panoptic", "started_unix": now - 100,
               "host": socket.gethostname(), "pid": os.getpid()}  # fmt: skip
    _job(sweep, 4, [values[4]], running)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    _job(sweep, 5, [values[5]], dict(running, pid=int(gone.stdout)))
    # job 6 has no folder yet (a SLURM job still pending)

    write_summary(sweep)
    rows = _rows(sweep / "summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5", "6"]
    assert [r["dataset.max_steps"] for r in rows] == ["10", "20", "30", "40", "50", "60", "70"]
    states = [r["state"] for r in rows]
    assert states == ["finished", "preempted", "failed", "failed", "running", "lost", "pending"]
    assert rows[0]["PQ"] == "41.0" and rows[0]["PQ_th"] == "40.0" and rows[0]["steps"] == "10"
    assert rows[1]["steps"] == "7" and rows[1]["wall_s"] == "30.0"
    assert rows[2]["error"] == "FloatingPointError: loss is nan"
    assert rows[3]["error"] == "dataset 'x': no folder /d/x"
    assert 100 <= float(rows[4]["wall_s"]) < 1000  # time since it started
    assert "ended without recording how" in rows[5]["error"]
    assert rows[6]["PQ"] == rows[6]["steps"] == ""
    markdown = (sweep / "summary.md").read_text()
    assert "| 1 | 20 |  |  |  | 7 | 30.00 | preempted | pre-empted at step 7 |" in markdown
    assert "| 6 | 70 |  |  |  |  |  | pending |  |" in markdown


def test_the_swept_keys_come_from_the_jobs_without_multirun_yaml(tmp_path: Path) -> None:
    """A folder without multirun.yaml (copied, or another sweeper): the keys whose values differ
    between the jobs are the swept ones; instance and semantic jobs show AP and mIoU."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for num, task, metrics in ((0, "instance", {"AP": 12.5}), (1, "semantic", {"mIoU": 33.0})):
        summary = {"state": "finished", "task": task, "steps": 5, "metrics": metrics}
        _job(sweep, num, [f"task={task}", "dataset=ade20k"], summary, task=task)
    assert read_sweep(sweep).swept == ["task"]
    write_summary(sweep)
    rows = _rows(sweep / "summary.csv")
    assert [(r["task"], r["AP"], r["mIoU"]) for r in rows] == [
        ("instance", "12.5", ""),
        ("semantic", "", "33.0"),
    ]


def test_the_command_names_a_folder_that_is_not_a_sweep(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert f"error: {tmp_path} holds no job of a sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err


# ---- the run's own summary.json --------------------------------------------------------------


def test_run_record_states_and_wall_time_across_a_resume(tmp_path: Path) -> None:
    """running at the start; preempted / failed with the error line and the step reached;
    finished with the final metrics; a resumed run adds the earlier attempt's wall time."""

    class Trainer:
        global_step = 7

    record = RunRecord(tmp_path)
    record.stopped(ValueError("before the run held its folder"))
    assert read_summary(tmp_path) is None  # nothing written before start()

    record.start("panoptic", resumed=False)
    assert read_summary(tmp_path)["state"] == "running"
    record.trainer = Trainer()
    record.stopped(Preempted("pre-empted at step 7 during training: ..."))
    first = read_summary(tmp_path)
    assert (first["state"], first["steps"]) == ("preempted", 7)
    assert first["error"] == "pre-empted at step 7 during training: ..."

    record = RunRecord(tmp_path)
    record.start("panoptic", resumed=True)
    assert read_summary(tmp_path)["earlier_seconds"] == first["wall_seconds"]
    record.finished({"global_step": 10, "val": {"val/PQ": 40.0}, "test": {"PQ": 41.0}})
    done = read_summary(tmp_path)
    assert (done["state"], done["steps"], done["metrics"]) == ("finished", 10, {"PQ": 41.0})
    assert done["wall_seconds"] >= first["wall_seconds"]

    record = RunRecord(tmp_path)
    record.start("semantic", resumed=False)
    record.finished({"global_step": 3, "val": {"val/mIoU": 5.0}})  # no test after training
    assert read_summary(tmp_path)["metrics"] == {"mIoU": 5.0}
    record = RunRecord(tmp_path)
    record.start("semantic", resumed=False)
    record.stopped(RuntimeError("line one\nline two"))
    failed = read_summary(tmp_path)
    assert (failed["state"], failed["error"], failed["steps"]) == (
        "failed",
        "RuntimeError: line one",
        None,
    )
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
