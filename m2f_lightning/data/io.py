"""Reading images and annotation PNGs with clear errors (file named) instead of bad samples."""

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, MissingDataError
from .validation import DataWarning

__all__ = [
    "DataError",
    "MissingDataError",
    "check_same_size",
    "image_to_array",
    "read_image",
    "read_label",
]


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

    16-bit grey images are reduced by a fixed scale, see `grey_16_to_8`.
    """
    return image_to_array(_open(Path(path)), Path(path))


def image_to_array(image: Image.Image, path: str | Path = "<image>") -> np.ndarray:
    """An opened PIL image as `read_image` returns a file's: EXIF orientation applied, RGB uint8
    [H, W, 3]; `path` names it in errors."""
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"unreadable EXIF orientation in {path}: {err}") from err
    if image.mode in WIDE_GREY_MODES:
        grey = grey_16_to_8(np.asarray(image), image.mode, Path(path))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


# PIL's modes of grey images wider than 8 bits: 16-bit (I;16*) and 32-bit signed (I)
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I")


def grey_16_to_8(values: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """A 16-bit grey image's values (0..65535) → uint8 by the fixed scale `value >> 8` (its high
    byte), never by the image's own range: every image of a dataset keeps the same brightness
    scale. PIL decodes 16-bit colour PNGs the same way (their high byte); its `convert("RGB")`
    of a grey I;16 image, which detectron2's `read_image` calls, instead clips every value above
    255 to 255 (a white image). 8-bit values widened the PNG way (v * 257) come back exactly.

    Mode "I" (32-bit) images are read on the same 16-bit scale; a value outside 0..65535 has no
    known scale and is an error. An image with no value above 255 reads as (near) black: a
    warning names it, since it is probably 8-bit data saved in a 16-bit file.
    """
    wide = values.astype(np.int64)  # I;16B is big-endian; "I" may be negative
    if wide.size and (wide.min() < 0 or wide.max() > 65535):
        raise DataError(
            f"{path}: {mode} grey image with values {wide.min()}..{wide.max()}; only 16-bit "
            "values 0..65535 are read (as value >> 8): save it as an 8-bit or 16-bit image"
        )
    if wide.size and wide.max() < 256:
        warnings.warn(
            f"{path}: 16-bit ({mode}) grey image whose values are all below 256 (peak "
            f"{wide.max()}): read as value >> 8, it is black; if it holds 8-bit values, save it "
            "as an 8-bit image",
            DataWarning,
            stacklevel=3,
        )
    return (wide >> 8).astype(np.uint8)  # 0..255 after the range check above


def image_mode(path: str | Path) -> str:
    """The PIL mode of the image file at `path`, from its header alone ("RGB", "L", "I;16")."""
    with Image.open(path) as image:
        return image.mode


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
