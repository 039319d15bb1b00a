"""Augmentation pipelines (albumentations) of the paper's recipes.

- `lsj`: COCO's large-scale jitter: flip, resize so the image fits 1024·s with s ~ U(0.1, 2.0)
  (aspect kept), random crop to 1024² if larger, pad bottom/right (image 128). No colour aug.
- `semantic`: ADE20K / Cityscapes / Mapillary: short side drawn from {0.5, 0.6, ..., 2.0} × base
  (long side ≤ 4 × base), random crop, SSD-style colour jitter, flip.
- eval: resize the short side to the test size (long side capped); annotations stay at the
  original size, where the metrics are computed.

Panoptic and instance ground truth travels as one int32 id map (nearest, pad 0 = void);
semantic maps pad with 255 (ignore).
"""

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np


def _resize(image: np.ndarray, height: int, width: int, nearest: bool) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if image.dtype in (np.int32, np.int64) and nearest:
        # cv2 cannot resize int64; id maps fit in int32
        return cv2.resize(image.astype(np.int32), (width, height), interpolation=interp)
    return cv2.resize(image, (width, height), interpolation=interp)


class ResizeScale(A.DualTransform):
    """LSJ's resize: s ~ U(min_scale, max_scale), scale = min(target·s/h, target·s/w)."""

    def __init__(
        self,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
        target_size: int = 1024,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.min_scale, self.max_scale, self.target_size = min_scale, max_scale, target_size

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        jitter = self.py_random.uniform(self.min_scale, self.max_scale)
        scale = min(self.target_size * jitter / height, self.target_size * jitter / width)
        return {
            "jitter": jitter,
            "out_h": max(1, int(round(height * scale))),
            "out_w": max(1, int(round(width * scale))),
        }

    def apply(self, img: np.ndarray, out_h: int, out_w: int, **params: Any) -> np.ndarray:
        return _resize(img, out_h, out_w, nearest=False)

    def apply_to_mask(self, mask: np.ndarray, out_h: int, out_w: int, **params: Any) -> np.ndarray:
        return _resize(mask, out_h, out_w, nearest=True)


class ResizeShortestEdge(A.DualTransform):
    """Short side to a size drawn from `short_sizes`, then shrink if the long side exceeds `max_size`."""

    def __init__(self, short_sizes: Sequence[int], max_size: int, p: float = 1.0):
        super().__init__(p=p)
        self.short_sizes = list(short_sizes)
        self.max_size = max_size

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        short = self.py_random.choice(self.short_sizes)
        scale = short / min(height, width)
        if max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return {"out_h": int(height * scale + 0.5), "out_w": int(width * scale + 0.5)}

    def apply(self, img: np.ndarray, out_h: int, out_w: int, **params: Any) -> np.ndarray:
        return _resize(img, out_h, out_w, nearest=False)

    def apply_to_mask(self, mask: np.ndarray, out_h: int, out_w: int, **params: Any) -> np.ndarray:
        return _resize(mask, out_h, out_w, nearest=True)


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
            A.HorizontalFlip(p=flip_prob),
            ResizeScale(min_scale, max_scale, size),
            A.RandomCrop(
                size,
                size,
                pad_if_needed=True,
                pad_position="top_left",
                fill=image_pad,
                fill_mask=mask_pad,
            ),
        ],
        save_applied_params=True,
    )


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
    """Short-side jitter + random crop + SSD colour + flip (ADE20K, Cityscapes, Mapillary)."""
    steps = int(round((max_ratio - min_ratio) / 0.1)) + 1
    short_sizes = [int(round(base_size * (min_ratio + 0.1 * i))) for i in range(steps)]
    crop_h, crop_w = crop_size
    transforms: list[A.BasicTransform] = [
        ResizeShortestEdge(short_sizes, max_size=4 * base_size),
        A.RandomCrop(
            crop_h,
            crop_w,
            pad_if_needed=True,
            pad_position="top_left",
            fill=image_pad,
            fill_mask=mask_pad,
        ),
    ]
    if color_aug:
        transforms.append(ColorAugSSD())
    transforms.append(A.HorizontalFlip(p=flip_prob))
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
