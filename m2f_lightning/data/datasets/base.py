"""The common sample every reader returns, whatever the dataset's on-disk format."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import MissingDataError


@dataclass
class Sample:
    """One image and its annotation in native form.

    Panoptic (and instance derived from panoptic): `id_map` (int32, 0 = void) + `segments`
    [{id, category (contiguous), iscrowd}]. Instance (COCO JSON, overlaps allowed): `masks`
    uint8 [N, H, W] + `labels` + `crowd`. Semantic: `sem_seg` uint8 [H, W], 255 = ignore.

    Evaluation ground truth that the official evaluators take from other files than the
    training annotation: `eval_instances` (masks, labels, crowd, areas) from the instance JSON
    of a panoptic dataset (AP), `sem_seg` on a panoptic sample (mIoU from the semantic PNGs), and
    `instance_file` (Cityscapes' instanceIds PNG, which cityscapesScripts' evaluation reads).

    Areas (COCOeval's size buckets for APs/APm/APl): each annotation's JSON `area` (float64
    `areas` beside `masks`, `segments[i]["area"]`), NaN where the format has none (then the
    metric counts the mask's pixels). They refer to the image on disk, the size AP is scored at.
    """

    image: np.ndarray
    file_name: str
    image_id: int | str
    id_map: np.ndarray | None = None
    segments: list[dict] = field(default_factory=list)
    masks: np.ndarray | None = None
    labels: np.ndarray | None = None
    crowd: np.ndarray | None = None
    areas: np.ndarray | None = None
    sem_seg: np.ndarray | None = None
    eval_instances: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    instance_file: str | None = None
    # COCO instance training: per annotation its polygons ([K, 2] x, y arrays) or None (RLE)
    polygons: list[list[np.ndarray] | None] | None = None
    # Cityscapes instance training (polygon JSON): every drawn polygon ([K, 2] x, y), topmost
    # first, with the index of the annotation it is or -1 (a label that only covers others)
    layers: list[tuple[np.ndarray, int]] | None = None


class Reader:
    """A list of records and a way to turn one into a `Sample`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError


def require_dir(path: Path, what: str, layout: str, hint: str) -> None:
    """Fail early with the expected layout when a dataset folder is missing."""
    if not path.is_dir():
        raise MissingDataError(f"{what} not found: {path}\nExpected layout:\n{layout}\n{hint}")
