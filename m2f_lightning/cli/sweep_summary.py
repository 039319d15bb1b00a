"""The table of a sweep (`python train.py -m ...`): one row per configuration with its swept
values, the task's final metrics, steps, wall time and state, written as `summary.csv` and
`summary.md` in the sweep folder and printed.

Made at the end of a multirun by the Hydra callback `SweepSummary` (conf/train.yaml), and on any
sweep folder, finished or not, by `m2f-sweep-summary <sweep dir>`. Each job's state comes from
its `summary.json` (`run_record`); a job that stopped before writing one shows the `error:` line
of its `train.log`; a job of the sweep with no folder yet is "pending". When `seed` is swept, the
jobs that differ only in their seed make one row: median, min, max and sample standard deviation
(n-1) of each metric over the seeds that finished, the number of seeds and of failed ones
(`jobs.csv` and the `Jobs` part of summary.md keep one row per job).
"""

import argparse
import atexit
import csv
import functools
import io
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..errors import UserError
from ..runs.run_record import FAILED, FINISHED, RUNNING, read_summary, write_text_atomically

# the final metrics shown per task (panoptic: the paper's PQ with its thing / stuff split)
TASK_METRICS = {"panoptic": ("PQ", "PQ_th", "PQ_st"), "instance": ("AP",), "semantic": ("mIoU",)}
PENDING, LOST = "pending", "lost"
SEED_KEY = "seed"


@dataclass
class Job:
    """One job of a sweep as its folder tells it."""

    num: int
    values: dict[str, str]  # override key -> value, as in the job's .hydra/overrides.yaml
    state: str = PENDING
    error: str = ""
    task: str | None = None
    steps: int | None = None
    wall_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Sweep:
    folder: Path
    swept: list[str]  # the keys that vary, in the order of the command line
    jobs: list[Job]

    @property
    def metric_names(self) -> list[str]:
        names: list[str] = []
        tasks = [job.task for job in self.jobs if job.task in TASK_METRICS]
        for task in dict.fromkeys(tasks):
            names += [m for m in TASK_METRICS[task] if m not in names]
        return names


@functools.cache
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _parse(overrides: list[str]) -> list[Any]:
    return _parser().parse_overrides(overrides)


def _key(override: Any) -> str:
    return override.get_key_element().lstrip("+~")


def _job_values(overrides: list[str]) -> dict[str, str]:
    """{key: value} of a job's overrides, spelled as Hydra's parser writes them (as the sweep's
    planned jobs are); an override it cannot parse is split at its first `=`."""
    values = {}
    for text in overrides:
        try:
            (override,) = _parse([text])
            values[_key(override)] = override.get_value_element_as_str()
        except Exception:
            key, _, value = text.partition("=")
            values[key.lstrip("+~")] = value
    return values


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _planned_jobs(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The swept keys and every job's values as the sweep's command line makes them (Hydra's
    basic sweeper: the product of the swept values, in job-number order); ([], []) when
    multirun.yaml is missing or another sweeper made the jobs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    config = _load_yaml(folder / "multirun.yaml")
    hydra_cfg = config.get("hydra") if isinstance(config, dict) else None
    if not isinstance(hydra_cfg, dict):
        return [], []
    sweeper = hydra_cfg.get("sweeper") or {}
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += list((hydra_cfg.get("overrides") or {}).get("task") or [])
    try:
        parsed = _parse(arguments)
    except Exception:  # a sweep syntax that needs the config to expand (glob): no plan
        return [], []
    swept = [_key(o) for o in parsed if o.is_sweep_override()]
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return swept, []
    try:
        (batch,) = BasicSweeper.split_arguments(parsed, None)
    except Exception:
        return swept, []
    return swept, [_job_values(job) for job in batch]


def _last_error_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1].removeprefix("error:").strip() if errors else ""


