"""SSD-style colour jitter, as the official semantic mapper applies it."""

from typing import Any

import albumentations as A
import cv2
import numpy as np


class ColorAugSSD(A.ImageOnlyTransform):
    """SSD colour jitter as in Mask2Former's semantic recipe (detectron2's ColorAugSSDTransform):
    brightness ±32; then contrast ×U(0.5, 1.5), saturation ×U(0.5, 1.5) and hue ±18 (OpenCV HSV),
    contrast first or last; each step p=0.5. Saturation and hue each convert to HSV and back
    (two uint8 round trips when both apply, as the original). OpenCV's RGB↔HSV on RGB equals its
    BGR↔HSV on the channel-swapped image, which is what the original converts."""

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
        if saturation is not None:  # its own HSV round trip, as the original's
            hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
            hsv[..., 1] = _saturate(hsv[..., 1], saturation, 0.0)
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if hue is not None:  # a second round trip: uint8 HSV → RGB → HSV is not the identity
            hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + hue) % 180
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast is not None:
            x = _saturate(x, contrast, 0.0)
        return x


def _saturate(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """x·alpha + beta clipped to 0..255 and truncated to uint8 after every step, as the
    original's colour jitter does (so a brightened-then-contrasted pixel saturates first)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
