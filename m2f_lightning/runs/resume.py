"""Checkpoint bookkeeping of a training run: where `fit` resumes from, the pre-emption
checkpoint's retirement after a finished fit, and starting from other weights (`init_weights`).
The signal side of pre-emption is `preemption.py`."""

import json
import os
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from ..errors import CheckpointError, MissingCheckpointError, RefusedPickleError
from ..lightning_module import Mask2FormerModule
from .preemption import PREEMPTED_CHECKPOINT


def resume_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint `fit` continues from.

    `resume: auto` takes the newest readable checkpoint of this output folder: `last.ckpt` and the
    step checkpoints under `<output_dir>/checkpoints/`, and `<output_dir>/preempted.ckpt` (saved
    on SLURM's pre-emption signal), so a requeued job loses at most the steps since the latest.
    A newer one that cannot be read (truncated by a crash or a full disk) is passed over with a
    warning naming it and the one used.
    """
    if cfg.resume in (None, False, "none"):
        return None
    if cfg.resume == "auto":
        return _newest_readable(folder_checkpoints(output_dir))
    path = Path(cfg.resume)
    if not path.is_file():
        raise MissingCheckpointError(
            f"resume checkpoint not found: {path} (resume=auto continues from this output folder's own checkpoints; resume=null starts afresh)"
        )
    return str(path)


def folder_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoints `resume=auto` chooses from, newest first (`last.ckpt` before a step
    checkpoint of the same time)."""
    found = [
        *sorted((output_dir / "checkpoints").glob("*.ckpt")),
        output_dir / PREEMPTED_CHECKPOINT,
    ]
    found = [p for p in found if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)


def _newest_readable(candidates: list[Path]) -> str | None:
    from lightning.pytorch.utilities import rank_zero_warn

    from ..checkpoints.reading import load_torch_file

    unreadable: list[str] = []
    for path in candidates:
        try:
            ckpt = load_torch_file(path, mmap=True)
        except RefusedPickleError:
            unreadable.append(f"{path} (holds Python objects: refused)")
            continue
        except CheckpointError:
            unreadable.append(f"{path} (truncated, or not a PyTorch checkpoint)")
            continue
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            unreadable.append(f"{path} (not a training checkpoint)")
            continue
        if unreadable:
            rank_zero_warn(
                f"resume=auto: skipped {len(unreadable)} checkpoint(s) that cannot be read: "
                + "; ".join(unreadable)
                + f". Resuming from the newest readable one instead: {path} (step "
                f"{ckpt.get('global_step', '?')})"
            )
        return str(path)
    if unreadable:
        raise CheckpointError(
            "resume=auto found no readable checkpoint in this output folder: "
            + "; ".join(unreadable)
            + ". Start afresh with resume=null (these files are set aside), or choose another "
            "output folder: hydra.run.dir=..."
        )
    return None


def set_aside_earlier_checkpoints(cfg: DictConfig, output_dir: Path) -> Path | None:
    """`resume=null` in a folder that holds checkpoints: move them to
    `<output_dir>/replaced-<UTC time>/`, so that this run's checkpoints are the only ones a later
    `resume=auto` sees (an earlier run's, or a truncated file, would be taken or kept beside
    them). Global rank 0 only; returns the folder they went to."""
    from lightning.pytorch.utilities import rank_zero_only

    if cfg.resume not in (None, False, "none") or rank_zero_only.rank != 0:
        return None
    earlier = folder_checkpoints(output_dir)
    if not earlier:
        return None
    aside = output_dir / time.strftime("replaced-%Y%m%d-%H%M%S", time.gmtime())
    aside.mkdir(exist_ok=True)
    for path in earlier:
        os.replace(path, aside / path.name)
    print(
        f"resume=null: moved the {len(earlier)} checkpoint(s) of an earlier run in this folder "
        f"to {aside}",
        flush=True,
    )
    return aside


# model-config keys that do not change the tensors a checkpoint holds
_NOT_ARCHITECTURE = ("backbone_weights", "backbone_pretrained")


def _plain(value: object) -> object:
    """Tuples as lists, so a config read back from a checkpoint compares equal to a built one."""
    return json.loads(json.dumps(value, default=str))


def check_resume_fits(ckpt_path: str, module: Mask2FormerModule, cfg: DictConfig) -> None:
    """Fail before training when the checkpoint `fit` would resume from was saved by another
    model config (another size, backbone or class count): Lightning would answer with dozens of
    "size mismatch" lines and no word about the old checkpoint it found."""
    from ..checkpoints.reading import load_torch_file, warn_if_newer_lightning

    try:
        ckpt = load_torch_file(ckpt_path, mmap=True)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}\n(resume={cfg.resume} picked it; start afresh with resume=null, or choose "
            "another output folder: hydra.run.dir=...)"
        ) from None
    warn_if_newer_lightning(ckpt, ckpt_path)
    _check_steps_left(ckpt, ckpt_path, cfg)
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
            + "\nStart this config afresh with resume=null (this folder's checkpoints are set "
            "aside), or give it another output folder: hydra.run.dir=outputs/<new name>"
        )


def _check_steps_left(ckpt: object, ckpt_path: str, cfg: DictConfig) -> None:
    """A checkpoint past `trainer.max_steps` would make `fit` return at once (no step, exit 0).
    `resume=auto` may meet the end of its own finished run (a job requeued during the test after
    training): that step equal to max_steps is fine; a named checkpoint must have steps left."""
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    max_steps = cfg.trainer.get("max_steps")
    if not isinstance(step, int) or max_steps is None or max_steps < 0:
        return
    if step > max_steps or (step == max_steps and cfg.resume != "auto"):
        how = "found by resume=auto" if cfg.resume == "auto" else f"resume={cfg.resume}"
        raise CheckpointError(
            f"cannot resume from {ckpt_path} ({how}): "
            f"it is at step {step}, and dataset.max_steps (trainer.max_steps) is {max_steps}, so "
            "no step is left to train. Raise dataset.max_steps to train on, evaluate it with "
            "m2f-evaluate checkpoint=..., or start afresh with resume=null"
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

    from ..checkpoints import init_from_weights

    report = init_from_weights(module.model, path, list(module.hparams.class_names), class_map)
    if rank_zero_only.rank == 0:
        matched, fresh = report["matched"], report["fresh"]
        note = f"; class head: {len(matched)} classes kept by name, {len(fresh)} fresh"
        if fresh:
            note += f" ({', '.join(fresh[:10])}{', ...' if len(fresh) > 10 else ''})"
        print(f"init_weights: loaded {path}{note}", flush=True)
    return report