def _still_running(folder: Path, summary: dict[str, Any]) -> bool:
    """False when the run's lock (or its summary) names a process on this host that has ended:
    killed without recording how. A run on another host cannot be checked: taken as running."""
    import socket

    from ..runs.run_lock import LOCK_NAME, _process_start, _runs

    holder = _load_yaml(folder / LOCK_NAME)  # JSON is YAML
    holder = holder if isinstance(holder, dict) else summary
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    start = holder.get("process_start")
    return _runs(pid) and start in (None, _process_start(pid))


def _read_job(folder: Path, num: int, values: dict[str, str]) -> Job:
    job = Job(num, values)
    summary = read_summary(folder)
    config = _load_yaml(folder / ".hydra" / "config.yaml")
    if isinstance(config, dict) and isinstance(config.get("task"), dict):
        job.task = config["task"].get("name")
    if summary is None:
        old = _load_yaml(folder / "metrics.json")  # a run of a version before summary.json
        error = _last_error_line(folder / "train.log")
        if isinstance(old, dict) and "global_step" in old:
            job.state, job.steps = FINISHED, old.get("global_step")
            job.wall_seconds = old.get("train_seconds")
            val = {k.removeprefix("val/"): v for k, v in (old.get("val") or {}).items()}
            job.metrics = old.get("test") or val
        elif error:
            job.state, job.error = FAILED, error
        else:
            job.state = RUNNING  # started, not yet as far as recording its state
        return job
    job.task = summary.get("task") or job.task
    job.state = str(summary.get("state", RUNNING))
    job.error = str(summary.get("error") or "")
    job.steps = summary.get("steps")
    job.wall_seconds = summary.get("wall_seconds")
    job.metrics = dict(summary.get("metrics") or {})
    if job.state == RUNNING:
        started = summary.get("started_unix")
        if isinstance(started, int | float):
            job.wall_seconds = round(summary.get("earlier_seconds", 0) + time.time() - started, 1)
        if not _still_running(folder, summary):
            job.state = LOST
            job.error = "its process has ended without recording how (killed?)"
    return job


