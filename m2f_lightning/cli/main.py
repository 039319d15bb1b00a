"""Entry points: `python train.py` / `m2f-train`, `m2f-evaluate`, `m2f-predict`, `m2f-doctor`.

Each composes the Hydra tree in `conf/` (train.yaml, evaluate.yaml, predict.yaml, doctor.yaml
share common.yaml), runs one function of `commands` and prints a user's mistake as one `error:` line.
"""

import os
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from ..errors import ConfigError, UserError
from ..runs.run_log import print_error
from .commands import evaluate, predict, train
from .help_text import register_help_resolver

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # m2f_lightning/
# `m2f_lightning/conf` links to the checkout's `conf/`; an installed wheel holds a copy of it
CONFIG_DIR = PACKAGE_DIR / "conf"
# outputs/ and datasets/ live in the checkout (editable install, `python train.py`); with the
# package installed from a wheel they live under the working directory
PROJECT_ROOT = (
    PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() else Path.cwd()
)
os.environ.setdefault("M2F_PROJECT_ROOT", str(PROJECT_ROOT))
register_help_resolver(CONFIG_DIR)  # `--help` lists the experiments (conf/hydra/default.yaml)

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


def _show_tracebacks(cfg: DictConfig) -> bool:
    return bool(cfg.get("verbose")) or os.environ.get("HYDRA_FULL_ERROR") == "1"


def _remove_unused_run_dir() -> None:
    """A run stopped by a user's mistake before it wrote anything leaves no output folder: remove
    the one Hydra made for it if it holds only Hydra's own files (config copy, empty log)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ours = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= ours:
        shutil.rmtree(run_dir, ignore_errors=True)


def command_log_path() -> Path | None:
    """`<output dir>/<job name>.log`, the file Hydra's job logging opens (train.log, ...); None
    outside Hydra, or where the output folder is the current one (m2f-doctor writes no files
    unless given `hydra.run.dir=`)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if output_dir.resolve() == Path.cwd().resolve():
        return None  # a command run in place (m2f-doctor's run.dir=.) leaves no file behind
    return output_dir / f"{hydra_cfg.job.name}.log"


def run_command(command: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a command, its console copied into its log file (`run_log`). A user's mistake
    (`errors.UserError`, or a file that is not there) ends the process with one `error:` message
    and exit code 1, no traceback unless asked for (`HYDRA_FULL_ERROR=1` or `verbose=true`);
    anything else is a bug and keeps its traceback (in the log file too)."""
    from ..runs.console_noise import quiet_third_party
    from ..runs.run_log import console_log, log_only

    quiet_third_party()  # third-party lines that say nothing here, each filtered by its message
    with console_log(command_log_path()):
        log_only("".join(_EARLY_WARNINGS))  # shown before the log file was open
        _EARLY_WARNINGS.clear()
        return _run_command(command, cfg)


def _run_command(command: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ..runs.run_log import log_only

    try:
        return command(cfg)
    except (UserError, FileNotFoundError) as err:
        for message in err.problems if isinstance(err, ConfigError) else [str(err)]:
            print_error(message)  # one `error:` line per problem of the config
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if _show_tracebacks(cfg) or multirun:  # a sweep goes on with its other jobs
            raise
        _remove_unused_run_dir()
        raise SystemExit(1) from None
    except Exception as err:
        print_error(
            f"unexpected {type(err).__name__}: {err}\n(this is a bug, not a mistake of yours: "
            "the traceback follows; please report it)"
        )
        log_only(traceback.format_exc())  # Hydra prints it to the console once we are out
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
    run_command(predict, cfg)  # unreadable inputs: `InputsFailed`, exit 1 after the others


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="doctor")
def _doctor_main(cfg: DictConfig) -> None:
    from .doctor import doctor

    code = run_command(doctor, cfg)
    if code:
        raise SystemExit(code)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def _export_main(cfg: DictConfig) -> None:
    from .export import export

    run_command(export, cfg)


# the warnings shown before Hydra composed the config (old spellings of keys), copied into the
# command's log file once it is open
_EARLY_WARNINGS: list[str] = []


def _with_upgraded_argv(main: Callable[[], Any]) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        sys.argv = [sys.argv[0], *upgrade_overrides(sys.argv[1:])]
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)  # the console
        _EARLY_WARNINGS.append(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    return main()


def train_main() -> Any:
    return _with_upgraded_argv(_train_main)


def evaluate_main() -> Any:
    return _with_upgraded_argv(_evaluate_main)


def predict_main() -> Any:
    return _with_upgraded_argv(_predict_main)


def doctor_main() -> Any:
    return _with_upgraded_argv(_doctor_main)


def export_main() -> Any:
    return _with_upgraded_argv(_export_main)
