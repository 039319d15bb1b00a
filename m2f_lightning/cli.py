"""Entry points: `python train.py` / `m2f-train`, `m2f-evaluate` and `m2f-predict`.

Each composes the Hydra tree in `conf/` (train.yaml, evaluate.yaml, predict.yaml share
common.yaml), runs one function of `commands` and prints a user's mistake as one `error:` line.
"""

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from .commands import evaluate, predict, train

PACKAGE_DIR = Path(__file__).resolve().parent
# `m2f_lightning/conf` links to the checkout's `conf/`; an installed wheel holds a copy of it
CONFIG_DIR = PACKAGE_DIR / "conf"
# outputs/ and datasets/ live in the checkout (editable install, `python train.py`); with the
# package installed from a wheel they live under the working directory
PROJECT_ROOT = (
    PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() else Path.cwd()
)
os.environ.setdefault("M2F_PROJECT_ROOT", str(PROJECT_ROOT))

# the metric a sweep optimises, per task
OBJECTIVES = {"panoptic": "PQ", "instance": "AP", "semantic": "mIoU"}

# model sizes moved under `model.net`, post-processing to its own `inference` group
_NET_KEYS = {
    "num_queries",
    "hidden_dim",
    "mask_dim",
    "pixel_decoder_dim",
    "encoder_layers",
    "encoder_ffn_dim",
    "encoder_heads",
    "encoder_points",
    "decoder_layers",
    "decoder_heads",
    "decoder_ffn_dim",
    "norm_groups",
}


def upgrade_overrides(args: list[str]) -> list[str]:
    """Old spellings of keys, rewritten with a deprecation warning: `model.<size>` is
    `model.net.<size>`, `model.inference.<key>` is `inference.<key>`."""
    upgraded = []
    for arg in args:
        prefix, _, rest = arg.partition("model.")
        key = rest.split("=", 1)[0]
        new = arg
        if prefix in ("", "+", "++") and key in _NET_KEYS:
            new = f"{prefix}model.net.{rest}"
        elif prefix in ("", "+", "++") and key.startswith("inference."):
            new = f"{prefix}{rest}"
        if new != arg:
            warnings.warn(f"'{arg}' is deprecated: write '{new}'", FutureWarning, stacklevel=2)
        upgraded.append(new)
    return upgraded


def run_command(command: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a command; a user's mistake gets a red `error:` line before its traceback."""
    from rich.console import Console

    try:
        return command(cfg)
    except (ValueError, FileNotFoundError, KeyError) as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        raise


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _train_main(cfg: DictConfig) -> float | None:
    summary = run_command(train, cfg)
    metric = OBJECTIVES[cfg.task.name]  # the sweep objective
    return summary.get("test", {}).get(metric, summary["val"].get(f"val/{metric}"))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def _evaluate_main(cfg: DictConfig) -> None:
    run_command(evaluate, cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def _predict_main(cfg: DictConfig) -> None:
    run_command(predict, cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def _export_main(cfg: DictConfig) -> None:
    from .export import export

    run_command(export, cfg)


def _with_upgraded_argv(main: Callable[[], Any]) -> Any:
    sys.argv = [sys.argv[0], *upgrade_overrides(sys.argv[1:])]
    return main()


def train_main() -> Any:
    return _with_upgraded_argv(_train_main)


def evaluate_main() -> Any:
    return _with_upgraded_argv(_evaluate_main)


def predict_main() -> Any:
    return _with_upgraded_argv(_predict_main)


def export_main() -> Any:
    return _with_upgraded_argv(_export_main)
