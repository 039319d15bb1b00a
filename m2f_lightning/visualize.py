"""Colour overlays of segmentation results, for prediction outputs, the demo and W&B."""

from collections.abc import Sequence

import numpy as np

from .types import SegmentationResult


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


def class_map(
    result: SegmentationResult, instance_score_threshold: float = 0.5, ignore: int = 255
) -> np.ndarray:
    """One class per pixel of a result, int64 [H, W] (unlabelled = `ignore`): the panoptic
    segments' classes; else the semantic argmax; else the instances scoring at least
    `instance_score_threshold`, highest score on top."""
    if result.panoptic_seg is not None:
        seg = result.panoptic_seg.cpu().numpy()
        out = np.full(seg.shape, ignore, dtype=np.int64)
        for segment in result.segments:
            out[seg == segment.id] = segment.category_id
        return out
    if result.sem_seg is not None:
        return result.class_map().cpu().numpy().astype(np.int64)
    if result.instances is None:
        raise ValueError("the result holds no panoptic, semantic or instance prediction")
    inst = result.instances
    out = np.full(tuple(inst.masks.shape[1:]), ignore, dtype=np.int64)
    scores = inst.scores.cpu().numpy() if inst.scores is not None else np.ones(len(inst.labels))
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] >= instance_score_threshold:
            mask = inst.masks[i].cpu().numpy() & (out == ignore)
            out[mask] = int(inst.labels[i])
    return out
