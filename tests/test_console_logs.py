"""What each command shows, run as a user runs it with its output piped (a SLURM log, `| tee`):
the log file holds every console line (progress, warnings, errors, the summary), the start of a
training run says what matters, and third-party noise is gone while our warnings still show."""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from m2f_lightning.checkpoints import save_model
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.runs.console_noise import quiet_third_party
from tests.helpers import synthetic_panoptic, tiny_model

ROOT = Path(__file__).resolve().parents[1]
NOISE = [
    "LeafSpec",  # torch's deprecation, through Lightning's _pytree
    "does not have many workers",  # dataset.num_workers answers it
    "Trainer already configured with model summary callbacks",
    "FLOPs",  # Lightning's module table, its FLOPs column all zeros
    "GPU available:",
    "anonymous setting",  # wandb
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=4, num_val=2, seed=0)
    return root


def _cli(entry: str, args: list[str], run_dir: Path) -> tuple[subprocess.CompletedProcess, str]:
    """The command with stdout and stderr piped (not a terminal); returns it and its log file."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(WANDB_MODE="disabled", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", COLUMNS="")
    code = f"import sys; from m2f_lightning.cli.main import {entry}; sys.exit({entry}())"
    done = subprocess.run(
        [sys.executable, "-c", code, *args, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    done.stdout = done.stdout.decode()  # not text=True, which turns each `\r` into a newline
    name = entry.removesuffix("_main")
    log = run_dir / f"{name}.log"
    return done, log.read_text() if log.is_file() else ""


def _lines(text: str) -> list[str]:
    """The lines a terminal would show: a line rewritten after `\r` (tqdm) as last drawn."""
    shown = (line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n"))
    return [line for line in shown if line.strip()]


def assert_log_holds_the_console(console: str, log: str) -> None:
    missing = [line for line in _lines(console) if line not in _lines(log)]
    assert not missing, f"in the console, not in the log: {missing}\nlog:\n{log}"


@pytest.mark.slow
def test_train_piped_shows_the_run_and_its_log_holds_it_all(datasets: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = synthetic_panoptic(
        datasets,
        "logger=wandb",  # wandb's start-up lines are filtered at the source too
        "model.num_queries=6",  # an old spelling: our FutureWarning, before the log opens
        "recipe_batch_size=16",  # our warning: this run's batch is not the recipe's
        "dataset.max_steps=2",
        "dataset.val_every_n_steps=2",
        "progress_every_n_steps=1",
        "trainer.log_every_n_steps=1",
        "dataset.num_workers=0",  # Lightning would advise more workers
    )
    done, log = _cli("train_main", args, run_dir)
    console = done.stdout
    assert done.returncode == 0, console
    long_path = str(run_dir / "checkpoints" / "last.ckpt")
    for text in (console, log):
        assert f"run folder  {run_dir}" in text
        for start in ("data ", "model ", "precision ", "resume ", "schedule "):
            assert any(line.startswith(start) for line in text.splitlines()), (start, text)
        assert "synthetic, panoptic (5 classes): 4 training images, 2 validation images" in text
        assert "32-true on cpu" in text and "no (a fresh start)" in text
        assert "step 1/2  loss" in text and "step 2/2  loss" in text
        assert "validation at step 2: PQ" in text
        assert "test batch 1/1" in text
        assert "this recipe was trained with 16 images per step" in text  # ours, kept
        assert "'model.num_queries=6' is deprecated: write 'model.net.num_queries=6'" in text
        assert long_path in text  # the summary, its paths whole (not cut at 80 columns)
        for noise in NOISE:
            assert noise not in text, noise
    assert_log_holds_the_console(console, log)


@pytest.mark.slow
def test_evaluate_and_predict_piped_write_their_progress_errors_and_summary(
    datasets: Path, tmp_path: Path
) -> None:
    checkpoint = save_model(tiny_model(num_classes=5), tmp_path / "tiny.pt")
    common = [*synthetic_panoptic(datasets), "progress_every_n_steps=1"]

    done, log = _cli("evaluate_main", [*common, f"checkpoint={checkpoint}"], tmp_path / "eval")
    assert done.returncode == 0, done.stdout
    for text in (done.stdout, log):
        assert "test batch 1/1" in text and "eval_metrics.json" in text and "PQ" in text
        for noise in NOISE:
            assert noise not in text, noise
    assert_log_holds_the_console(done.stdout, log)

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (90, 120, 30)).save(good)
    inputs = f"inputs=[{good},{bad}]"
    done, log = _cli("predict_main", [*common, f"checkpoint={checkpoint}", inputs], tmp_path / "pr")
    assert done.returncode == 1, done.stdout
    for text in (done.stdout, log):
        assert "predict batch 1/1" in text and "wrote " in text
        assert "error: 1 input(s) could not be read:" in text and "broken.jpg" in text
    assert_log_holds_the_console(done.stdout, log)


@pytest.mark.slow
def test_doctor_piped_with_a_run_dir_writes_its_report_to_doctor_log(
    datasets: Path, tmp_path: Path
) -> None:
    done, log = _cli("doctor_main", synthetic_panoptic(datasets), tmp_path / "doctor")
    assert done.returncode == 0, done.stdout
    assert "m2f-doctor: dataset 'synthetic'" in log and "no problems found" in log
    assert_log_holds_the_console(done.stdout, log)


def test_noise_filters_drop_the_listed_lines_and_keep_the_rest(caplog) -> None:
    """Each filter matches its message only: the same loggers' other records, and warnings of
    ours with the same category, still show."""
    quiet_third_party()
    with warnings.catch_warnings(record=True) as caught:
        quiet_third_party()  # inside: catch_warnings restores the filters afterwards
        from lightning.pytorch.utilities._pytree import _tree_flatten

        _tree_flatten([1, (2, 3)])  # builds a LeafSpec: torch's FutureWarning
        warnings.warn("our own future change", FutureWarning, stacklevel=1)
        from lightning.pytorch.utilities import rank_zero_warn
        from lightning.pytorch.utilities.warnings import PossibleUserWarning

        rank_zero_warn(
            "The 'train_dataloader' does not have many workers which may be a bottleneck.",
            category=PossibleUserWarning,
        )
        rank_zero_warn("a real Lightning warning", category=PossibleUserWarning)
    messages = [str(w.message) for w in caught]
    assert "our own future change" in messages and "a real Lightning warning" in messages
    assert not [m for m in messages if "LeafSpec" in m or "many workers" in m], messages

    caplog.set_level(logging.INFO)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.info("GPU available: False, used: False")
    rank_zero.info("`Trainer.fit` stopped: `max_steps=2` reached.")
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    folding.info("Skipping constant folding for node 'node_sub'")
    folding.warning("Skipping constant folding for op Split with multiple outputs.")
    folding.warning("a real exporter warning")
    logging.getLogger("onnx_ir.passes.common.unused_removal").info("Removed 182 unused nodes")
    logging.getLogger("onnx_ir.passes.common.initializer_deduplication").info(
        "Replaced initializer 'val_382' with existing initializer 'val_374'"
    )
    logging.getLogger("onnxscript.rewriter").info("Applied 14 of general pattern rewrite rules.")
    logging.getLogger("m2f_lightning.x").info("ours at INFO")
    shown = [r.getMessage() for r in caplog.records]
    assert shown == [
        "`Trainer.fit` stopped: `max_steps=2` reached.",
        "a real exporter warning",
        "ours at INFO",
    ]
