"""Checkpoint bookkeeping of a training run: where `fit` resumes from, the pre-emption
checkpoint's retirement after a finished fit, and starting from other weights (`init_weights`).
The signal side of pre-emption is `preemption.py`."""

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from .lightning_module import Mask2FormerModule
from .preemption import PREEMPTED_CHECKPOINT


def resume_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint `fit` continues from.

    `resume: auto` takes the newest of `<output_dir>/checkpoints/last.ckpt` (periodic) and
    `<output_dir>/preempted.ckpt` (saved on SLURM's pre-emption signal), so a requeued job
    loses at most the steps since the later of the two.
    """
    if cfg.resume in (None, False, "none"):
        return None
    if cfg.resume == "auto":
        candidates = [output_dir / "checkpoints" / "last.ckpt", output_dir / PREEMPTED_CHECKPOINT]
        existing = [p for p in candidates if p.is_file()]
        if not existing:
            return None
        return str(max(existing, key=lambda p: p.stat().st_mtime_ns))
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    return str(path)


def retire_preemption_checkpoint(trainer: L.Trainer, output_dir: Path) -> None:
    """After a finished fit, replace `preempted.ckpt` by a final `last.ckpt`, so that a rerun in
    the same folder resumes at the end rather than at the pre-emption."""
    stale = output_dir / PREEMPTED_CHECKPOINT
    if not stale.is_file():
        return
    trainer.save_checkpoint(output_dir / "checkpoints" / "last.ckpt")  # collective: all ranks
    if trainer.is_global_zero:
        stale.unlink()
    trainer.strategy.barrier("retire_preemption_checkpoint")


def load_init_weights(
    module: Mask2FormerModule, path: str, class_map: dict[str, str] | None = None
) -> dict[str, list[str]]:
    """Start training from the weights at `path` (not a resume: step, optimiser and schedule start
    fresh). The class head is mapped by class name (`checkpoints.init_from_weights`): classes of
    the dataset found in the checkpoint (or through `class_map={new: old}`) keep their rows, the
    others start fresh."""
    from lightning.pytorch.utilities import rank_zero_only

    from .checkpoints import init_from_weights

    report = init_from_weights(module.model, path, list(module.hparams.class_names), class_map)
    if rank_zero_only.rank == 0:
        matched, fresh = report["matched"], report["fresh"]
        note = f"; class head: {len(matched)} classes kept by name, {len(fresh)} fresh"
        if fresh:
            note += f" ({', '.join(fresh[:10])}{', ...' if len(fresh) > 10 else ''})"
        print(f"init_weights: loaded {path}{note}", flush=True)
    return report
