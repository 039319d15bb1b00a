"""Readers for the COCO panoptic format (PNG with RGB-encoded segment ids + JSON), which COCO,
ADE20K (prepared), Cityscapes (cityscapesScripts) and Mapillary Vistas all use."""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..catalog import DatasetMetadata
from ..io import DataError, check_same_size, read_image, read_label, rgb_to_id
from ..validation import check_panoptic_annotations, compare_categories, load_json
from .base import Reader, Sample
from .instance import annotation_masks, json_areas, load_coco
from .semantic import class_ids


class PanopticReader(Reader):
    """COCO-panoptic-format reader.

    `image_path(image_info)` maps an entry of the JSON's `images` list to its image file (COCO:
    the .png name with .jpg; Cityscapes: under a city sub-folder).

    Evaluation ground truth of the official evaluators, when given: `instances_json` (the COCO
    instances JSON of the same images: AP is scored against its masks, found by image id, category
    ids those of the panoptic catalog) and `semantic_png(image_info)` (the semantic label PNG,
    contiguous ids and 255, after `semantic_transform` (Mapillary: 65 → 255): mIoU is scored
    against it), `instance_png(image_info)` (Cityscapes' instanceIds PNG: AP is scored by
    cityscapesScripts' evaluation of it).
    """

    def __init__(
        self,
        json_file: Path,
        panoptic_dir: Path,
        image_path: Callable[[dict], Path],
        metadata: DatasetMetadata,
        instances_json: Path | None = None,
        semantic_png: Callable[[dict], Path] | None = None,
        instance_png: Callable[[dict], Path] | None = None,
        semantic_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        data = load_json(json_file, ("images", "annotations"), "panoptic annotation file")
        compare_categories(data.get("categories"), metadata, json_file)
        self.records = [
            {
                "image": image_path(info),
                "png": panoptic_dir / ann["file_name"],
                "image_id": ann["image_id"],
                "segments_info": ann["segments_info"],
                "semantic": semantic_png(info) if semantic_png else None,
                "instance_file": instance_png(info) if instance_png else None,
            }
            for info, ann in check_panoptic_annotations(data, json_file, metadata)
        ]
        self.metadata = metadata
        self.instances = load_coco(instances_json) if instances_json is not None else None
        self.instances_json = instances_json
        self.json_file = json_file
        self.semantic_transform = semantic_transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image = read_image(record["image"])
        png = read_label(record["png"])
        if png.ndim != 3 or png.shape[2] < 3:
            raise DataError(
                f"panoptic PNG {record['png']} must be RGB-encoded ids, got shape {png.shape}"
            )
        id_map = rgb_to_id(png[..., :3])
        check_same_size(image, id_map, record["image"], record["png"])
        present = set(np.unique(id_map).tolist()) - {0}
        listed = {s["id"] for s in record["segments_info"]}
        if listed - present:
            raise DataError(
                f"{record['png']}: segment ids {sorted(listed - present)} listed in {self.json_file} "
                "are absent from the PNG"
            )
        if present - listed:
            raise DataError(
                f"{record['png']}: segment ids {sorted(present - listed)} in the PNG are not listed in "
                f"{self.json_file}"
            )
        segments = [
            {
                "id": int(s["id"]),
                "category": self.metadata.contiguous_id(s["category_id"], str(record["png"])),
                "iscrowd": bool(s.get("iscrowd", 0)),
                "area": float(area),
            }
            for s, area in zip(
                record["segments_info"],
                json_areas(record["segments_info"], f"{self.json_file} ({record['png']})"),
                strict=True,
            )
        ]
        sample = Sample(
            image=image,
            file_name=str(record["image"]),
            image_id=record["image_id"],
            id_map=id_map.astype(np.int32),
            segments=segments,
        )
        if self.instances is not None:
            if record["image_id"] not in self.instances.imgs:
                raise DataError(f"image id {record['image_id']} is not in {self.instances_json}")
            sample.eval_instances = annotation_masks(
                self.instances,
                record["image_id"],
                *id_map.shape,
                self.metadata,
                str(self.instances_json),
            )
        if record["instance_file"] is not None and record["instance_file"].is_file():
            sample.instance_file = str(record["instance_file"])
        if record["semantic"] is not None:
            semantic = read_label(record["semantic"])
            check_same_size(image, semantic, record["image"], record["semantic"])
            if self.semantic_transform is not None:
                semantic = self.semantic_transform(semantic)
            sample.sem_seg = class_ids(semantic, self.metadata.num_classes, record["semantic"])
        return sample
