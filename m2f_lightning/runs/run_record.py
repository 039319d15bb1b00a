"""`<output_dir>/summary.json`: a training run's state, machine-readable, for the sweep table
(`sweep_summary`) and for scripts. Written by global rank 0 once the run holds its folder
(`run_lock`): "running" at the start, then "finished" (with the final metrics), "preempted" or
"failed" (with its error line) however the run ends. Each write replaces the file atomically, so a
reader never sees half of one. A run stopped before it took its folder (a mistake in its config or
data) writes none: its `error:` line is in `<output_dir>/train.log`.
"""

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

SUMMARY_NAME = "summary.json"

RUNNING, FINISHED, PREEMPTED, FAILED = "running", "finished", "preempted", "failed"


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: a reader sees
    the old file or the whole new one."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def read_summary(output_dir: Path) -> dict[str, Any] | None:
    """The run's summary.json, None when there is none or it cannot be read."""
    try:
        data = json.loads((Path(output_dir) / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def error_line(err: BaseException) -> str:
    """The first line of what the user saw: a `UserError`'s or a pre-emption's message, or
    `Type: message`."""
    from ..errors import UserError
    from .preemption import Preempted

    text = str(err).strip()
    if not isinstance(err, UserError | Preempted):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text.splitlines()[0] if text else type(err).__name__


class RunRecord:
    """`start()` once the run holds its folder, then `finished(summary)` or `stopped(err)`.
    Writes only on global rank 0, and only after `start()`. `trainer` (set once built) gives the
    step a stopped run reached."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / SUMMARY_NAME
        self.trainer: Any = None
        self._data: dict[str, Any] | None = None
        self._start = 0.0
        self._earlier_seconds = 0.0

    def start(self, task: str, resumed: bool) -> None:
        """Record "running". `resumed`: the run continues an earlier one in this folder (a
        requeued or rerun job), whose wall time is added to this one's."""
        from .run_log import is_rank_zero

        if not is_rank_zero():
            return
        earlier = read_summary(self.path.parent) if resumed else None
        self._earlier_seconds = float((earlier or {}).get("wall_seconds") or 0.0)
        self._start = time.time()
        self._data = {
            "state": RUNNING,
            "task": task,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self._start)),
            "started_unix": round(self._start, 3),
            "earlier_seconds": round(self._earlier_seconds, 1),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self._write(self._data)

    def _end(self, state: str, **fields: Any) -> None:
        if self._data is None:
            return
        data = dict(self._data, state=state, **fields)
        data["wall_seconds"] = round(self._earlier_seconds + time.time() - self._start, 1)
        data["ended"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self._data = None
        self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        """A record that cannot be written is a warning: the run itself goes on (or its own
        error is the one reported)."""
        try:
            write_text_atomically(self.path, json.dumps(data, indent=2) + "\n")
        except OSError as err:
            print(f"warning: could not write {self.path}: {err}", file=sys.stderr, flush=True)

    def finished(self, summary: dict[str, Any]) -> None:
        """The run ended normally: its steps and final metrics (the test after training's, else
        the last validation's), names without their `val/` / `test/` prefix."""
        if "test" in summary:
            source, metrics = "test", summary["test"]
        else:
            source = "val"
            metrics = {k.removeprefix("val/"): v for k, v in summary.get("val", {}).items()}
        self._end(FINISHED, steps=summary.get("global_step"), metrics_from=source, metrics=metrics)

    def stopped(self, err: BaseException) -> None:
        """The run left with `err`: pre-empted (checkpoint saved) or failed (its error line)."""
        from .preemption import Preempted

        steps = getattr(self.trainer, "global_step", None)
        if isinstance(err, Preempted):
            self._end(PREEMPTED, steps=steps, error=error_line(err))
        else:
            self._end(FAILED, steps=steps, error=error_line(err))
