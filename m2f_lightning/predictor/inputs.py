"""The images `Segmenter` takes: a path, a PIL image or a numpy array (H x W x 3 uint8 RGB, or
H x W grey), read as predict reads its files (`read_image`: EXIF orientation, RGB)."""

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.io import image_to_array, read_image
from ..errors import DataError

ImageInput = str | Path | Image.Image | np.ndarray


def is_single(images: Any) -> bool:
    """One image (not a list or tuple of them)."""
    return not isinstance(images, (list, tuple))


def load_input(image: ImageInput, index: int) -> tuple[np.ndarray, str]:
    """(RGB uint8 [H, W, 3], its file name): a path's own, `image<index>.png` otherwise (the
    stem names the files `save` writes)."""
    if isinstance(image, (str, Path)):
        return read_image(image), str(image)
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or f"image{index}.png"
        return image_to_array(image, name), name
    if isinstance(image, np.ndarray):
        return _checked_array(image, index), f"image{index}.png"
    raise DataError(
        f"input {index}: a {type(image).__name__} is not an image: give a path, a PIL image or "
        "a numpy array (H x W x 3 uint8 RGB)"
    )


def _checked_array(array: np.ndarray, index: int) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(
            f"input {index}: a numpy image must be uint8 RGB 0..255, got dtype {array.dtype} "
            "(for floats in 0..1: (array * 255).round().astype(np.uint8))"
        )
    if array.ndim == 2:  # grey, as read_image makes a grey file
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(
            f"input {index}: a numpy image must be H x W x 3 (RGB) or H x W, got shape "
            f"{tuple(array.shape)}"
        )
    return np.ascontiguousarray(array)
