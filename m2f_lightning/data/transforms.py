"""Augmentation pipelines (albumentations) of the paper's recipes, value for value with
detectron2's transforms as the official Mask2Former mappers use them.

- `lsj`: COCO's large-scale jitter: flip, resize so the image fits size·s with s ~ U(0.1, 2.0)
  (aspect kept, sizes rounded), crop size² at an offset drawn from one fraction shared by both
  axes (detectron2's FixedSizeCrop), pad bottom/right (image 128). No colour aug.
- `semantic`: ADE20K / Cityscapes / Mapillary: short side drawn from int(x·0.1·base) for
  x = 5..20 (long side ≤ 4 × base), random crop (offsets drawn per axis), SSD-style colour jitter,
  flip, and only then pad bottom/right to the crop size (image 128, labels the ignore/void value),
  so padding is never jittered nor flipped.
- eval: resize the short side to the test size (long side capped); annotations stay at the
  original size, where the metrics are computed.

Resizing is PIL's, as detectron2's ResizeTransform: images bilinear, antialiased when shrinking;
label and id maps PIL's nearest, which samples the pixel centre (computed here as an index
gather, identical to PIL's output). Resize and crop are fused: only what survives the crop is
resized (images: PIL resizes that source box, with the same sample positions and filter as
resize-then-crop, within 2 grey levels where PIL's 8-bit passes round differently).

Panoptic and instance ground truth travels as one int32 id map (nearest, pad 0 = void);
semantic maps pad with 255 (ignore).
"""

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image

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


def nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    """Source index of each output pixel under PIL's NEAREST resize: the pixel centre,
    (i + 0.5)·in/out, accumulated step by step in float64 as PIL does (so exact boundaries fall
    where PIL's fall), truncated."""
    step = in_size / out_size
    centres = np.cumsum(np.r_[0.5 * step, np.full(out_size - 1, step)])
    return np.minimum(centres.astype(np.int64), in_size - 1)


def resize_labels(
    labels: np.ndarray,
    height: int,
    width: int,
    offset: Sequence[int] = (0, 0),
    crop: Sequence[int] | None = None,
) -> np.ndarray:
    """PIL's nearest resize to (height, width), pixel for pixel, as detectron2 resizes
    segmentation and panoptic maps; `crop` (h, w) at `offset` (y, x) returns only that window of
    the resized map. Any dtype, 2-D or with trailing channels."""
    crop_h, crop_w = crop if crop is not None else (height, width)
    if labels.shape[:2] == (height, width) and crop is None:
        return labels
    rows = nearest_indices(height, labels.shape[0])[offset[0] : offset[0] + crop_h]
    cols = nearest_indices(width, labels.shape[1])[offset[1] : offset[1] + crop_w]
    return labels[rows[:, None], cols[None, :]]


def _crop_box(
    in_hw: Sequence[int], resized_hw: Sequence[int], offset: Sequence[int], crop_hw: Sequence[int]
) -> Box:
    """The source region of `crop_hw` pixels at `offset` in the image resized to `resized_hw`."""
    sy, sx = in_hw[0] / resized_hw[0], in_hw[1] / resized_hw[1]
    (y0, x0), (h, w) = offset, crop_hw
    return (x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy)


class _ResizeCrop(A.DualTransform):
    """Resize to (out_h, out_w), then crop (crop_h, crop_w) at (y0, x0): one PIL call per array.
    Subclasses draw the sizes and the offset."""

    def _run(self, array: np.ndarray, nearest: bool, **p: Any) -> np.ndarray:
        if p["flip"]:
            array = array[:, ::-1]
        if nearest:
            return resize_labels(
                array, p["out_h"], p["out_w"], (p["y0"], p["x0"]), (p["crop_h"], p["crop_w"])
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
        rows = nearest_indices(p["out_h"], masks.shape[1])[p["y0"] : p["y0"] + p["crop_h"]]
        cols = nearest_indices(p["out_w"], masks.shape[2])[p["x0"] : p["x0"] + p["crop_w"]]
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
    ):
        super().__init__(p=p)
        self.min_scale, self.max_scale, self.size = min_scale, max_scale, size
        self.flip_prob = flip_prob

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

    params = dict(applied).get("LargeScaleJitter")
    if params is None:
        return {}
    (height, width), (out_h, out_w) = in_hw, out_hw
    sx, sy = params["out_w"] / width, params["out_h"] / height
    masks = {}
    for i, polys in enumerate(polygons):
        if polys is None:
            continue
        moved = []
        for poly in polys:
            xy = poly.astype(np.float64).copy()
            if params["flip"]:
                xy[:, 0] = width - xy[:, 0]
            xy[:, 0] = xy[:, 0] * sx - params["x0"]
            xy[:, 1] = xy[:, 1] * sy - params["y0"]
            moved.append(xy.reshape(-1).tolist())
        if not moved:
            masks[i] = np.zeros((out_h, out_w), dtype=np.uint8)
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(moved, out_h, out_w))
        masks[i] = mask_utils.decode(rle)
    return masks


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output size: short side to `short`, then shrink so the
    long side is at most `max_size`; int(x + 0.5) at the end."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


