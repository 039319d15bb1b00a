"""Samplers and loaders that make data order and augmentation functions of (seed, epoch, index).

- `TrainSampler`: the order of an epoch is a permutation drawn from a generator seeded with
  (seed, epoch), sharded by rank (padded by repetition so every rank has as many batches);
  each index travels with the augmentation seed of (seed, epoch, index), so a sample gets the
  same augmentation whichever process or worker loads it. It can start an epoch `skip` samples
  in (mid-epoch resume).
- `EvalSampler`: every image of the split on exactly one rank (strided shards). Ranks that
  have one image fewer get a duplicate marked `scored=False` so that all ranks run as many
  batches (a rank with no batch would skip Lightning's evaluation loop and never join the
  metrics' synchronisation); the metrics skip unscored items, so each image is scored once.
- `ResumableLoader`: a DataLoader whose `state_dict` is the position in the epoch (the batches
  the training loop has consumed, not those the workers or Lightning's fetcher prefetched);
  Lightning 2.6 stores it in the checkpoint (`loops.fit_loop.state_dict.combined_loader`)
  and gives it back through `load_state_dict` before creating the epoch's iterator.

With these the trainer runs with `use_distributed_sampler=False`: the loaders shard themselves.
"""

import random
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class SampleKey(NamedTuple):
    """What a sampler yields and `SegmentationDataset.__getitem__` takes (besides a plain int)."""

    index: int
    aug_seed: int | None = None  # None: no augmentation seed (evaluation)
    scored: bool = True  # False: a padding duplicate that the metrics skip


def unpack_key(key: "int | SampleKey") -> SampleKey:
    if isinstance(key, SampleKey):
        return key
    if isinstance(key, tuple):  # a SampleKey after a round trip that lost its type
        return SampleKey(*key)
    return SampleKey(int(key))


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed of (seed, epoch, index), well mixed (numpy's SeedSequence)."""
    return int(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1)[
            0
        ]
    )


def seed_transform(transform: Any, aug_seed: int) -> None:
    """Point every random draw of an albumentations pipeline at generators of `aug_seed`: one
    numpy and one python generator shared by all its transforms (`Compose.set_random_seed`
    would give each transform the same seed, i.e. correlated draws: flip ⇔ small scale)."""
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(aug_seed), random.Random(aug_seed))


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The whole order of an epoch (all ranks together)."""
    if not shuffle:
        return list(range(num_samples))
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(num_samples, generator=generator).tolist()


class TrainSampler(Sampler[SampleKey]):
    """Shuffled (seed + epoch), sharded by rank, resumable; see the module docstring."""

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training set is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0  # samples to leave out at the start of the next iteration (resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)  # ceil: shards padded to equal length

    def shard(self, epoch: int) -> list[int]:
        order = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)
        total = len(self) * self.world_size
        order += order[: total - len(order)]  # pad by repetition, as DistributedSampler does
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0  # one-shot: the next epoch starts at its beginning
        for index in self.shard(epoch)[skip:]:
            yield SampleKey(index, augmentation_seed(self.seed, epoch, index))


class EvalSampler(Sampler[SampleKey]):
    """Every index on exactly one rank, in order; see the module docstring."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[SampleKey]:
        own = list(range(self.rank, self.num_samples, self.world_size))
        for index in own:
            yield SampleKey(index)
        for i in range(len(self) - len(own)):  # pad to the common length, never scored
            yield SampleKey(own[i % len(own)] if own else i % max(self.num_samples, 1), None, False)


class ResumableLoader(DataLoader):
    """A training DataLoader over a `TrainSampler` that checkpoints its place in the epoch.

    `consumed` returns how many batches of the current epoch the training loop has taken (the
    datamodule reads it off the trainer's progress); without it, the loader counts the batches
    it yielded, which overcounts by what Lightning's fetcher prefetched.
    """

    def __init__(self, *args: Any, consumed: Callable[[], int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, TrainSampler):
            raise TypeError("ResumableLoader needs a TrainSampler")
        self._consumed = consumed
        self._yielded = 0

    def __iter__(self):
        self._yielded = self.sampler.skip // self.batch_size
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        consumed = self._consumed() if self._consumed is not None else self._yielded
        return {
            "epoch": self.sampler.epoch,
            "batches_consumed": int(consumed),
            "batch_size": self.batch_size,
            "seed": self.sampler.seed,
            "world_size": self.sampler.world_size,
            "num_samples": self.sampler.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler: TrainSampler = self.sampler
        same = (
            state.get("seed") == sampler.seed
            and state.get("world_size") == sampler.world_size
            and state.get("num_samples") == sampler.num_samples
            and state.get("batch_size") == self.batch_size
        )
        epoch, consumed = int(state["epoch"]), int(state["batches_consumed"])
        if consumed >= len(self):  # saved at the end of the epoch: the next one starts afresh
            epoch, consumed = epoch + 1, 0
        if not same:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                "resuming with another seed, world size, dataset or batch size than the checkpoint: "
                "the epoch restarts from its beginning (the data order cannot be continued)"
            )
            consumed = 0
        sampler.set_epoch(epoch)
        sampler.skip = consumed * self.batch_size


def shard_of(trainer: Any) -> tuple[int, int]:
    """(rank, world size) the loaders shard by: the trainer's, unless Lightning injects its own
    DistributedSampler (`use_distributed_sampler=True`), which then does the sharding."""
    if trainer is None:
        return 0, 1
    connector = getattr(trainer, "_accelerator_connector", None)
    if getattr(connector, "use_distributed_sampler", False):
        return 0, 1
    return trainer.global_rank, trainer.world_size


def batches_consumed(trainer: Any) -> Callable[[], int]:
    """Batches of the current epoch that the training loop has run (a checkpoint saved in
    `on_train_batch_end` counts the batch just trained; one saved after validation too)."""
    return lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed


def train_loader(
    dataset: Any, batch_size: int, seed: int, trainer: Any = None, **kwargs: Any
) -> DataLoader:
    rank, world_size = shard_of(trainer)
    sampler = TrainSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        # worker base seeds from here, not from the global torch generator: creating an
        # iterator leaves the training's random stream untouched
        generator=torch.Generator().manual_seed(int(seed)),
        consumed=batches_consumed(trainer) if trainer is not None else None,
        **kwargs,
    )


def eval_loader(dataset: Any, batch_size: int, trainer: Any = None, **kwargs: Any) -> DataLoader:
    rank, world_size = shard_of(trainer)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EvalSampler(len(dataset), rank=rank, world_size=world_size),
        drop_last=False,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
