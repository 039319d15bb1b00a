"""The geometric transforms of the recipes (albumentations DualTransforms): resize and crop fused,
so only what survives the crop is resized; flip; pad bottom/right.
"""

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np

from ...resizing import (
    LABEL_RULES,
    Box,
    LabelRule,
    nearest_indices,
    resize_image,
    resize_labels,
    shortest_edge_size,
)


def _checked_rule(rule: str) -> LabelRule:
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label resize rule {rule!r}: choose one of {LABEL_RULES}")
    return rule  # type: ignore[return-value]


def _crop_box(
    in_hw: Sequence[int], resized_hw: Sequence[int], offset: Sequence[int], crop_hw: Sequence[int]
) -> Box:
    """The source region of `crop_hw` pixels at `offset` in the image resized to `resized_hw`."""
    sy, sx = in_hw[0] / resized_hw[0], in_hw[1] / resized_hw[1]
    (y0, x0), (h, w) = offset, crop_hw
    return (x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy)


class _ResizeCrop(A.DualTransform):
    """Resize to (out_h, out_w), then crop (crop_h, crop_w) at (y0, x0): one PIL call per array.
    Subclasses draw the sizes and the offset; label maps and masks follow `label_rule` (see
    `resize.nearest_indices`)."""

    label_rule: LabelRule = "pil"

    def _run(self, array: np.ndarray, nearest: bool, **p: Any) -> np.ndarray:
        if p["flip"]:
            array = array[:, ::-1]
        if nearest:
            return resize_labels(
                array,
                p["out_h"],
                p["out_w"],
                (p["y0"], p["x0"]),
                (p["crop_h"], p["crop_w"]),
                self.label_rule,
            )
        box = _crop_box(
            array.shape[:2],
            (p["out_h"], p["out_w"]),
            (p["y0"], p["x0"]),
            (p["crop_h"], p["crop_w"]),
        )
        return resize_image(array, p["crop_h"], p["crop_w"], box)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return self._run(img, False, **params)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return self._run(mask, True, **params)

    def apply_to_masks(self, masks: Any, **p: Any) -> np.ndarray:
        masks = np.asarray(masks)
        if len(masks) == 0:
            return np.zeros((0, p["crop_h"], p["crop_w"]), dtype=np.uint8)
        if p["flip"]:
            masks = masks[:, :, ::-1]
        rule = self.label_rule
        rows = nearest_indices(p["out_h"], masks.shape[1], rule)[p["y0"] : p["y0"] + p["crop_h"]]
        cols = nearest_indices(p["out_w"], masks.shape[2], rule)[p["x0"] : p["x0"] + p["crop_w"]]
        return masks[:, rows[:, None], cols[None, :]]


class LargeScaleJitter(_ResizeCrop):
    """Flip, ResizeScale and the crop of FixedSizeCrop (detectron2), fused.

    flip with p = `flip_prob`; s ~ U(min_scale, max_scale); scale = min(size·s/h, size·s/w);
    resized size = round(h·scale), round(w·scale) (half to even, as numpy); the crop of
    min(size, resized) per side starts at round(f·(resized − crop)) with one f ~ U(0, 1) for both
    axes. Pad with `PadBottomRight` afterwards.
    """

    def __init__(
        self,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
        size: int = 1024,
        flip_prob: float = 0.5,
        p: float = 1.0,
        label_rule: LabelRule = "pil",
    ):
        super().__init__(p=p)
        self.min_scale, self.max_scale, self.size = min_scale, max_scale, size
        self.flip_prob = flip_prob
        self.label_rule = _checked_rule(label_rule)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        r = self.py_random
        flip = r.random() < self.flip_prob
        jitter = r.uniform(self.min_scale, self.max_scale)
        fraction = r.uniform(0.0, 1.0)
        scale = min(self.size * jitter / height, self.size * jitter / width)
        out_h = max(1, int(np.round(height * scale)))
        out_w = max(1, int(np.round(width * scale)))
        crop_h, crop_w = min(self.size, out_h), min(self.size, out_w)
        return {
            "flip": flip,
            "jitter": jitter,
            "fraction": fraction,
            "out_h": out_h,
            "out_w": out_w,
            "crop_h": crop_h,
            "crop_w": crop_w,
            "y0": int(np.round((out_h - crop_h) * fraction)),
            "x0": int(np.round((out_w - crop_w) * fraction)),
        }


def map_points(xy: np.ndarray, applied: list, in_hw: Sequence[int]) -> np.ndarray:
    """(x, y) points [K, 2] of the input image through the geometric transforms that ran
    (`applied`: the pipeline's `applied_transforms`), as detectron2 moves polygons: a flip
    x → W − x, a resize (x·w'/W, y·h'/H), a crop shift by its offset; colour and bottom/right
    padding leave points where they are. A geometric transform not listed here is an error, so
    that polygons never silently stay behind the image."""
    xy = np.array(xy, dtype=np.float64).reshape(-1, 2)
    height, width = in_hw[:2]
    for name, params in applied:
        if name in ("LargeScaleJitter", "ShortEdgeResizeCrop"):
            if params["flip"]:
                xy[:, 0] = width - xy[:, 0]
            xy[:, 0] = xy[:, 0] * params["out_w"] / width - params["x0"]
            xy[:, 1] = xy[:, 1] * params["out_h"] / height - params["y0"]
            height, width = params["crop_h"], params["crop_w"]
        elif name == "ResizeShortestEdge":
            xy[:, 0] *= params["out_w"] / width
            xy[:, 1] *= params["out_h"] / height
            height, width = params["out_h"], params["out_w"]
        elif name == "HorizontalFlip":
            xy[:, 0] = width - xy[:, 0]
        elif name not in ("ColorAugSSD", "PadBottomRight"):
            raise NotImplementedError(f"polygons cannot follow the transform {name}")
    return xy


