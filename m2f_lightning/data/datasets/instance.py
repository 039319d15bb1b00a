"""Readers for instance annotations: COCO JSON (polygons and RLE, via pycocotools) and
Cityscapes gtFine (instanceIds PNGs; polygon JSONs for training)."""

import contextlib
import io
import logging
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
from .cityscapes_polygons import OCCLUDER, has_instance, layer_masks, read_layers

logger = logging.getLogger(__name__)


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
        areas = json_areas(anns, f"{self.json_file} (image id {image_id})")
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
            areas=areas,
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


def json_areas(records: list[dict], source: str) -> np.ndarray:
    """The `area` of each annotation (COCO instances) or segment (COCO panoptic) as float64,
    NaN where it has none; one that is not a number ≥ 0 is an error naming `source`."""
    areas = np.full(len(records), np.nan)
    for i, record in enumerate(records):
        area = record.get("area")
        if area is None:
            continue
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not area >= 0:
            raise DataError(
                f"{source}: annotation id {record.get('id')}: area {area!r} is not a number ≥ 0"
            )
        areas[i] = area
    return areas


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's annotations rasterised by pycocotools (polygons and RLE): masks uint8
    [N, H, W], contiguous labels of `metadata`, crowd flags, JSON areas (NaN where absent)."""
    anns = coco.imgToAnns.get(image_id, [])
    masks = rasterise(anns, height, width, f"{source} (image id {image_id})")
    labels = np.array(
        [metadata.contiguous_id(a["category_id"], source) for a in anns], dtype=np.int64
    )
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    return masks, labels, crowd, json_areas(anns, f"{source} (image id {image_id})")


class CityscapesInstanceReader(Reader):
    """gtFine `*_instanceIds.png`: id = label_id·1000 + k for instances of thing classes; a thing
    label id below 1000 is a crowd group.

    `from_json` (training, as the official registration): the annotations come from the
    `*_gtFine_polygons.json` beside each PNG instead (`cityscapes_polygons.py`); the sample
    carries the drawn polygons (`Sample.layers`) that the training pipeline rasterises after
    the augmentation, and its `masks` at the original size. With `filter_empty`, images without
    a non-crowd instance are left out (DATALOADER.FILTER_EMPTY_ANNOTATIONS), with a log line
    that counts them."""

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        metadata: DatasetMetadata,
        from_json: bool = False,
        filter_empty: bool = False,
    ) -> None:
        self.metadata = metadata
        self.thing_label_ids = {metadata.dataset_ids[i] for i in metadata.thing_ids}
        self.from_json = from_json
        if from_json and filter_empty:
            kept = [p for p in pairs if has_instance(polygons_json(p[1]), self.thing_label_ids)]
            logger.info(
                "Cityscapes instance training: left out %d of %d images without a non-crowd "
                "instance (FILTER_EMPTY_ANNOTATIONS, as the official config)",
                len(pairs) - len(kept),
                len(pairs),
            )
            pairs = kept
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        if self.from_json:
            return self._from_json(image, image_path, label_path)
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

    def _from_json(self, image: np.ndarray, image_path: Path, label_path: Path) -> Sample:
        json_file = polygons_json(label_path)
        layers, annotations, size = read_layers(json_file, self.thing_label_ids)
        if size != image.shape[:2]:
            raise DataError(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} but {json_file} says "
                f"{size[1]}x{size[0]}"
            )
        masks = layer_masks(layers, len(annotations), [], size, size)
        # an object wholly under later ones is no annotation (detectron2 skips an empty
        # difference); its polygon still covers the ones below it
        visible = masks.any(axis=(1, 2))
        new_index = np.cumsum(visible) - 1
        layers = [
            (polygon, int(new_index[i]) if i != OCCLUDER and visible[i] else OCCLUDER)
            for polygon, i in layers
        ]
        annotations = [a for a, keep in zip(annotations, visible, strict=True) if keep]
        return Sample(
            image=image,
            file_name=str(image_path),
            image_id=image_path.stem,
            masks=masks[visible],
            labels=np.array(
                [self.metadata.contiguous_id(i, str(json_file)) for i, _ in annotations],
                dtype=np.int64,
            ),
            crowd=np.array([c for _, c in annotations], dtype=bool),
            instance_file=str(label_path),
            layers=layers,
        )


def polygons_json(instance_png: Path) -> Path:
    """The `*_gtFine_polygons.json` beside a `*_gtFine_instanceIds.png`."""
    return instance_png.with_name(
        instance_png.name.replace("_gtFine_instanceIds.png", "_gtFine_polygons.json")
    )