def read_sweep(folder: Path) -> Sweep:
    """Every job of the sweep in `folder`: those with a folder, and those planned without one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"{folder} is not a folder: give the sweep's folder (multirun/<date>/<time>)"
        )
    swept, planned = _planned_jobs(folder)
    jobs: dict[int, Job] = {}
    for overrides_file in sorted(folder.glob("*/.hydra/overrides.yaml")):
        job_folder = overrides_file.parent.parent
        hydra_cfg = _load_yaml(job_folder / ".hydra" / "hydra.yaml") or {}
        num = ((hydra_cfg.get("hydra") or {}).get("job") or {}).get("num")
        if not isinstance(num, int):
            num = int(job_folder.name) if job_folder.name.isdigit() else len(planned) + len(jobs)
        overrides = _load_yaml(overrides_file) or []
        jobs[num] = _read_job(job_folder, num, _job_values([str(o) for o in overrides]))
    for num, values in enumerate(planned):
        jobs.setdefault(num, Job(num, values))
    if not jobs:
        raise UserError(
            f"{folder} holds no job of a sweep (no <job>/.hydra/overrides.yaml, no multirun.yaml)"
        )
    ordered = [jobs[n] for n in sorted(jobs)]
    if not swept:  # no command line to read: the keys whose values differ between jobs
        keys = dict.fromkeys(k for job in ordered for k in job.values)
        swept = [k for k in keys if len({job.values.get(k) for job in ordered}) > 1]
    return Sweep(folder, swept, ordered)


def job_table(sweep: Sweep) -> tuple[list[str], list[list[Any]]]:
    """One row per job: number, swept values, metrics, steps, wall time, state, error."""
    metrics = sweep.metric_names
    header = ["job", *sweep.swept, *metrics, "steps", "wall_s", "state", "error"]
    rows = [
        [
            job.num,
            *(job.values.get(k, "") for k in sweep.swept),
            *(job.metrics.get(m) for m in metrics),
            job.steps,
            job.wall_seconds,
            job.state,
            job.error,
        ]
        for job in sweep.jobs
    ]
    return header, rows


def _stats(values: list[float]) -> list[float | None]:
    """median, min, max, sample standard deviation (None below 2 values)."""
    if not values:
        return [None] * 4
    std = statistics.stdev(values) if len(values) > 1 else None
    return [statistics.median(values), min(values), max(values), std]


def _whole(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def seed_table(sweep: Sweep) -> tuple[list[str], list[list[Any]]]:
    """One row per setting of the swept keys other than `seed`: the seeds, their number, how
    many failed, each metric's median / min / max / std over the finished seeds, the median
    steps and wall time, and the states counted."""
    others = [k for k in sweep.swept if k != SEED_KEY]
    metrics = sweep.metric_names
    header = [*others, "seeds", "n_seeds", "n_failed"]
    for m in metrics:
        header += [f"{m}_median", f"{m}_min", f"{m}_max", f"{m}_std"]
    header += ["steps", "wall_s", "state"]
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in sweep.jobs:
        groups.setdefault(tuple(job.values.get(k, "") for k in others), []).append(job)
    rows = []
    for setting, jobs in groups.items():
        finished = [j for j in jobs if j.state == FINISHED]
        row: list[Any] = [*setting, " ".join(j.values.get(SEED_KEY, "?") for j in jobs)]
        row += [len(jobs), sum(j.state in (FAILED, LOST) for j in jobs)]
        for m in metrics:
            values = [float(j.metrics[m]) for j in finished if m in j.metrics]
            row += _stats([v for v in values if math.isfinite(v)])  # NaN: undefined, left out
        steps = [j.steps for j in finished if j.steps is not None]
        walls = [j.wall_seconds for j in finished if j.wall_seconds is not None]
        row += [_whole(statistics.median(steps)) if steps else None]
        row += [round(statistics.median(walls), 1) if walls else None]
        states = dict.fromkeys(j.state for j in jobs)
        row.append(", ".join(f"{sum(j.state == s for j in jobs)} {s}" for s in states))
        rows.append(row)
    return header, rows


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return out.getvalue()


def _md_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(folder: Path) -> str:
    """Write summary.csv, summary.md (and jobs.csv) in the sweep folder; returns the Markdown."""
    sweep = read_sweep(folder)
    jobs = job_table(sweep)
    grouped = SEED_KEY in sweep.swept
    main = seed_table(sweep) if grouped else jobs
    title = f"# Sweep {sweep.folder}\n\n"
    if grouped:
        text = f"{title}{_md_table(*main)}\n## Jobs\n\n{_md_table(*jobs)}"
    else:
        text = title + _md_table(*main)
    write_text_atomically(sweep.folder / "summary.csv", _csv_text(*main))
    write_text_atomically(sweep.folder / "jobs.csv", _csv_text(*jobs))
    write_text_atomically(sweep.folder / "summary.md", text)
    return text


def print_summary(folder: Path) -> None:
    text = write_summary(folder)
    print(text, flush=True)
    print(f"written: {folder / 'summary.csv'}, {folder / 'summary.md'}", flush=True)


class SweepSummary(Callback):
    """Hydra callback: the sweep's table at the end of a multirun. A job that fails makes Hydra's
    sweeper raise before `on_multirun_end`: the table is then written as the process exits."""

    def __init__(self) -> None:
        self.folder: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.folder = Path(str(config.hydra.sweep.dir))
        atexit.register(self._write)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write()

    def _write(self) -> None:
        folder, self.folder = self.folder, None  # once
        if folder is None or not folder.is_dir():
            return
        try:
            print_summary(folder)
        except Exception as err:  # the jobs' results stay; only their table is missing
            print(f"warning: no sweep summary ({type(err).__name__}: {err})", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """`m2f-sweep-summary <sweep dir>`: print and write the table of a sweep, done or not."""
    parser = argparse.ArgumentParser(
        prog="m2f-sweep-summary",
        description="print and write the table of a sweep folder (summary.csv, summary.md)",
    )
    parser.add_argument("folder", type=Path, help="the sweep's folder (multirun/<date>/<time>)")
    args = parser.parse_args(argv)
    try:
        print_summary(args.folder)
    except UserError as err:
        from .main import print_error

        print_error(str(err))
        raise SystemExit(1) from None
