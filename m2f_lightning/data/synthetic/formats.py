"""Writers of scenes in each dataset's real on-disk format (COCO panoptic/instance, ADE20K,
Cityscapes gtFine, Mapillary Vistas), each returning the split's manifest entries.
"""

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..catalog import get_metadata
from ..io import id_to_rgb
from .scenes import CLASSES, Scene


def _save_jpg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _category_ids(dataset: str) -> tuple[list[int], list[int]]:
    """(dataset id, contiguous id) of the 5 roles in that dataset's catalog."""
    meta = get_metadata({"coco": "coco_panoptic"}.get(dataset, dataset))
    contiguous = [meta.class_names.index(name) for name in CLASSES[dataset]]
    return [meta.dataset_ids[c] for c in contiguous], contiguous


def _manifest_entry(scene: Scene, contiguous: list[int], task: str) -> dict:
    if task == "instance":
        segs = [s for s in scene.segments if s["role"] >= 2 and not s["iscrowd"]]
    else:
        segs = [s for s in scene.segments if not s["iscrowd"]]
    pixels: dict[int, int] = {}
    for s in scene.segments:
        pixels[contiguous[s["role"]]] = pixels.get(contiguous[s["role"]], 0) + int(
            (scene.segment_map == s["id"]).sum()
        )
    return {
        "segments": len(segs),
        "classes": sorted({contiguous[s["role"]] for s in segs}),
        "pixels": {str(k): v for k, v in sorted(pixels.items())},
        "void": int((scene.segment_map == 0).sum()),
    }


def _panoptic_json(scenes, names, dataset_ids, categories, png_names) -> dict:
    annotations = []
    for i, (scene, png) in enumerate(zip(scenes, png_names, strict=True)):
        infos = []
        for s in scene.segments:
            m = scene.segment_map == s["id"]
            ys, xs = np.nonzero(m)
            infos.append(
                {
                    "id": s["id"],
                    "category_id": dataset_ids[s["role"]],
                    "iscrowd": int(s["iscrowd"]),
                    "area": int(m.sum()),
                    "bbox": [
                        int(xs.min()),
                        int(ys.min()),
                        int(np.ptp(xs) + 1),
                        int(np.ptp(ys) + 1),
                    ],
                }
            )
        annotations.append({"image_id": i + 1, "file_name": png, "segments_info": infos})
    return {
        "images": _images_json(scenes, names),
        "annotations": annotations,
        "categories": categories,
    }


def _images_json(scenes: list[Scene], names: list[str]) -> list[dict]:
    """The `images` list of a COCO-style JSON (ids from 1)."""
    return [
        {
            "id": i + 1,
            "file_name": n,
            "height": int(s.image.shape[0]),
            "width": int(s.image.shape[1]),
        }
        for i, (s, n) in enumerate(zip(scenes, names, strict=True))
    ]


def _instances_json(scenes, names, dataset_ids, categories) -> dict:
    anns = []
    for i, scene in enumerate(scenes):
        for s in scene.segments:
            if s["role"] < 2:
                continue
            m = (scene.segment_map == s["id"]).astype(np.uint8)
            if s["iscrowd"]:
                rle = mask_utils.encode(np.asfortranarray(m))
                segm = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                segm = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
                if not segm:
                    continue
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": dataset_ids[s["role"]],
                    "segmentation": segm,
                    "iscrowd": int(s["iscrowd"]),
                    "area": float(m.sum()),
                    "bbox": list(mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m)))),
                }
            )
    return {"images": _images_json(scenes, names), "annotations": anns, "categories": categories}


def _coco_categories(dataset: str) -> list[dict]:
    meta = get_metadata({"coco": "coco_panoptic"}.get(dataset, dataset))
    return [
        {"id": d, "name": n, "isthing": int(t), "color": list(c)}
        for d, n, t, c in zip(
            meta.dataset_ids, meta.class_names, meta.is_thing, meta.colors, strict=True
        )
    ]


def _write_coco(out: Path, split: str, scenes: list[Scene], fmt: str) -> dict:
    dataset = "synthetic" if fmt == "demo" else "coco"
    root = out / dataset
    ids, contiguous = _category_ids(dataset)
    names = [f"{i + 1:012d}.jpg" for i in range(len(scenes))]
    pngs = [n.replace(".jpg", ".png") for n in names]
    for scene, name, png in zip(scenes, names, pngs, strict=True):
        _save_jpg(root / f"{split}2017" / name, scene.image)
        if fmt != "coco_instance":
            _save_png(root / f"panoptic_{split}2017" / png, id_to_rgb(scene.segment_map))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = _coco_categories(dataset)
    if fmt == "coco_instance":
        data = _instances_json(scenes, names, ids, [c for c in categories if c["isthing"]])
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
        task = "instance"
    else:
        data = _panoptic_json(scenes, names, ids, categories, pngs)
        (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(data))
        task = "panoptic"
    return {n: _manifest_entry(s, contiguous, task) for n, s in zip(names, scenes, strict=True)}


