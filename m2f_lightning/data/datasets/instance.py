"""Readers for instance annotations: COCO JSON (polygons and RLE, via pycocotools) and
Cityscapes gtFine instanceIds PNGs."""

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..catalog import DatasetMetadata
from ..io import DataError, check_same_size, read_image, read_label
from ..rle import check_rle_runs
from ..validation import (
    DataWarning,
    check_instance_annotations,
    compare_categories,
    load_json,
)
from .base import Reader, Sample


class CocoInstanceReader(Reader):
    """COCO instances JSON: one mask per annotation (overlaps allowed), crowd flagged. The file
    is checked record by record when read (`validation.check_instance_annotations`).

    `filter_empty` (training) leaves out the images without a non-crowd annotation, as
    detectron2's DATALOADER.FILTER_EMPTY_ANNOTATIONS (True in every official config) does.
    `keep_polygons` (training) also returns each annotation's polygons (None for RLE), which the
    LSJ pipeline transforms and rasterises after the crop, as the official COCO instance mapper."""

    def __init__(
        self,
        json_file: Path,
        image_dir: Path,
        metadata: DatasetMetadata,
        filter_empty: bool = False,
        keep_polygons: bool = False,
    ) -> None:
        data = load_json(json_file, ("images", "annotations"), "instance annotation file")
        compare_categories(data.get("categories"), metadata, json_file, things_only=True)
        self.images, self.anns = check_instance_annotations(data, json_file, metadata)
        self.image_ids = sorted(self.images, key=str)
        if filter_empty:
            listed = len(self.image_ids)
            self.image_ids = [
                i
                for i in self.image_ids
                if any(not a.get("iscrowd", 0) for a in self.anns.get(i, []))
            ]
            if len(self.image_ids) < listed:
                warnings.warn(
                    f"{json_file}: removed {listed - len(self.image_ids)} of {listed} training "
                    "images with no usable (non-crowd) annotations, as detectron2's "
                    f"FILTER_EMPTY_ANNOTATIONS does; {len(self.image_ids)} images left",
                    DataWarning,
                    stacklevel=2,
                )
        self.json_file = json_file
        self.image_dir = image_dir
        self.metadata = metadata
        self.keep_polygons = keep_polygons

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        info = self.images[image_id]
        path = self.image_dir / info["file_name"]
        image = read_image(path)
        height, width = image.shape[:2]
        if (info["height"], info["width"]) != (height, width):
            raise DataError(
                f"{path} is {width}x{height} but {self.json_file} says "
                f"{info['width']}x{info['height']} (image id {image_id})"
            )
        anns = self.anns.get(image_id, [])
        masks = rasterise(anns, height, width, f"{self.json_file} (image id {image_id})")
        labels = np.array(
            [self.metadata.contiguous_id(a["category_id"], str(path)) for a in anns],
            dtype=np.int64,
        )
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        polygons = None
        if self.keep_polygons:
            polygons = [
                [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in a["segmentation"]]
                if isinstance(a["segmentation"], list)
                else None
                for a in anns
            ]
        return Sample(
            image=image,
            file_name=str(path),
            image_id=image_id,
            masks=masks,
            labels=labels,
            crowd=crowd,
            polygons=polygons,
        )


def rasterise(anns: list[dict], height: int, width: int, source: str) -> np.ndarray:
    """COCO annotations (polygons, compressed or uncompressed RLE) → uint8 masks [N, H, W], by
    pycocotools; an undecodable one is an error naming `source` and the annotation id."""
    masks = np.zeros((len(anns), height, width), dtype=np.uint8)
    for i, ann in enumerate(anns):
        segm = ann["segmentation"]
        try:
            if isinstance(segm, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
            else:
                check_rle_runs(segm["counts"], height, width)  # else pycocotools decodes junk
                rle = segm
                if isinstance(segm["counts"], list):
                    rle = mask_utils.frPyObjects(segm, height, width)
            masks[i] = mask_utils.decode(rle)
        except (TypeError, ValueError, IndexError, KeyError) as err:
            raise DataError(
                f"{source}: annotation id {ann.get('id')}: undecodable segmentation ({err})"
            ) from None
    return masks


def load_coco(json_file: Path) -> COCO:
    """pycocotools' index of a COCO instances JSON, without its prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(json_file))


def annotation_masks(
    coco: COCO,
    image_id: int,
    height: int,
    width: int,
    metadata: DatasetMetadata,
    source: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's annotations rasterised by pycocotools (polygons and RLE): masks uint8
    [N, H, W], contiguous labels of `metadata`, crowd flags."""
    anns = coco.imgToAnns.get(image_id, [])
    masks = rasterise(anns, height, width, f"{source} (image id {image_id})")
    labels = np.array(
        [metadata.contiguous_id(a["category_id"], source) for a in anns], dtype=np.int64
    )
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    return masks, labels, crowd


class CityscapesInstanceReader(Reader):
    """gtFine `*_instanceIds.png`: id = label_id·1000 + k for instances of thing classes; a thing
    label id below 1000 is a crowd group."""

    def __init__(self, pairs: list[tuple[Path, Path]], metadata: DatasetMetadata) -> None:
        self.pairs = pairs
        self.metadata = metadata
        self.thing_label_ids = {metadata.dataset_ids[i] for i in metadata.thing_ids}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        ids = read_label(label_path).astype(np.int64)
        check_same_size(image, ids, image_path, label_path)
        masks, labels, crowd = [], [], []
        for value in np.unique(ids):
            label_id = value // 1000 if value >= 1000 else value
            if label_id not in self.thing_label_ids:
                continue
            masks.append(ids == value)
            labels.append(self.metadata.contiguous_id(int(label_id), str(label_path)))
            crowd.append(value < 1000)
        height, width = ids.shape
        return Sample(
            image=image,
            file_name=str(image_path),
            image_id=image_path.stem,
            masks=np.stack(masks).astype(np.uint8)
            if masks
            else np.zeros((0, height, width), np.uint8),
            labels=np.array(labels, dtype=np.int64),
            crowd=np.array(crowd, dtype=bool),
            instance_file=str(label_path),
        )
