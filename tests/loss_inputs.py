"""Inputs of the loss tests, in a module of light imports (torch and the criterion): the processes
that tests/test_losses.py spawns import the module of the function they run, and the test module
imports transformers (seconds per process)."""

import os

import torch
import torch.distributed as dist

from m2f_lightning.losses.criterion import global_num_masks


def random_targets(counts, classes=6, h=64, w=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(0, classes, (n,), generator=g),
            "masks": torch.rand(n, h, w, generator=g) > 0.6,
        }
        for n in counts
    ]


def num_masks_worker(rank: int, port: str, results) -> None:
    """Rank `rank` of two gloo processes: its `global_num_masks` into `results[rank]`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    counts = [(1, 2), (4, 5)][rank]  # 3 masks on rank 0, 9 on rank 1
    targets = random_targets(counts, h=8, w=8)
    results[rank] = global_num_masks(targets, torch.device("cpu")).item()
    dist.destroy_process_group()
