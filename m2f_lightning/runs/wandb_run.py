"""The W&B run of a command: offline without credentials, one run id per output folder (so a
resumed or requeued job continues its run), and always closed, failed or not."""

import os
import secrets
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_run_id(output_dir: Path) -> str:
    """The W&B run id of this output directory: made once, kept in `<output_dir>/wandb_run_id`,
    so a resumed or requeued job (same output dir) logs into the same run."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    path = output_dir / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)  # W&B run ids: lowercase letters and digits
    if rank_zero_only.rank == 0:  # other ranks never start a W&B run
        path.write_text(run_id + "\n")
    return run_id


def check_wandb_folder(cfg: DictConfig, output_dir: Path) -> None:
    """With logger=wandb: stop with one error line when W&B could not write its run folder
    (`<output_dir>/wandb`), before anything else is made (W&B's own answer is a traceback)."""
    if cfg.logger.name == "wandb" and os.environ.get("WANDB_MODE") != "disabled":
        from .run_dir import check_writable_folder

        check_writable_folder(output_dir / "wandb", "W&B's files (logger=wandb)")


def build_logger(cfg: DictConfig, output_dir: Path) -> Any:
    """The Lightning logger of `logger.name`: wandb, tensorboard, csv, or none (False)."""
    name = cfg.logger.name
    if name == "none":
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(output_dir), name="csv")
    if name == "tensorboard":
        return tensorboard_logger(cfg, output_dir)
    from lightning.pytorch.loggers import WandbLogger

    check_wandb_folder(cfg, output_dir)
    offline = cfg.logger.get("offline")
    if offline is None:
        offline = not wandb_has_credentials()
    env_mode = os.environ.get("WANDB_MODE")
    mode = env_mode if env_mode in ("disabled", "offline") else ("offline" if offline else "online")
    # pass the mode to wandb.init instead of `offline=True`, which rewrites WANDB_MODE for the
    # whole process (and so for later jobs of a multirun)
    logger = WandbLogger(
        id=wandb_run_id(output_dir),
        resume="allow",  # a resumed or requeued job continues its W&B run
        project=cfg.logger.project,
        entity=cfg.logger.get("entity"),
        group=wandb_group(cfg),
        tags=list(cfg.logger.get("tags") or []),
        save_dir=str(output_dir),
        mode=mode,
        log_model=cfg.logger.get("log_model", False) if mode == "online" else False,
    )
    # Lightning hands wandb.init `anonymous=None`, which wandb answers with a deprecation
    # warning at every start ("The anonymous setting has no effect"): not passed at all instead
    logger._wandb_init.pop("anonymous", None)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def wandb_group(cfg: DictConfig) -> str | None:
    """`logger.group` if set; else, in a multirun (`-m`), the sweep folder (Hydra's resolved
    `hydra.sweep.dir`), so the jobs of one sweep are one group in W&B and two sweeps two groups;
    else none. W&B takes at most 128 characters: a longer path keeps its end."""
    group = cfg.logger.get("group")
    if group:
        return str(group)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)[-128:]


def log_world(logger: Any, trainer: Any) -> None:
    """Put the job's placement into the W&B run's config (`world.num_nodes`, `world.devices`
    per node, `world.world_size`): the values the trainer runs with, not the config's (whose
    `devices` may be `auto`), so runs of a sweep over nodes can be told apart and compared."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        world = {
            "num_nodes": trainer.num_nodes,
            "devices": trainer.num_devices,
            "world_size": trainer.world_size,
        }
        logger.log_hyperparams({"world": world})


def tensorboard_logger(cfg: DictConfig, output_dir: Path) -> Any:
    """TensorBoard's event files in `<output_dir>/tensorboard/`: one folder per output folder (no
    version_N), so a resumed or requeued run continues the same curves."""
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(
        save_dir=str(output_dir), name="tensorboard", version="", default_hp_metric=False
    )
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def finish_wandb() -> None:
    """Close an open W&B run, failed or not, so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
