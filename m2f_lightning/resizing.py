"""Resizing as detectron2's ResizeTransform does it: images PIL bilinear (antialiased when
shrinking); label and id maps by nearest neighbour under one of two rules, computed as an index
gather, chosen by what the official mapper hands the transform:

- "pil": a uint8 map (panoptic RGB ids, instance masks) goes through PIL's NEAREST, which samples
  the pixel centre;
- "torch": a float map (the semantic mapper reads its label PNG as `double`) goes through
  `torch.nn.functional.interpolate(mode="nearest")`, which samples the top-left corner
  (floor(i·in/out), the scale in float32).
"""

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LabelRule = Literal["pil", "torch"]
LABEL_RULES = ("pil", "torch")

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in source pixels


def _pil_resize(array: np.ndarray, out_h: int, out_w: int, resample: int, box: Box | None):
    if array.ndim == 2 and array.dtype not in (np.uint8, np.int32):
        array = array.astype(np.int32)  # PIL "I" (int32) holds any id map; int64 cannot go in
    source = Image.fromarray(np.ascontiguousarray(array))
    return np.asarray(source.resize((out_w, out_h), resample, box=box))


def resize_image(image: np.ndarray, height: int, width: int, box: Box | None = None) -> np.ndarray:
    """PIL bilinear (a triangle filter widened when shrinking, i.e. antialiased), as detectron2
    resizes uint8 images. `box` resizes only that source region (the crop of a larger resize)."""
    if image.shape[:2] == (height, width) and box is None:
        return image
    return _pil_resize(image, height, width, Image.Resampling.BILINEAR, box)


def nearest_indices(out_size: int, in_size: int, rule: LabelRule = "pil") -> np.ndarray:
    """Source index of each output pixel of a nearest resize along one axis.

    "pil": PIL's NEAREST, the pixel centre (i + 0.5)·in/out, accumulated step by step in float64
    as PIL does (so exact boundaries fall where PIL's fall), truncated. "torch":
    `F.interpolate(mode="nearest")`'s own index, read off by resizing 0..in-1 (float64 holds them
    exactly), so its float32 scale and special cases are torch's by construction."""
    if rule == "torch":
        ramp = torch.arange(in_size, dtype=torch.float64).view(1, 1, in_size, 1)
        picked = F.interpolate(ramp, size=(out_size, 1), mode="nearest")
        return picked.view(out_size).numpy().astype(np.int64)
    if rule != "pil":
        raise ValueError(f"unknown label resize rule {rule!r}: choose one of {LABEL_RULES}")
    step = in_size / out_size
    centres = np.cumsum(np.r_[0.5 * step, np.full(out_size - 1, step)])
    return np.minimum(centres.astype(np.int64), in_size - 1)


def resize_labels(
    labels: np.ndarray,
    height: int,
    width: int,
    offset: Sequence[int] = (0, 0),
    crop: Sequence[int] | None = None,
    rule: LabelRule = "pil",
) -> np.ndarray:
    """Nearest resize to (height, width), pixel for pixel as detectron2 resizes a label map under
    `rule` (see `nearest_indices`: "pil" for uint8 maps, "torch" for the semantic mapper's float
    maps); `crop` (h, w) at `offset` (y, x) returns only that window of the resized map. Any
    dtype, 2-D or with trailing channels."""
    crop_h, crop_w = crop if crop is not None else (height, width)
    if labels.shape[:2] == (height, width) and crop is None:
        return labels
    rows = nearest_indices(height, labels.shape[0], rule)[offset[0] : offset[0] + crop_h]
    cols = nearest_indices(width, labels.shape[1], rule)[offset[1] : offset[1] + crop_w]
    return labels[rows[:, None], cols[None, :]]


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output size: short side to `short`, then shrink so the
    long side is at most `max_size`; int(x + 0.5) at the end."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)
