"""Small datasets in each real on-disk format, drawn from learnable synthetic scenes.

A scene is two stuff regions (a sky with a vertical gradient above a textured ground, split by
a wavy horizon) with 2–5 coloured shapes on top (circle, square, triangle: things, each class
with its own colour, so a small model learns them in minutes). Later shapes occlude earlier ones;
a shape left with a tiny visible fragment becomes void. Every writer also returns a manifest
(segments, classes and pixel counts per image) so tests can check what a reader reads back.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .catalog import get_metadata
from .io import id_to_rgb

SHAPES = ("circle", "square", "triangle")
THING_COLOURS = {"circle": (220, 40, 40), "square": (40, 190, 60), "triangle": (150, 50, 200)}
SKY, GROUND = (110, 160, 230), (120, 100, 60)

# catalog names standing in for (sky, ground, circle, square, triangle) in each real format
CLASSES = {
    "coco": ("sky-other-merged", "grass-merged", "sports ball", "tv", "kite"),
    "ade20k": ("sky", "grass", "ball", "box", "flag"),
    "cityscapes": ("sky", "road", "car", "person", "bicycle"),
    "mapillary_vistas": ("Sky", "Road", "Car", "Person", "Bicycle"),
    "synthetic": ("sky", "ground", "circle", "square", "triangle"),
}
FORMATS = ("coco_panoptic", "coco_instance", "ade20k", "cityscapes", "mapillary", "demo")


@dataclass
class Scene:
    """Pixels and ground truth of one scene; `roles` index (sky, ground, circle, square, triangle)."""

    image: np.ndarray
    segment_map: np.ndarray  # 0 = void, 1 = sky, 2 = ground, 3.. = things
    segments: list[dict] = field(default_factory=list)  # {id, role, iscrowd}


def _shape_mask(
    shape: str, h: int, w: int, cy: float, cx: float, size: float, angle: float
) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    if shape == "circle":
        cv2.circle(mask, (int(cx), int(cy)), int(size / 2), 1, -1)
        return mask.astype(bool)
    if shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * size / 2
    else:
        pts = np.array([[0, -1], [0.87, 0.5], [-0.87, 0.5]], dtype=np.float64) * size / 2
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T + [cx, cy]
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def draw_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    crowd_prob: float = 0.0,
    num_shapes: tuple[int, int] = (2, 5),
) -> Scene:
    """One scene with `num_shapes` (inclusive range) things drawn; sizes scale with the image
    (12–48 px shapes at 128 px). Things mostly hidden by later ones become void."""
    scale = min(height, width) / 128
    yy, xx = np.mgrid[0:height, 0:width]
    horizon = height * rng.uniform(0.3, 0.6) + height * 0.05 * np.sin(
        xx[0] / width * 2 * np.pi * rng.uniform(0.5, 2) + rng.uniform(0, 6)
    )
    is_sky = yy < horizon[None, :]
    image = np.zeros((height, width, 3), dtype=np.float64)
    sky = np.array(SKY) + rng.uniform(-20, 20, 3)
    ground = np.array(GROUND) + rng.uniform(-20, 20, 3)
    gradient = (yy / height)[..., None] * 40
    texture = cv2.GaussianBlur(rng.normal(0, 25, (height, width)), (0, 0), 2 * scale)[..., None]
    image[:] = np.where(is_sky[..., None], sky + gradient, ground + texture)
    segment_map = np.where(is_sky, 1, 2).astype(np.int32)
    segments = [{"id": 1, "role": 0, "iscrowd": False}, {"id": 2, "role": 1, "iscrowd": False}]
    full_areas = {}
    for k in range(int(rng.integers(num_shapes[0], num_shapes[1] + 1))):
        role = int(rng.integers(0, 3))
        size = rng.uniform(12, 48) * scale
        mask = _shape_mask(
            SHAPES[role],
            height,
            width,
            rng.uniform(0, height),
            rng.uniform(0, width),
            size,
            rng.uniform(0, np.pi),
        )
        if not mask.any():
            continue
        colour = np.array(THING_COLOURS[SHAPES[role]]) + rng.uniform(-25, 25, 3)
        image[mask] = colour
        seg_id = 3 + k
        segment_map[mask] = seg_id
        full_areas[seg_id] = int(mask.sum())
        segments.append(
            {"id": seg_id, "role": 2 + role, "iscrowd": bool(rng.random() < crowd_prob)}
        )
    image += rng.normal(0, 4, image.shape)
    kept = []
    for seg in segments:
        visible = int((segment_map == seg["id"]).sum())
        if seg["id"] >= 3 and (visible < 16 or visible < 0.25 * full_areas[seg["id"]]):
            segment_map[segment_map == seg["id"]] = 0  # a tiny fragment becomes void
            continue
        if visible:
            kept.append(seg)
    return Scene(np.clip(image, 0, 255).astype(np.uint8), segment_map, kept)


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


def write_dataset(
    fmt: str,
    out: str | Path,
    num: int = 8,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    num_val: int | None = None,
    num_shapes: tuple[int, int] = (2, 5),
) -> dict:
    """Write `num` training and `num_val` (default num // 2, at least 2) validation images of
    format `fmt` under the datasets root `out`, each with `num_shapes` (min, max) things drawn.
    Returns (and writes) the manifest."""
    if not 0 <= num_shapes[0] <= num_shapes[1]:
        raise ValueError(f"num_shapes must be (min, max) with 0 <= min <= max, got {num_shapes}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {FORMATS}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    num_val = max(2, num // 2) if num_val is None else num_val
    default_size = {"demo": (128, 128), "cityscapes": (128, 256)}.get(fmt, (160, 224))
    height, width = size or default_size
    crowd_prob = 0.0 if fmt == "demo" else 0.15
    manifest: dict = {"format": fmt, "splits": {}}
    for split, count in (("train", num), ("val", num_val)):
        scenes = [
            draw_scene(rng, height, width, crowd_prob, tuple(num_shapes)) for _ in range(count)
        ]
        manifest["splits"][split] = _WRITERS[fmt](out, split, scenes)
    (out / f"{fmt}_manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


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
                instance[scene.segment_map == s["id"]] = (s["role"] - 1, k + 1, 0)
        _save_png(root / "annotations_instance" / folder / png, instance)
    # instance class (1..3 for our thing roles) → ADE150 id (1-based), as the real mapping file
    (root / "ade20k_instance_catid_mapping.txt").write_text(
        "Instacne100\tSceneParsing150\tFullADE20K\n"
        + "".join(f"{role - 1}\t{ids[role] + 1}\t0\n" for role in (2, 3, 4))
    )
    categories = _coco_categories("ade20k")
    (root / f"ade20k_panoptic_{split}.json").write_text(
        json.dumps(_panoptic_json(scenes, names, ids, categories, pngs))
    )
    (root / f"ade20k_instance_{split}.json").write_text(
        json.dumps(_instances_json(scenes, names, ids, [c for c in categories if c["isthing"]]))
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
    return Scene(scene.image, segment_map, segments)


def _write_cityscapes(out: Path, split: str, scenes: list[Scene]) -> dict:
    root = out / "cityscapes"
    scenes = [_merge_crowd_by_class(scene) for scene in scenes]
    ids, contiguous = _category_ids("cityscapes")  # cityscapes label ids
    train_ids = get_metadata("cityscapes").extra["train_ids"]
    city = "frankfurt" if split == "val" else "aachen"
    stems = [f"{city}_000000_{i:06d}" for i in range(len(scenes))]
    for scene, stem in zip(scenes, stems, strict=True):
        _save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", scene.image)
        label_ids = np.zeros(scene.segment_map.shape, dtype=np.uint8)  # 0 = unlabeled
        train = np.full(scene.segment_map.shape, 255, dtype=np.uint8)
        instance_ids = np.zeros(
            scene.segment_map.shape, dtype=np.uint16
        )  # 16-bit PNG as cityscapes
        for s in scene.segments:
            m = scene.segment_map == s["id"]
            label_ids[m] = ids[s["role"]]
            train[m] = train_ids[contiguous[s["role"]]]
            instance_ids[m] = (
                ids[s["role"]]
                if (s["role"] < 2 or s["iscrowd"])
                else ids[s["role"]] * 1000 + s["id"]
            )
        gt = root / "gtFine" / split / city
        _save_png(gt / f"{stem}_gtFine_labelIds.png", label_ids)
        _save_png(gt / f"{stem}_gtFine_labelTrainIds.png", train)
        _save_png(gt / f"{stem}_gtFine_instanceIds.png", instance_ids)
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