def _write_ade20k(out: Path, split: str, scenes: list[Scene]) -> dict:
    root = out / "ADEChallengeData2016"
    folder = {"train": "training", "val": "validation"}[split]
    ids, contiguous = _category_ids("ade20k")
    # the instance classes (Instance100 ids) are the positions in the instance catalog + 1
    instance_ids = get_metadata("ade20k_instance").dataset_ids
    names = [f"ADE_{split}_{i + 1:08d}.jpg" for i in range(len(scenes))]
    pngs = [n.replace(".jpg", ".png") for n in names]
    for scene, name, png in zip(scenes, names, pngs, strict=True):
        _save_jpg(root / "images" / folder / name, scene.image)
        raw = np.zeros(scene.segment_map.shape, dtype=np.uint8)  # 0 = "other" → ignore
        for s in scene.segments:
            raw[scene.segment_map == s["id"]] = ids[s["role"]] + 1
        _save_png(root / "annotations" / folder / png, raw)
        _save_png(root / f"ade20k_panoptic_{split}" / png, id_to_rgb(scene.segment_map))
        # raw instance annotation (ChallengeData2017 layout): R = instance class, G = instance
        instance = np.zeros((*scene.segment_map.shape, 3), dtype=np.uint8)
        for k, s in enumerate(scene.segments):
            if s["role"] >= 2:
                r = instance_ids.index(ids[s["role"]]) + 1
                instance[scene.segment_map == s["id"]] = (r, k + 1, 0)
        _save_png(root / "annotations_instance" / folder / png, instance)
    # Instance100 id → SceneParse150 id (1-based), as the official mapping file (its third
    # column, the full-ADE20K id, is not used)
    (root / "ade20k_instance_catid_mapping.txt").write_text(
        "Instacne100\tSceneParse150\tFullADE20K\n"
        + "".join(f"{k + 1}\t{d + 1}\t0\n" for k, d in enumerate(instance_ids))
    )
    categories = _coco_categories("ade20k")
    instance_categories = [
        {"id": c["id"], "name": c["name"]} for c in _coco_categories("ade20k_instance")
    ]
    (root / f"ade20k_panoptic_{split}.json").write_text(
        json.dumps(_panoptic_json(scenes, names, ids, categories, pngs))
    )
    (root / f"ade20k_instance_{split}.json").write_text(
        json.dumps(_instances_json(scenes, names, ids, instance_categories))
    )
    return {
        n: _manifest_entry(s, contiguous, "panoptic") for n, s in zip(names, scenes, strict=True)
    }


def _merge_crowd_by_class(scene: Scene) -> Scene:
    """Cityscapes stores crowd pixels as a bare label id, so all crowd regions of one class are a
    single segment in its instanceIds and in cityscapesScripts' panoptic output."""
    segment_map = scene.segment_map.copy()
    first: dict[int, int] = {}
    segments = []
    for seg in scene.segments:
        if seg["iscrowd"] and seg["role"] in first:
            segment_map[scene.segment_map == seg["id"]] = first[seg["role"]]
            continue
        if seg["iscrowd"]:
            first[seg["role"]] = seg["id"]
        segments.append(seg)
    return Scene(scene.image, segment_map, segments, scene.drawn)


def _cityscapes_polygons(scene: Scene, names: tuple[str, ...]) -> dict:
    """The `*_gtFine_polygons.json` of a scene: each drawn region's outline (integer vertices,
    as Cityscapes), in drawing order, so that cityscapesScripts' drawing of the file
    (json2instanceImg) gives the instanceIds PNG. Crowd things are `<label>group`; things that
    became void are `unlabeled`."""
    segments = {s["id"]: s for s in scene.segments}
    objects = []
    for seg_id, mask in scene.drawn:
        seg = segments.get(seg_id)
        if seg is None:
            label = "unlabeled"
        else:
            label = names[seg["role"]] + ("group" if seg["iscrowd"] else "")
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        for contour in contours:
            objects.append({"label": label, "polygon": contour.reshape(-1, 2).tolist()})
    height, width = scene.segment_map.shape
    return {"imgHeight": int(height), "imgWidth": int(width), "objects": objects}


