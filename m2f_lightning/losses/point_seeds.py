"""Per-sample random streams of the criterion's sampled points.

Given a seed per image (the data's `(seed, epoch, index)` seed, `Batch.point_seeds`), the points
of image i come from generators of that seed alone: the same image gets the same points on any
rank, at any position in any batch. The matcher and the mask losses draw from separate streams
of the seed (salted), so the order in which the two ask does not matter. Within a stream the
draws follow the prediction sets in order (final set, then the auxiliary ones).
"""

from collections.abc import Sequence

import numpy as np
import torch

from .point_sampling import RandFn

MATCHER_STREAM = 1
LOSS_STREAM = 2


def stream_seed(sample_seed: int, stream: int) -> int:
    """A 64-bit generator seed of (sample seed, stream), well mixed (numpy's SeedSequence)."""
    words = [int(sample_seed) & 0xFFFFFFFF, (int(sample_seed) >> 32) & 0xFFFFFFFF, int(stream)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


def seeded_rand(generator: torch.Generator) -> RandFn:
    """`torch.rand` drawing from `generator` (which lives on the device it is asked for)."""
    return lambda *size, device=None: torch.rand(*size, generator=generator, device=device)


def image_rands(seeds: Sequence[int], stream: int, device: torch.device) -> list[RandFn]:
    """One `RandFn` per image, each from a generator on `device` seeded by the image's seed and
    `stream`. Creating and seeding a generator is host-side: nothing is read from the device."""
    return [
        seeded_rand(torch.Generator(device=device).manual_seed(stream_seed(seed, stream)))
        for seed in seeds
    ]


def rows_rand(rands: Sequence[RandFn], counts: Sequence[int]) -> RandFn:
    """A `RandFn` of [sum(counts), ...]: image i's `counts[i]` rows drawn from `rands[i]`, image
    after image (an image with no row draws nothing), so a batched draw equals the per-image
    draws."""

    def rand(rows: int, *size: int, device: torch.device | None = None) -> torch.Tensor:
        if rows != sum(counts):
            raise ValueError(f"{rows} rows asked of images with {sum(counts)}")
        parts = [r(n, *size, device=device) for r, n in zip(rands, counts, strict=True) if n]
        return torch.cat(parts) if parts else torch.empty(0, *size, device=device)

    return rand
