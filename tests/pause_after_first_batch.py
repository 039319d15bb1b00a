"""Test driver: `python -m tests.pause_after_first_batch MARKER evaluate|predict <overrides>`
runs that command's CLI entry point and, once the first batch's files are written, waits until
MARKER exists (the test creates it right after sending its signal), so the signal arrives at a
known batch instead of racing the run to its end."""

import sys
import time
from pathlib import Path

import lightning as L

from m2f_lightning.cli import commands
from m2f_lightning.cli import main as cli


class PauseAfterFirstBatch(L.Callback):
    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.paused = False

    def _pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        deadline = time.monotonic() + 120
        while not self.marker.exists():  # a condition with a timeout, not a timing
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.marker} did not appear in 120 s")
            time.sleep(0.02)

    def on_predict_batch_end(self, *args) -> None:
        self._pause()

    def on_test_batch_end(self, *args) -> None:
        self._pause()


if __name__ == "__main__":
    marker = Path(sys.argv.pop(1))
    main = {"evaluate": cli.evaluate_main, "predict": cli.predict_main}[sys.argv.pop(1)]
    build_trainer = commands.build_trainer

    def with_pause(cfg, output_dir, logger=False, callbacks=None):
        callbacks = list(callbacks or [])
        # after the writers (the first batch's files are on disk), before anything else
        writers = [i for i, c in enumerate(callbacks) if type(c).__name__ == "PredictionSaver"]
        callbacks.insert(writers[-1] + 1 if writers else 0, PauseAfterFirstBatch(marker))
        return build_trainer(cfg, output_dir, logger, callbacks)

    commands.build_trainer = with_pause
    sys.exit(main())
