"""Colour overlays of segmentation results, for prediction outputs, the demo and W&B.

`overlay_panel` is what a person reads: the image on the left, the prediction on the right,
class names written on the segments, contours at segment (instance) borders, and small images
upscaled (nearest for the label maps) so the text is legible.
"""

import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..types import SegmentationResult


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


def segment_map(result: SegmentationResult, instance_score_threshold: float = 0.5) -> np.ndarray:
    """One segment id per pixel, int64 [H, W] (0 = none), for contours and labels: the panoptic
    ids; else the drawn instances (as `class_map` draws them, highest score on top); else the
    semantic classes (id = class + 1)."""
    if result.panoptic_seg is not None:
        return result.panoptic_seg.cpu().numpy().astype(np.int64)
    if result.sem_seg is not None:
        return result.class_map().cpu().numpy().astype(np.int64) + 1
    inst = result.instances
    if inst is None:
        raise ValueError("the result holds no panoptic, semantic or instance prediction")
    out = np.zeros(tuple(inst.masks.shape[1:]), dtype=np.int64)
    scores = inst.scores.cpu().numpy() if inst.scores is not None else np.ones(len(inst.labels))
    for k, i in enumerate(np.argsort(-scores, kind="stable")):
        if scores[i] >= instance_score_threshold:
            out[inst.masks[i].cpu().numpy() & (out == 0)] = k + 1
    return out


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _label_anchors(segments: np.ndarray, min_pixels: int) -> list[tuple[int, int, int]]:
    """(segment id, y, x) of each segment of at least `min_pixels`: the point deepest inside
    its largest connected part, where a name is least likely to cross a border."""
    anchors = []
    for seg_id in np.unique(segments):
        if seg_id == 0:
            continue
        mask = (segments == seg_id).astype(np.uint8)
        if int(mask.sum()) < min_pixels:
            continue
        depth = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        anchors.append((int(seg_id), int(y), int(x)))
    return anchors


def overlay_panel(
    image: np.ndarray,
    class_map: np.ndarray,
    colors: Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
    segment_map: np.ndarray | None = None,
    min_long_side: int = 512,
    alpha: float = 0.55,
    ignore: int = 255,
) -> np.ndarray:
    """[image | prediction] side by side, RGB uint8 [s·H, 2·s·W, 3].

    Both halves are upscaled by the integer factor s that brings the long side to at least
    `min_long_side` (the image bilinearly, the label maps by nearest neighbour). The right half
    is the colour overlay with white contours at the borders of `segment_map` (panoptic
    segments, instances; default: the classes) and each segment's class name written on it
    (white on a dark box, Pillow's default font) when `class_names` is given."""
    height, width = class_map.shape
    scale = max(1, math.ceil(min_long_side / max(height, width)))
    size = (width * scale, height * scale)
    if segment_map is None:
        segment_map = np.where(class_map == ignore, 0, class_map + 1)
    left = image if scale == 1 else np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    up_classes = np.kron(class_map, np.ones((scale, scale), dtype=class_map.dtype))
    up_segments = np.kron(segment_map, np.ones((scale, scale), dtype=segment_map.dtype))
    right = overlay(left, up_classes, colors, alpha, segment_map=None, ignore=ignore)
    edges = np.zeros(up_segments.shape, dtype=bool)
    edges[1:, :] |= up_segments[1:, :] != up_segments[:-1, :]
    edges[:, 1:] |= up_segments[:, 1:] != up_segments[:, :-1]
    if scale > 1:  # 2 px wide once upscaled, so they survive a viewer's downscaling
        edges = cv2.dilate(edges.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    right[edges] = 255
    canvas = Image.fromarray(right)
    if class_names is not None:
        draw = ImageDraw.Draw(canvas)
        font = _font(max(14, min(size) // 24))
        for _, y, x in _label_anchors(segment_map, min_pixels=max(16, height * width // 2000)):
            cls = int(class_map[y, x])
            if cls == ignore or not 0 <= cls < len(class_names):
                continue
            cy, cx = (y + 0.5) * scale, (x + 0.5) * scale
            box = draw.textbbox((cx, cy), class_names[cls], font=font, anchor="mm")
            draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
            draw.text((cx, cy), class_names[cls], font=font, fill=(255, 255, 255), anchor="mm")
    return np.concatenate([np.asarray(left, dtype=np.uint8), np.asarray(canvas)], axis=1)
