"""Exact resume: the random state of every rank travels in the checkpoint.

Lightning 2.6 checkpoints the weights, optimiser, schedulers, AMP scaler, loop progress and
(through `data.sampling.ResumableLoader`) the position in the epoch, but no RNG state: a resumed
run would redraw drop-path masks and the criterion's sampled points from the seed instead of
continuing the interrupted stream. `RandomState` stores, per rank, the torch (CPU and every CUDA
device), numpy and python generators when a checkpoint is written (`trainer.save_checkpoint`
runs on every rank, so the states are gathered to the one file rank 0 writes) and puts them
back at `on_train_start`: after Lightning's set-up, the isolated sanity check and the creation
of the first data iterator, i.e. right before the next training step, where the interrupted run
was when it saved.
"""

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def capture() -> dict[str, Any]:
    """Plain tensors, ints and tuples only, so `torch.load(weights_only=True)` reads them."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def _gather(state: dict[str, Any]) -> list[dict[str, Any]]:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


class RandomState(L.Callback):
    """Saves every rank's RNG states with each checkpoint and restores them on resume."""

    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": _gather(capture())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict.get("ranks")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._to_restore:
            return
        states, self._to_restore = self._to_restore, None
        if len(states) != trainer.world_size:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"the checkpoint holds the random state of {len(states)} ranks, this run has "
                f"{trainer.world_size}: random streams restart from the seed"
            )
            return
        restore(states[trainer.global_rank])
