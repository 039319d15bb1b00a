"""Checkpoint bookkeeping of a training run: where `fit` resumes from, the pre-emption
checkpoint's retirement after a finished fit, and starting from other weights (`init_weights`).
The signal side of pre-emption is `preemption.py`."""

import json
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from .errors import CheckpointError, MissingCheckpointError
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
        raise MissingCheckpointError(
            f"resume checkpoint not found: {path} (resume=auto continues from this output folder's own checkpoints; resume=null starts afresh)"
        )
    return str(path)


# model-config keys that do not change the tensors a checkpoint holds
_NOT_ARCHITECTURE = ("backbone_weights", "backbone_pretrained")


def _plain(value: object) -> object:
    """Tuples as lists, so a config read back from a checkpoint compares equal to a built one."""
    return json.loads(json.dumps(value, default=str))


def check_resume_fits(ckpt_path: str, module: Mask2FormerModule, cfg: DictConfig) -> None:
    """Fail before training when the checkpoint `fit` would resume from was saved by another
    model config (another size, backbone or class count): Lightning would answer with dozens of
    "size mismatch" lines and no word about the old checkpoint it found."""
    from .checkpoints.reading import load_torch_file, warn_if_newer_lightning

    try:
        ckpt = load_torch_file(ckpt_path, mmap=True)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}\n(resume={cfg.resume} picked it; start afresh with resume=null, or choose "
            "another output folder: hydra.run.dir=...)"
        ) from None
    warn_if_newer_lightning(ckpt, ckpt_path)
    stored = (
        (ckpt.get("hyper_parameters") or {}).get("model_config") if isinstance(ckpt, dict) else None
    )
    if not isinstance(stored, dict):
        return
    stored, current = _plain(stored), _plain(module.model.config)
    differences = [
        f"{key}: {stored.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(stored) | set(current))
        if key not in _NOT_ARCHITECTURE and stored.get(key) != current.get(key)
    ]
    if differences:
        how = (
            "resume=auto found it in this output folder"
            if cfg.resume == "auto"
            else f"resume={cfg.resume} names it"
        )
        raise CheckpointError(
            f"cannot resume from {ckpt_path} ({how}): it was saved by another model config:\n  "
            + "\n  ".join(differences[:12])
            + "\nStart this config afresh with resume=null (this folder's checkpoints get "
            "overwritten), or give it another output folder: hydra.run.dir=outputs/<new name>"
        )


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
