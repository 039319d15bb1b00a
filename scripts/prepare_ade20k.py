"""ADE20K: derived annotations used by the semantic, panoptic and instance tasks.

- `annotations_detectron2/{training,validation}/*.png`: semantic labels shifted (0 → 255, k → k−1);
- `ade20k_panoptic_{train,val}/*.png` + `ade20k_panoptic_{train,val}.json`: stuff from the semantic
  map, things from `annotations_instance/` (R = instance class, G = instance id, 0 = none) pasted
  over it, thing classes mapped to the 150 classes with `ade20k_instance_catid_mapping.txt`
  (Mask2Former's datasets/ folder; ships with the instance annotations, ChallengeData2017);
- `ade20k_instance_{train,val}.json`: COCO-format instances (RLE), categories as the official
  instance registration (ids = SceneParse150 id − 1, the `ade20k_instance` catalog).

As the official prepare_ade20k_{sem,pan,ins}_seg.py: a class is a thing exactly when the mapping
file maps an instance class to it (the `ade20k` catalog's things; a mapping to a stuff class is an
error), thing pixels without an instance are void, and an instance class missing from the mapping
is an error (the official scripts stop there too).

    python scripts/prepare_ade20k.py --root datasets --workers 8
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _prepare_common import run_jobs, save_png, write_text  # noqa: E402

from m2f_lightning.data.catalog import DatasetMetadata, get_metadata  # noqa: E402
from m2f_lightning.data.io import id_to_rgb, read_label, rgb_to_id  # noqa: E402
from m2f_lightning.errors import DataError, UserError  # noqa: E402

SPLITS = {"train": "training", "val": "validation"}


def shift_semantic(job: tuple) -> None:
    src, out = job
    save_png((read_label(src).astype(np.int32) - 1).astype(np.uint8), out)


def read_instance_mapping(path: Path, meta: DatasetMetadata) -> dict[int, int]:
    """Instance class (1-based) → ADE150 class (0-based) from the mapping file; every target
    must be a thing of the catalog (the official scripts make exactly those classes things)."""
    mapping = {}
    for line in path.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            mapping[int(parts[0])] = int(parts[1]) - 1
    things = {meta.dataset_ids[i] for i in meta.thing_ids}
    stuff = sorted(v for v in set(mapping.values()) if v not in things)
    if stuff:
        raise DataError(
            f"{path}: maps instance classes to ADE20K ids {stuff}, which are not thing classes of "
            f"the '{meta.name}' catalog"
        )
    return mapping


def panoptic_of(
    semantic: Path, instance: Path, things: set[int], mapping: dict[int, int]
) -> tuple[np.ndarray, list[dict]]:
    sem = read_label(semantic).astype(np.int32) - 1  # −1 = void
    ids = np.zeros(sem.shape, dtype=np.int32)
    segments = []
    for cls in np.unique(sem):
        if cls < 0 or cls in things:
            continue
        ids[sem == cls] = len(segments) + 1
        segments.append(
            {"id": len(segments) + 1, "category_id": int(cls), "iscrowd": 0, "isthing": 0}
        )
    inst = read_label(instance)
    pairs = np.unique(inst[..., 0].astype(np.int32) * 256 + inst[..., 1])
    for r, g in zip((pairs // 256).tolist(), (pairs % 256).tolist(), strict=True):
        if g == 0:  # instance id 0: no instance (the pixel keeps its semantic class or is void)
            continue
        if r not in mapping:
            raise DataError(
                f"{instance}: instance class {r} (R channel, instance {g}) is not in the "
                "instance mapping file"
            )
        mask = (inst[..., 0] == r) & (inst[..., 1] == g)
        ids[mask] = len(segments) + 1
        segments.append(
            {"id": len(segments) + 1, "category_id": mapping[r], "iscrowd": 0, "isthing": 1}
        )
    for seg in segments:
        m = ids == seg["id"]
        seg["area"] = int(m.sum())
        ys, xs = np.nonzero(m)
        seg["bbox"] = (
            [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
            if len(xs)
            else [0, 0, 0, 0]
        )
    return ids, [s for s in segments if s["area"] > 0]


def write_panoptic(job: tuple, things: set[int], mapping: dict[int, int]) -> None:
    semantic, instance, out_png, out_json = job
    ids, segments = panoptic_of(semantic, instance, things, mapping)
    save_png(id_to_rgb(ids), out_png)
    write_text(out_json, json.dumps(segments))  # written last: the resume check looks for it


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="datasets")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--instance-mapping", default=None, help="default: <ADE>/ade20k_instance_catid_mapping.txt"
    )
    args = parser.parse_args()
    ade = Path(args.root) / "ADEChallengeData2016"
    meta, instance_meta = get_metadata("ade20k"), get_metadata("ade20k_instance")
    things = set(meta.thing_ids)
    for split, folder in SPLITS.items():
        sem_dir = ade / "annotations" / folder
        jobs = [
            (p, ade / "annotations_detectron2" / folder / p.name)
            for p in sorted(sem_dir.glob("*.png"))
        ]
        run_jobs(shift_semantic, jobs, lambda j: j[1], args.workers, f"semantic {split}")
    mapping_file = Path(args.instance_mapping or ade / "ade20k_instance_catid_mapping.txt")
    if not mapping_file.is_file() or not (ade / "annotations_instance").is_dir():
        print(f"skipping panoptic/instance: need {ade / 'annotations_instance'} and {mapping_file}")
        return
    mapping = read_instance_mapping(mapping_file, meta)
    for split, folder in SPLITS.items():
        tmp = ade / f".ade20k_panoptic_{split}_segments"
        jobs = [
            (
                p,
                ade / "annotations_instance" / folder / p.name,
                ade / f"ade20k_panoptic_{split}" / p.name,
                tmp / f"{p.stem}.json",
            )
            for p in sorted((ade / "annotations" / folder).glob("*.png"))
        ]
        run_jobs(
            partial(write_panoptic, things=things, mapping=mapping),
            jobs,
            lambda j: j[3],
            args.workers,
            f"panoptic {split}",
        )
        images, annotations, instances = [], [], []
        for i, (_, _, png, seg_json) in enumerate(jobs):
            segments = json.loads(seg_json.read_text())
            width, height = Image.open(png).size
            images.append(
                {"id": i + 1, "file_name": png.stem + ".jpg", "width": width, "height": height}
            )
            annotations.append(
                {"image_id": i + 1, "file_name": png.name, "segments_info": segments}
            )
            ids = None
            for seg in segments:
                if not seg["isthing"]:
                    continue
                if ids is None:
                    ids = rgb_to_id(read_label(png)[..., :3])
                rle = mask_utils.encode(np.asfortranarray((ids == seg["id"]).astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": i + 1,
                        "category_id": seg["category_id"],
                        "segmentation": rle,
                        "area": seg["area"],
                        "bbox": seg["bbox"],
                        "iscrowd": 0,
                    }
                )
        categories = [
            {"id": i, "name": n, "isthing": int(t)}
            for i, (n, t) in enumerate(zip(meta.class_names, meta.is_thing, strict=True))
        ]
        (ade / f"ade20k_panoptic_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
        (ade / f"ade20k_instance_{split}.json").write_text(
            json.dumps(
                {
                    "images": images,
                    "annotations": instances,
                    "categories": [
                        {"id": d, "name": n}
                        for d, n in zip(
                            instance_meta.dataset_ids, instance_meta.class_names, strict=True
                        )
                    ],
                }
            )
        )
        print(
            f"wrote {ade / f'ade20k_panoptic_{split}.json'} and ade20k_instance_{split}.json ({len(images)} images)"
        )


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