def _write_cityscapes(out: Path, split: str, scenes: list[Scene]) -> dict:
    root = out / "cityscapes"
    polygons = [_cityscapes_polygons(scene, CLASSES["cityscapes"]) for scene in scenes]
    scenes = [_merge_crowd_by_class(scene) for scene in scenes]
    ids, contiguous = _category_ids("cityscapes")  # cityscapes label ids
    train_ids = get_metadata("cityscapes").extra["train_ids"]
    city = "frankfurt" if split == "val" else "aachen"
    stems = [f"{city}_000000_{i:06d}" for i in range(len(scenes))]
    for scene, stem, polygon in zip(scenes, stems, polygons, strict=True):
        _save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", scene.image)
        label_ids = np.zeros(scene.segment_map.shape, dtype=np.uint8)  # 0 = unlabeled
        train = np.full(scene.segment_map.shape, 255, dtype=np.uint8)
        instance_ids = np.zeros(
            scene.segment_map.shape, dtype=np.uint16
        )  # 16-bit PNG as cityscapes
        counts: dict[int, int] = {}  # instances numbered per label in drawing order, as
        for s in sorted(scene.segments, key=lambda s: s["id"]):  # cityscapesScripts does
            m = scene.segment_map == s["id"]
            label_ids[m] = ids[s["role"]]
            train[m] = train_ids[contiguous[s["role"]]]
            instance_ids[m] = ids[s["role"]]
            if s["role"] >= 2 and not s["iscrowd"]:
                instance_ids[m] = ids[s["role"]] * 1000 + counts.get(ids[s["role"]], 0)
                counts[ids[s["role"]]] = counts.get(ids[s["role"]], 0) + 1
        gt = root / "gtFine" / split / city
        _save_png(gt / f"{stem}_gtFine_labelIds.png", label_ids)
        _save_png(gt / f"{stem}_gtFine_labelTrainIds.png", train)
        _save_png(gt / f"{stem}_gtFine_instanceIds.png", instance_ids)
        (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygon))
        _save_png(
            root / "gtFine" / f"cityscapes_panoptic_{split}" / f"{stem}_gtFine_panoptic.png",
            id_to_rgb(scene.segment_map),
        )
    data = _panoptic_json(
        scenes,
        # cityscapesScripts' createPanopticImgs names images "<stem>_gtFine_leftImg8bit.png"
        # (a file that does not exist): readers must find the image by its id
        [f"{s}_gtFine_leftImg8bit.png" for s in stems],
        ids,
        _coco_categories("cityscapes"),
        [f"{s}_gtFine_panoptic.png" for s in stems],
    )
    for img, stem in zip(data["images"], stems, strict=True):
        img["id"] = stem
    for ann, stem in zip(data["annotations"], stems, strict=True):
        ann["image_id"] = stem
    (root / "gtFine" / f"cityscapes_panoptic_{split}.json").write_text(json.dumps(data))
    return {
        f"{s}_leftImg8bit.png": _manifest_entry(sc, contiguous, "panoptic")
        for s, sc in zip(stems, scenes, strict=True)
    }


def _write_mapillary(out: Path, split: str, scenes: list[Scene]) -> dict:
    root = out / "mapillary_vistas" / {"train": "training", "val": "validation"}[split]
    ids, contiguous = _category_ids("mapillary_vistas")
    names = [f"m{split}{i:05d}.jpg" for i in range(len(scenes))]
    pngs = [n.replace(".jpg", ".png") for n in names]
    for scene, name, png in zip(scenes, names, pngs, strict=True):
        _save_jpg(root / "images" / name, scene.image)
        labels = np.full(scene.segment_map.shape, 65, dtype=np.uint8)  # 65 = unlabeled
        for s in scene.segments:
            labels[scene.segment_map == s["id"]] = contiguous[s["role"]]
        _save_png(root / "labels" / png, labels)
        _save_png(root / "panoptic" / png, id_to_rgb(scene.segment_map))
    data = _panoptic_json(scenes, names, ids, _coco_categories("mapillary_vistas"), pngs)
    (root / "panoptic" / "panoptic_2018.json").write_text(json.dumps(data))
    return {
        n: _manifest_entry(s, contiguous, "panoptic") for n, s in zip(names, scenes, strict=True)
    }


_WRITERS = {
    "coco_panoptic": lambda out, split, scenes: _write_coco(out, split, scenes, "coco_panoptic"),
    "coco_instance": lambda out, split, scenes: _write_coco(out, split, scenes, "coco_instance"),
    "demo": lambda out, split, scenes: _write_coco(out, split, scenes, "demo"),
    "ade20k": _write_ade20k,
    "cityscapes": _write_cityscapes,
    "mapillary": _write_mapillary,
}
