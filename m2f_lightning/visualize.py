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
    rows: int = 256,
) -> np.ndarray:
    """Blend class colours over the image; with `segment_map`, draw segment boundaries in white.

    Computed `rows` image rows at a time, so that the float32 intermediates stay small for a
    large photo (a whole 24-megapixel image in float32 is 288 MB per array).
    """
    height = image.shape[0]
    out = np.empty((*image.shape[:2], 3), dtype=np.uint8)
    for start in range(0, height, rows):
        band = slice(start, min(start + rows, height))
        colored = colorize(class_map[band], colors, ignore).astype(np.float32)
        valid = (class_map[band] != ignore)[..., None]
        pixels = image[band].astype(np.float32)
        blended = np.where(valid, (1 - alpha) * pixels + alpha * colored, pixels)
        if segment_map is not None:
            edges = np.zeros(segment_map[band].shape, dtype=bool)
            first = 1 if start == 0 else 0  # the image's first row has no row above
            edges[first:] |= (
                segment_map[start + first : band.stop]
                != segment_map[start + first - 1 : band.stop - 1]
            )
            edges[:, 1:] |= segment_map[band][:, 1:] != segment_map[band][:, :-1]
            blended[edges] = 255
        out[band] = blended.clip(0, 255).astype(np.uint8)
    return out


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
