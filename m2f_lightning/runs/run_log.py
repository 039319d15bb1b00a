"""Each command's log file (`<output dir>/<job name>.log`: train.log, evaluate.log, predict.log,
doctor.log) holds what the console showed, so a SLURM job or a closed terminal leaves a record.

Hydra's job logging fills that file only from the `logging` records it configures; our console
is `print`, Rich, Lightning's own log handlers and `warnings`. `console_log` tees `sys.stdout`
and `sys.stderr` into the file for the length of a command (the console itself is untouched: the
same stream, still a terminal when it is one) and points Lightning's log handlers at the tee (and
the root logger's, where no file handler of Hydra's writes the file already). The
file gets plain lines: colours and cursor moves are dropped, a line rewritten in place (`\\r`, a
Rich live bar) keeps only its last state, and a live bar's frames that the terminal erased never
reach it (terminal runs also get `TextProgress`'s plain lines, in the file only: `log_only`).
"""

import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

# a CSI sequence (colours, cursor moves, erase), an OSC one (title, hyperlink), a lone escape
_ESCAPE = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]")
# the width of our tables and messages where the output is not a terminal: Rich's default there
# (80 columns) cuts long paths; our tables are as wide as their cells, not this
PLAIN_WIDTH = 1000
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


class _PlainLines:
    """Turns what a terminal was sent into the lines it shows, appended to `file`.

    Lines written by a cursor-moving write (a live display's frame) are held back until a plain
    write shows they stayed on screen; a cursor move up over them drops them (the frame is
    redrawn). A `\\r` or an erase starts the current line again."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.line = ""
        self.held: list[str] = []
        self.line_live = False  # the line in progress is a live display's
        self.lock = threading.Lock()

    def feed(self, text: str) -> None:
        with self.lock:
            live = any(m.group(2) not in (None, "m") for m in _ESCAPE.finditer(text))
            if not live and (self.held or self.line_live):
                # the live display's last frame stayed on screen; a plain write starts below it
                self._commit([*self.held, *([self.line] if self.line_live else [])])
                self.held = []
                self.line = "" if self.line_live else self.line
                self.line_live = False
            done: list[str] = []
            pos = 0
            for match in _ESCAPE.finditer(text):
                self._text(text[pos : match.start()], done, live)
                pos = match.end()
                code, final = match.group(1) or "", match.group(2)
                if final == "A":  # cursor up: the lines it passes are drawn again
                    up = int(code) if code.isdigit() else 1
                    self.line = ""
                    del self.held[max(len(self.held) - up, 0) :]
                elif final == "K":  # erase (part of) the line
                    self.line = ""
            self._text(text[pos:], done, live)
            self._commit(done)
            self.line_live = live and bool(self.line)

    def _text(self, text: str, done: list[str], live: bool) -> None:
        *complete, self.line = (self.line + text).split("\n")
        for line in complete:
            line = line.rsplit("\r", 1)[-1]  # what a carriage return left on screen
            (self.held if live else done).append(line)
        if "\r" in self.line:
            self.line = self.line.rsplit("\r", 1)[-1]

    def _commit(self, lines: list[str]) -> None:
        if lines:
            self.file.write("".join(f"{line.rstrip()}\n" for line in lines))
            self.file.flush()

    def add_lines(self, text: str) -> None:
        """Lines of our own, written whole: not mixed into a line the console is drawing."""
        with self.lock:
            self._commit(text.splitlines())

    def close(self) -> None:
        with self.lock:
            rest = [*self.held, *([self.line] if self.line.strip() else [])]
            self.held, self.line = [], ""
            self._commit(rest)


class _Tee(io.TextIOBase):
    """A console stream that also feeds the log; everything else (isatty, fileno, encoding) is
    the console's."""

    def __init__(self, stream: TextIO, log: _PlainLines) -> None:
        self.stream = stream
        self.log = log

    def write(self, text: str) -> int:
        if os.getpid() == _state.get("pid"):  # not a forked data loader worker
            self.log.feed(text)  # first: a console gone away (a closed terminal) loses no line
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


_state: dict[str, Any] = {}


def is_rank_zero() -> bool:
    """Rank 0 of a distributed run (the others' consoles repeat it); a plain run is rank 0."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "0").strip() not in ("", "0"):
            return False
    return True


def log_only(text: str) -> None:
    """Write `text` (whole lines) to the open command log only, not to the console."""
    log = _state.get("log")
    if log is not None and os.getpid() == _state.get("pid"):
        log.add_lines(text)


def is_logging() -> bool:
    """Whether a command log is open in this process."""
    return _state.get("log") is not None and os.getpid() == _state.get("pid")


def _console_loggers(path: Path) -> list[str]:
    """The loggers whose console handlers are pointed at the tee: Lightning's, and the root
    logger's unless a file handler of its already writes `path` (Hydra's job logging does, but
    not m2f-doctor's `stdout` job logging), so that no record reaches the file twice."""
    files = {
        Path(h.baseFilename).resolve()
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler)
    }
    return [*_LIGHTNING_LOGGERS, *([] if path.resolve() in files else [""])]


@contextmanager
def console_log(path: Path | None) -> Iterator[None]:
    """Tee the console into `path` (appended: a requeued or rerun job adds to the record) while
    the block runs. None, or a rank other than 0: the console only."""
    if path is None or _state or not is_rank_zero():
        yield
        return
    path = Path(path)
    if not path.parent.is_dir():  # a command that makes no output folder (Hydra's is made first)
        yield
        return
    try:
        file = path.open("a", encoding="utf-8", errors="replace")
    except OSError as err:
        print(f"warning: no log file ({err}): the console only", file=sys.stderr, flush=True)
        yield
        return
    log = _PlainLines(file)
    saved = sys.stdout, sys.stderr
    handlers = [
        h
        for name in _console_loggers(path)
        for h in logging.getLogger(name).handlers
        if type(h) is logging.StreamHandler and h.stream in saved
    ]
    streams = [h.stream for h in handlers]
    _state.update(log=log, pid=os.getpid())
    sys.stdout, sys.stderr = _Tee(saved[0], log), _Tee(saved[1], log)
    for handler, stream in zip(handlers, streams, strict=True):
        handler.setStream(sys.stdout if stream is saved[0] else sys.stderr)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)
        _state.clear()
        log.close()
        file.close()


def plain_console(stderr: bool = False) -> "Any":
    """A Rich console for our tables and messages: the terminal's width on a terminal; elsewhere
    wide enough that nothing is cut or wrapped at 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PLAIN_WIDTH)


def print_error(message: str) -> None:
    from rich.markup import escape

    # soft_wrap: one line however long, so that logs and greps see the whole message
    plain_console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
