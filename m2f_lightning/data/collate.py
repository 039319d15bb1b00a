"""Collate samples into a padded `Batch`."""

import math
from typing import Any

import torch

from ..types import Batch


def collate(items: list[dict[str, Any]], size_divisibility: int = 32) -> Batch:
    """Stack items into a `Batch`: images (uint8) and training masks (False) padded bottom/right
    to a common multiple of `size_divisibility`. The pad value does not matter: the model
    normalises and zeroes everything outside `image_sizes`, as detectron2 does. Prediction items
    that could not be read (an `error`) go to `Batch.unreadable`, not into the images."""
    unreadable = [(item["file_name"], item["error"]) for item in items if "error" in item]
    items = [item for item in items if "error" not in item]
    if not items:
        empty = torch.zeros((0, 3, size_divisibility, size_divisibility), dtype=torch.uint8)
        return Batch(empty, [], [], [], [], unreadable=unreadable)
    max_h = max(item["image"].shape[1] for item in items)
    max_w = max(item["image"].shape[2] for item in items)
    pad_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
    pad_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    images = torch.zeros((len(items), 3, pad_h, pad_w), dtype=items[0]["image"].dtype)
    for i, item in enumerate(items):
        _, h, w = item["image"].shape
        images[i, :, :h, :w] = item["image"]
    batch = Batch(
        images=images,
        image_sizes=[tuple(item["image_size"]) for item in items],
        orig_sizes=[tuple(item["orig_size"]) for item in items],
        file_names=[item["file_name"] for item in items],
        image_ids=[item["image_id"] for item in items],
        unreadable=unreadable,
    )
    if "targets" in items[0]:
        batch.targets = []
        for item in items:
            masks = item["targets"]["masks"]
            full = torch.zeros((len(masks), pad_h, pad_w), dtype=torch.bool)
            full[:, : masks.shape[1], : masks.shape[2]] = masks
            batch.targets.append({"labels": item["targets"]["labels"], "masks": full})
        if all("point_seed" in item for item in items):
            batch.point_seeds = [int(item["point_seed"]) for item in items]
    if "eval_target" in items[0]:
        batch.eval_targets = [item["eval_target"] for item in items]
        batch.scored = [bool(item.get("scored", True)) for item in items]
    return batch
