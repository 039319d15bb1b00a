"""Reading images and annotation PNGs with clear errors (file named) instead of bad samples."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, MissingDataError

__all__ = ["DataError", "MissingDataError", "check_same_size", "read_image", "read_label"]


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise MissingDataError(f"missing file: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"corrupt or unreadable image {path}: {err}") from err
    return image


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]. Grayscale, palette, RGBA and 16-bit images are converted.

    EXIF orientation is applied, as the original (detectron2 `read_image`, used by every
    Mask2Former dataset mapper) does. A rotated image whose annotation was drawn on the stored
    grid then differs in size from its annotation and the reader's size check names both files
    (detectron2's `check_image_size` does the same), rather than training on a misaligned mask.
    """
    image = _open(Path(path))
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"unreadable EXIF orientation in {path}: {err}") from err
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.max() > 0 else 1.0
        array = (array / max(peak, 255.0) * 255.0).clip(0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_label(path: str | Path) -> np.ndarray:
    """A label PNG as stored (uint8/uint16/int32 [H, W], or [H, W, 3] for RGB-encoded ids)."""
    return np.asarray(_open(Path(path)))  # a palette PNG reads as its indices = labels


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colour → segment id (id = R + 256·G + 256²·B)."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray, rows: int = 256) -> np.ndarray:
    """Segment ids → COCO panoptic PNG colours, `rows` rows at a time (the arithmetic is int64:
    1.2 GB at once for a 24-megapixel image)."""
    out = np.empty((*ids.shape, 3), dtype=np.uint8)
    for start in range(0, len(ids), rows):
        band = ids[start : start + rows].astype(np.int64)
        out[start : start + rows] = np.stack(
            [band % 256, band // 256 % 256, band // 65536 % 256], -1
        )
    return out


def check_same_size(
    image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path
) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise DataError(
            f"annotation {label_path} is {label.shape[1]}x{label.shape[0]} but its image "
            f"{image_path} is {image.shape[1]}x{image.shape[0]}"
        )
