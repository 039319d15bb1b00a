"""Reader for semantic label PNGs next to images (ADE20K, Cityscapes trainIds, Mapillary, COCO)."""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io import DataError, check_same_size, read_image, read_label
from .base import Reader, Sample


def shift_ade20k(labels: np.ndarray) -> np.ndarray:
    """Raw ADE20K labels: 0 (other) → 255 ignore, 1..150 → 0..149 (mmseg's reduce_zero_label).
    int64, not narrowed: a raw value out of range stays out of range (raw 256 too, which would
    otherwise shift onto 255 = ignore) for the reader's check to name."""
    shifted = labels.astype(np.int64) - 1
    shifted[labels == 0] = 255
    shifted[labels == 256] = 256
    return shifted


def remap_ignore(value: int) -> Callable[[np.ndarray], np.ndarray]:
    """A dataset whose files use another ignore label (Mapillary: 65) → 255."""

    def remap(labels: np.ndarray) -> np.ndarray:
        out = labels.astype(np.int64)  # a copy, not narrowed: the reader checks the range
        out[labels == value] = 255
        return out

    return remap


class SemanticReader(Reader):
    """(image, label PNG) pairs; `transform` maps stored labels to contiguous ids / 255."""

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        num_classes: int,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.pairs = pairs
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        labels = read_label(label_path)
        if labels.ndim != 2:
            raise DataError(
                f"semantic label {label_path} must be single-channel, got shape {labels.shape}"
            )
        check_same_size(image, labels, image_path, label_path)
        if self.transform is not None:
            labels = self.transform(labels)
        labels = class_ids(labels, self.num_classes, label_path)
        return Sample(
            image=image, file_name=str(image_path), image_id=image_path.stem, sem_seg=labels
        )


def class_ids(labels: np.ndarray, num_classes: int, label_path: Path) -> np.ndarray:
    """Semantic labels as uint8 after checking, in their own (possibly 16-bit) type, that each is
    a class id 0..num_classes-1 or 255: narrowed first, a 300 would silently become class 44."""
    if labels.ndim != 2 or labels.dtype.kind not in "biu":
        raise DataError(
            f"semantic label {label_path} must be single-channel integers, got shape "
            f"{labels.shape} of {labels.dtype}"
        )
    bad = np.unique(labels[((labels < 0) | (labels >= num_classes)) & (labels != 255)])
    if len(bad):
        raise DataError(
            f"{label_path}: unknown class ids {bad.tolist()} (expected 0..{num_classes - 1} or 255)"
        )
    return labels.astype(np.uint8)


def paired_files(
    image_dir: Path, label_dir: Path, image_glob: str, label_name: Callable[[Path], str]
) -> list[tuple[Path, Path]]:
    """Every image under `image_dir` with its label file; a missing label is an error."""
    pairs = []
    for image in sorted(image_dir.glob(image_glob)):
        label = label_dir / label_name(image.relative_to(image_dir))
        if not label.is_file():
            raise DataError(f"label file missing for {image}: expected {label}")
        pairs.append((image, label))
    if not pairs:
        raise DataError(f"no images matching {image_glob} under {image_dir}")
    return pairs