class ShortEdgeResizeCrop(_ResizeCrop):
    """ResizeShortestEdge (sizes by "choice") then RandomCrop "absolute" (detectron2), fused: the
    crop is min(crop, resized) per side, its offsets drawn independently per axis."""

    def __init__(
        self, short_sizes: Sequence[int], max_size: int, crop_size: Sequence[int], p: float = 1.0
    ):
        super().__init__(p=p)
        self.short_sizes = [int(s) for s in short_sizes]
        self.max_size = max_size
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))

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
    `max_size` (PIL bilinear for images, PIL nearest for label maps)."""

    def __init__(self, short_sizes: Sequence[int], max_size: int, p: float = 1.0):
        super().__init__(p=p)
        self.short_sizes = list(short_sizes)
        self.max_size = max_size

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
        return resize_labels(mask, out_h, out_w)


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


class ColorAugSSD(A.ImageOnlyTransform):
    """SSD colour jitter as in Mask2Former's semantic recipe: brightness ±32; then contrast and
    saturation ×U(0.5, 1.5) and hue ±18 (OpenCV HSV), in one of two orders; each step p=0.5."""

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast = contrast
        self.saturation = saturation
        self.hue_delta = hue_delta

    def get_params(self) -> dict[str, Any]:
        r = self.py_random
        return {
            "brightness": r.uniform(-self.brightness_delta, self.brightness_delta)
            if r.random() < 0.5
            else None,
            "contrast": r.uniform(*self.contrast) if r.random() < 0.5 else None,
            "saturation": r.uniform(*self.saturation) if r.random() < 0.5 else None,
            "hue": r.randint(-self.hue_delta, self.hue_delta) if r.random() < 0.5 else None,
            "contrast_first": r.random() < 0.5,
        }

    def apply(
        self,
        img: np.ndarray,
        brightness=None,
        contrast=None,
        saturation=None,
        hue=None,
        contrast_first=True,
        **params: Any,
    ) -> np.ndarray:
        x = img
        if brightness is not None:
            x = _saturate(x, 1.0, brightness)
        if contrast_first and contrast is not None:
            x = _saturate(x, contrast, 0.0)
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
            if saturation is not None:
                hsv[..., 1] = _saturate(hsv[..., 1], saturation, 0.0)
            if hue is not None:
                hsv[..., 0] = (hsv[..., 0].astype(np.int32) + hue) % 180
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast is not None:
            x = _saturate(x, contrast, 0.0)
        return x


def _saturate(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """x·alpha + beta clipped to 0..255 and truncated to uint8 after every step, as the
    original's colour jitter does (so a brightened-then-contrasted pixel saturates first)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def lsj(
    size: int = 1024,
    min_scale: float = 0.1,
    max_scale: float = 2.0,
    image_pad: int = 128,
    mask_pad: int = 0,
    flip_prob: float = 0.5,
) -> A.Compose:
    """COCO's large-scale jitter (flip before the resize, as the paper's mapper does)."""
    return A.Compose(
        [
            LargeScaleJitter(min_scale, max_scale, size, flip_prob),
            PadBottomRight(size, size, fill=image_pad, fill_mask=mask_pad),
        ],
        save_applied_params=True,
    )


def short_edge_sizes(base_size: int, min_ratio: float = 0.5, max_ratio: float = 2.0) -> list[int]:
    """The official MIN_SIZE_TRAIN list: int(x·0.1·base) for x = 5..20 (truncated, not rounded:
    base 512 gives 256, 307, 358, ...)."""
    first, last = int(round(min_ratio * 10)), int(round(max_ratio * 10))
    return [int(x * 0.1 * base_size) for x in range(first, last + 1)]


def semantic_jitter(
    base_size: int,
    crop_size: Sequence[int],
    min_ratio: float = 0.5,
    max_ratio: float = 2.0,
    color_aug: bool = True,
    image_pad: int = 128,
    mask_pad: int = 255,
    flip_prob: float = 0.5,
) -> A.Compose:
    """Short-side jitter + random crop + SSD colour + flip, then pad bottom/right to the crop size
    (ADE20K, Cityscapes, Mapillary: the mappers pad to SIZE_DIVISIBILITY, which is the crop size
    for ADE20K and Mapillary; Cityscapes crops always fit, so there is nothing to pad)."""
    crop_h, crop_w = (int(c) for c in crop_size)
    transforms: list[A.BasicTransform] = [
        ShortEdgeResizeCrop(
            short_edge_sizes(base_size, min_ratio, max_ratio), 4 * base_size, (crop_h, crop_w)
        )
    ]
    if color_aug:
        transforms.append(ColorAugSSD())
    transforms.append(A.HorizontalFlip(p=flip_prob))
    transforms.append(PadBottomRight(crop_h, crop_w, fill=image_pad, fill_mask=mask_pad))
    return A.Compose(transforms, save_applied_params=True)


def eval_resize(min_size: int, max_size: int) -> A.Compose:
    """Test-time resize of the image (short side `min_size`, long side ≤ `max_size`)."""
    return A.Compose([ResizeShortestEdge([min_size], max_size)])


def build_train_transform(recipe: str, mask_pad: int, **kwargs: Any) -> A.Compose:
    """`recipe` is `lsj` or `semantic` (see the module docstring); kwargs are the recipe's sizes."""
    if recipe == "lsj":
        return lsj(mask_pad=mask_pad, **kwargs)
    if recipe == "semantic":
        return semantic_jitter(mask_pad=mask_pad, **kwargs)
    if recipe == "none":
        return A.Compose([])
    raise ValueError(f"unknown augmentation recipe '{recipe}': choose lsj, semantic or none")
