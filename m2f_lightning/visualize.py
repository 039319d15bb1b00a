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
