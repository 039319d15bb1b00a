"""Readers for instance annotations: COCO JSON (polygons and RLE, via pycocotools) and
Cityscapes gtFine instanceIds PNGs."""

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ..catalog import DatasetMetadata
from ..io import DataError, check_same_size, read_image, read_label
from ..validation import check_instance_annotations, compare_categories, load_json
from .base import Reader, Sample


class CocoInstanceReader(Reader):
    """COCO instances JSON: one mask per annotation (overlaps allowed), crowd flagged. The file
    is checked record by record when read (`validation.check_instance_annotations`)."""

    def __init__(self, json_file: Path, image_dir: Path, metadata: DatasetMetadata) -> None:
        data = load_json(json_file, ("images", "annotations"), "instance annotation file")
        compare_categories(data.get("categories"), metadata, json_file, things_only=True)
        self.images, self.anns = check_instance_annotations(data, json_file, metadata)
        self.image_ids = sorted(self.images, key=str)
        self.json_file = json_file
        self.image_dir = image_dir
        self.metadata = metadata

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
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for i, ann in enumerate(anns):
            segm = ann["segmentation"]
            try:
                if isinstance(segm, list):
                    rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
                elif isinstance(segm["counts"], list):
                    rle = mask_utils.frPyObjects(segm, height, width)
                else:
                    rle = segm
                masks[i] = mask_utils.decode(rle)
            except (TypeError, ValueError, IndexError) as err:
                raise DataError(
                    f"{self.json_file}: annotation id {ann.get('id')} (image id {image_id}): "
                    f"undecodable segmentation ({err})"
                ) from None
        return Sample(
            image=image,
            file_name=str(path),
            image_id=image_id,
            masks=masks,
            labels=np.array(
                [self.metadata.contiguous_id(a["category_id"], str(path)) for a in anns],
                dtype=np.int64,
            ),
            crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        )


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
        )
