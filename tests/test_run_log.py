"""run_log: the console copied into the command's log file as the plain lines a terminal shows."""

import io
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from m2f_lightning.runs.run_log import _PlainLines, _state, _Tee, console_log, log_only


def test_a_live_bar_leaves_its_last_frame_and_the_lines_printed_under_it() -> None:
    """Rich's live display (what a terminal run shows) redraws its frames with cursor moves: the
    file gets each printed line once, the bars as last drawn, and no escape codes."""
    file, terminal = io.StringIO(), io.StringIO()
    log = _PlainLines(file)
    _state.update(log=log, pid=os.getpid())
    try:
        console = Console(file=_Tee(terminal, log), force_terminal=True, width=60)
        with Progress(console=console, auto_refresh=False) as progress:
            train = progress.add_task("train", total=4)
            val = progress.add_task("val", total=4)
            for i in range(4):
                progress.update(train, advance=1)
                progress.refresh()
                if i == 1:
                    console.print(f"[red]a warning[/] at step {i}")
            progress.update(val, advance=2)
            progress.refresh()
        console.print("done")
    finally:
        _state.clear()
        log.close()
    assert "\x1b[1A" in terminal.getvalue()  # the terminal did get a live display
    lines = file.getvalue().splitlines()
    assert lines[0] == "a warning at step 1"
    assert lines[1].startswith("train ") and lines[1].endswith("100% 0:00:00")
    assert lines[2].startswith("val ") and "50%" in lines[2]
    assert lines[3:] == ["done"]


def test_carriage_returns_keep_the_last_state_of_a_line() -> None:
    file = io.StringIO()
    log = _PlainLines(file)
    for text in ["10%|#  |\r", "50%|## |\r", "100%|###|\n", "\x1b[1;31merror:\x1b[0m x\n", "tail"]:
        log.feed(text)
    log.close()
    assert file.getvalue() == "100%|###|\nerror: x\ntail\n"


def test_console_log_tees_stdout_stderr_and_lightning_logs(tmp_path: Path, capsys) -> None:
    lightning_log = logging.getLogger("lightning.pytorch")
    handler = logging.StreamHandler(sys.stderr)  # as Lightning binds it at import
    lightning_log.addHandler(handler)
    path = tmp_path / "evaluate.log"
    try:
        with console_log(path):
            print("a printed line")
            print("UserWarning: a warning", file=sys.stderr)
            lightning_log.warning("a Lightning message")
            log_only("only in the file")
    finally:
        lightning_log.removeHandler(handler)
    console = capsys.readouterr()
    text = path.read_text()
    for line in ("a printed line", "UserWarning: a warning", "a Lightning message"):
        assert line in text and line in console.out + console.err
    assert "only in the file" in text and "only in the file" not in console.out + console.err
    assert handler.stream is sys.stderr  # handed back
    with console_log(path):
        print("a second run")
    assert path.read_text().startswith(text)  # appended: a requeued job adds to the record


def test_other_ranks_write_no_log(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    with console_log(tmp_path / "train.log"):
        print("rank 1")
    assert not (tmp_path / "train.log").exists()


def test_no_log_where_the_command_makes_no_folder(tmp_path: Path) -> None:
    with console_log(tmp_path / "not_made" / "doctor.log"):
        print("console only")
    assert not (tmp_path / "not_made").exists()


def test_lines_for_the_log_only_are_not_mixed_into_a_bar_being_drawn(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    with console_log(path):
        sys.stdout.write("\r\x1b[2Kstep 1/3 ━━━━━ 1/3")  # a live bar's frame, no newline yet
        log_only("step 1/3  loss 1.000")
        sys.stdout.write("\r\x1b[2Kstep 2/3 ━━━━━ 2/3")
        log_only("step 2/3  loss 0.900")
        sys.stdout.write("\r\x1b[2Kstep 3/3 ━━━━━ 3/3\n")
        print("done")
    assert path.read_text().splitlines() == [
        "step 1/3  loss 1.000",
        "step 2/3  loss 0.900",
        "step 3/3 ━━━━━ 3/3",
        "done",
    ]


def test_a_message_written_under_a_live_bar_gets_its_own_line() -> None:
    file = io.StringIO()
    log = _PlainLines(file)
    log.feed("\r\x1b[2Kstep 3/3 ━━━━━ 3/3")  # the bar's last frame, the cursor after it
    log.feed("`Trainer.fit` stopped\n")  # a log handler's line, not through the live display
    log.close()
    assert file.getvalue().splitlines() == ["step 3/3 ━━━━━ 3/3", "`Trainer.fit` stopped"]


def test_root_logger_records_reach_the_file_once(tmp_path: Path, capsys) -> None:
    """Without a file handler of Hydra's (m2f-doctor's `stdout` job logging) a logged record
    reaches the file through the tee; with one, only through that handler (not twice)."""
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stdout)
    root.addHandler(console)
    path = tmp_path / "doctor.log"
    try:
        with console_log(path):
            logging.getLogger("m2f_lightning.data").warning("a record of ours")
        assert path.read_text().splitlines() == ["a record of ours"]
        assert console.stream is sys.stdout  # handed back
        hydra_file = logging.FileHandler(path)
        root.addHandler(hydra_file)
        try:
            with console_log(path):
                logging.getLogger("m2f_lightning.data").warning("a second record")
        finally:
            root.removeHandler(hydra_file)
            hydra_file.close()
    finally:
        root.removeHandler(console)
    assert path.read_text().splitlines() == ["a record of ours", "a second record"]
    assert "a record of ours" in capsys.readouterr().out