def lsj_polygon_masks(
    polygons: list[list[np.ndarray] | None],
    applied: list,
    in_hw: Sequence[int],
    out_hw: Sequence[int],
) -> dict[int, np.ndarray]:
    """COCO instance polygons through the LSJ geometry, then rasterised, as detectron2 does:
    flip x → W − x, resize (x·w'/W, y·h'/H), shift by the crop offset, and pycocotools'
    rasteriser at the output size (which clips at its border, as the crop clips the polygon).
    `applied` is the pipeline's `applied_transforms`; returns {annotation index: uint8 mask}."""
    from pycocotools import mask as mask_utils

    if "LargeScaleJitter" not in dict(applied):
        return {}
    out_h, out_w = out_hw
    masks = {}
    for i, polys in enumerate(polygons):
        if polys is None:
            continue
        moved = [map_points(poly, applied, in_hw).reshape(-1).tolist() for poly in polys]
        if not moved:
            masks[i] = np.zeros((out_h, out_w), dtype=np.uint8)
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(moved, out_h, out_w))
        masks[i] = mask_utils.decode(rle)
    return masks


class ShortEdgeResizeCrop(_ResizeCrop):
    """ResizeShortestEdge (sizes by "choice") then RandomCrop "absolute" (detectron2), fused: the
    crop is min(crop, resized) per side, its offsets drawn independently per axis."""

    def __init__(
        self,
        short_sizes: Sequence[int],
        max_size: int,
        crop_size: Sequence[int],
        p: float = 1.0,
        label_rule: LabelRule = "pil",
    ):
        super().__init__(p=p)
        self.short_sizes = [int(s) for s in short_sizes]
        self.max_size = max_size
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.label_rule = _checked_rule(label_rule)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        r = self.py_random
        short = r.choice(self.short_sizes)
        out_h, out_w = shortest_edge_size(height, width, short, self.max_size)
        crop_h, crop_w = min(self.crop_size[0], out_h), min(self.crop_size[1], out_w)
        return {
            "flip": False,
            "short": short,
            "out_h": out_h,
            "out_w": out_w,
            "crop_h": crop_h,
            "crop_w": crop_w,
            "y0": r.randint(0, out_h - crop_h),
            "x0": r.randint(0, out_w - crop_w),
        }


class ResizeShortestEdge(A.DualTransform):
    """Short side to a size drawn from `short_sizes`, then shrink if the long side exceeds
    `max_size` (PIL bilinear for images, nearest under `label_rule` for label maps)."""

    def __init__(
        self,
        short_sizes: Sequence[int],
        max_size: int,
        p: float = 1.0,
        label_rule: LabelRule = "pil",
    ):
        super().__init__(p=p)
        self.short_sizes = list(short_sizes)
        self.max_size = max_size
        self.label_rule = _checked_rule(label_rule)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        short = self.py_random.choice(self.short_sizes)
        out_h, out_w = shortest_edge_size(height, width, short, self.max_size)
        return {"out_h": out_h, "out_w": out_w}

    def apply(self, img: np.ndarray, out_h: int, out_w: int, **params: Any) -> np.ndarray:
        return resize_image(img, out_h, out_w)

    def apply_to_mask(self, mask: np.ndarray, out_h: int, out_w: int, **params: Any) -> np.ndarray:
        return resize_labels(mask, out_h, out_w, rule=self.label_rule)


class PadBottomRight(A.DualTransform):
    """Pad to at least (height, width), image at the top-left: `fill` for the image, `fill_mask`
    for label maps and masks (detectron2's PadTransform as the mappers use it)."""

    def __init__(self, height: int, width: int, fill: int = 128, fill_mask: int = 0, p=1.0):
        super().__init__(p=p)
        self.height, self.width, self.fill, self.fill_mask = height, width, fill, fill_mask

    def _pad(self, array: np.ndarray, value: int) -> np.ndarray:
        h, w = array.shape[:2]
        if h >= self.height and w >= self.width:
            return array
        out = np.full(
            (max(h, self.height), max(w, self.width), *array.shape[2:]), value, dtype=array.dtype
        )
        out[:h, :w] = array
        return out

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return self._pad(img, self.fill)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return self._pad(mask, self.fill_mask)

    def apply_to_masks(self, masks: Any, **params: Any) -> np.ndarray:
        masks = np.asarray(masks)
        if masks.ndim != 3:
            return masks
        if len(masks) == 0:
            h, w = masks.shape[1:]
            return np.zeros((0, max(h, self.height), max(w, self.width)), dtype=masks.dtype)
        return np.stack([self._pad(m, self.fill_mask) for m in masks])
