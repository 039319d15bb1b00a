"""Colour overlays of segmentation results, for prediction outputs, the demo and W&B."""

from collections.abc import Sequence

import numpy as np


def colorize(
    class_map: np.ndarray, colors: Sequence[Sequence[int]], ignore: int = 255
) -> np.ndarray:
    """Class map [H, W] → RGB [H, W, 3]; ignore/void pixels stay black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)[:256]
    out = palette[np.clip(class_map, 0, 255)]
    out[class_map == ignore] = 0
    return out


def overlay(
    image: np.ndarray,
    class_map: np.ndarray,
    colors: Sequence[Sequence[int]],
    alpha: float = 0.55,
    segment_map: np.ndarray | None = None,
    ignore: int = 255,
) -> np.ndarray:
    """Blend class colours over the image; with `segment_map`, draw segment boundaries in white."""
    colored = colorize(class_map, colors, ignore).astype(np.float32)
    valid = (class_map != ignore)[..., None]
    out = np.where(
        valid, (1 - alpha) * image.astype(np.float32) + alpha * colored, image.astype(np.float32)
    )
    if segment_map is not None:
        edges = np.zeros(segment_map.shape, dtype=bool)
        edges[1:, :] |= segment_map[1:, :] != segment_map[:-1, :]
        edges[:, 1:] |= segment_map[:, 1:] != segment_map[:, :-1]
        out[edges] = 255
    return out.clip(0, 255).astype(np.uint8)


def panoptic_class_map(
    panoptic_seg: np.ndarray, segments_info: Sequence[dict], ignore: int = 255
) -> np.ndarray:
    """Panoptic id map → class map (void = ignore)."""
    out = np.full(panoptic_seg.shape, ignore, dtype=np.int64)
    for seg in segments_info:
        out[panoptic_seg == seg["id"]] = seg["category_id"]
    return out


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Images of the same height next to each other, with a 4 px white gap."""
    height = max(i.shape[0] for i in images)
    parts = []
    for image in images:
        pad = np.zeros((height, image.shape[1], 3), dtype=np.uint8)
        pad[: image.shape[0]] = image
        parts += [pad, np.full((height, 4, 3), 255, dtype=np.uint8)]
    return np.concatenate(parts[:-1], axis=1)
