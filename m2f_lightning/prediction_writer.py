"""Files written by `m2f-predict`: overlays, COCO-panoptic PNG + JSON, COCO instance results
(RLE) or semantic PNGs."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .data.catalog import DatasetMetadata
from .data.io import id_to_rgb, read_image
from .types import SegmentationResult
from .visualize import class_map, overlay


def _id_to_rgb_by_rows(ids: np.ndarray, rows: int = 256) -> np.ndarray:
    """`id_to_rgb` a band of rows at a time (it works in int64: 1.2 GB for a 24 MP image)."""
    out = np.empty((*ids.shape, 3), dtype=np.uint8)
    for start in range(0, len(ids), rows):
        out[start : start + rows] = id_to_rgb(ids[start : start + rows])
    return out


def write_predictions(
    results: list[SegmentationResult],
    task: str,
    metadata: DatasetMetadata,
    out_dir: Path,
    score_threshold: float = 0.5,
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    panoptic_annotations, instance_results = [], []
    for result in results:
        path = Path(result.file_name)
        stem = path.stem
        image = read_image(path)
        if task == "panoptic":
            seg = result.panoptic_seg.cpu().numpy()
            png = out_dir / f"{stem}_panoptic.png"
            Image.fromarray(_id_to_rgb_by_rows(seg)).save(png)
            written.append(png)
            panoptic_annotations.append(
                {
                    "file_name": png.name,
                    "image_id": stem,
                    "segments_info": [
                        {
                            "id": s.id,
                            "category_id": metadata.dataset_ids[s.category_id],
                            "isthing": int(s.isthing),
                            "score": s.score,
                            "area": int((seg == s.id).sum()),
                        }
                        for s in result.segments
                    ],
                }
            )
            vis = overlay(image, class_map(result), metadata.colors, segment_map=seg)
        elif task == "semantic":
            classes = result.class_map().cpu().numpy().astype(np.uint8)
            png = out_dir / f"{stem}_semantic.png"
            Image.fromarray(classes).save(png)
            written.append(png)
            vis = overlay(image, classes, metadata.colors)
        else:
            inst = result.instances
            for i in np.argsort(-inst.scores.cpu().numpy()):
                mask = inst.masks[i].cpu().numpy()
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                instance_results.append(
                    {
                        "image_id": stem,
                        "category_id": metadata.dataset_ids[int(inst.labels[i])],
                        "segmentation": rle,
                        "score": float(inst.scores[i]),
                    }
                )
            vis = overlay(image, class_map(result, score_threshold), metadata.colors)
        out = out_dir / f"{stem}_overlay.png"
        Image.fromarray(vis).save(out)
        written.append(out)
    if task == "panoptic":
        categories = [
            {"id": d, "name": n, "isthing": int(t)}
            for d, n, t in zip(
                metadata.dataset_ids, metadata.class_names, metadata.is_thing, strict=True
            )
        ]
        out = out_dir / "panoptic.json"
        out.write_text(json.dumps({"annotations": panoptic_annotations, "categories": categories}))
        written.append(out)
    if task == "instance":
        out = out_dir / "instances_results.json"
        out.write_text(json.dumps(instance_results))
        written.append(out)
    return written
