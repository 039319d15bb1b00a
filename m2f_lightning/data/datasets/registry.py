"""Which reader serves which (dataset, task, split), and where the files lie.

The layout is the one of the original Mask2Former `datasets/` folder, so existing data is used
unchanged. The root is `./datasets` unless the config or the `M2F_DATASETS` environment variable
says otherwise.
"""

import os
from pathlib import Path

from ..catalog import DatasetMetadata, get_metadata
from .base import Reader, require_dir
from .instance import CityscapesInstanceReader, CocoInstanceReader
from .panoptic import PanopticReader
from .semantic import SemanticReader, paired_files, remap_ignore, shift_ade20k

# the tasks each dataset has annotations for
TASKS = {
    "coco": ("panoptic", "instance", "semantic"),
    "ade20k": ("semantic", "panoptic", "instance"),
    "cityscapes": ("semantic", "instance", "panoptic"),
    "mapillary_vistas": ("semantic", "panoptic"),
    "synthetic": ("panoptic", "instance", "semantic"),
}

LAYOUTS = {
    "coco": """  coco/{train,val}2017/*.jpg
  coco/annotations/{instances,panoptic}_{train,val}2017.json
  coco/panoptic_{train,val}2017/*.png
  coco/panoptic_semseg_{train,val}2017/*.png  (semantic, optional: scripts/prepare_coco_semantic.py)""",
    "ade20k": """  ADEChallengeData2016/images/{training,validation}/*.jpg
  ADEChallengeData2016/annotations/{training,validation}/*.png            (semantic, raw)
  ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png (semantic, prepared)
  ADEChallengeData2016/ade20k_panoptic_{train,val}.json + ade20k_panoptic_{train,val}/*.png
  ADEChallengeData2016/ade20k_instance_{train,val}.json""",
    "cityscapes": """  cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
  cityscapes/gtFine/{train,val}/<city>/*_gtFine_{labelTrainIds,instanceIds}.png
  cityscapes/gtFine/cityscapes_panoptic_{train,val}.json + cityscapes_panoptic_{train,val}/*.png""",
    "mapillary_vistas": """  mapillary_vistas/{training,validation}/images/*.jpg
  mapillary_vistas/{training,validation}/labels/*.png
  mapillary_vistas/{training,validation}/panoptic/panoptic_2018.json + *.png""",
    "synthetic": """  synthetic/{train,val}2017/*.jpg
  synthetic/annotations/panoptic_{train,val}2017.json + synthetic/panoptic_{train,val}2017/*.png""",
}

HINTS = {
    "coco": "Download COCO 2017, or make a small stand-in: python scripts/make_synthetic.py --format coco_panoptic --out DIR",
    "ade20k": "Download ADEChallengeData2016 and run python scripts/prepare_ade20k.py (panoptic/instance), or: python scripts/make_synthetic.py --format ade20k --out DIR",
    "cityscapes": "Download leftImg8bit + gtFine and run python scripts/prepare_cityscapes.py, or: python scripts/make_synthetic.py --format cityscapes --out DIR",
    "mapillary_vistas": "Download Mapillary Vistas v1.2, or: python scripts/make_synthetic.py --format mapillary --out DIR",
    "synthetic": "Make it with: python scripts/make_synthetic.py --format demo --out DIR",
}

CATALOGS = {
    ("coco", "instance"): "coco_instance",
    "coco": "coco_panoptic",
    "ade20k": "ade20k",
    "cityscapes": "cityscapes",
    "mapillary_vistas": "mapillary_vistas",
    "synthetic": "synthetic",
}


def datasets_root(root: str | Path | None = None) -> Path:
    """The folder holding all datasets: argument, else $M2F_DATASETS, else ./datasets."""
    return Path(root or os.environ.get("M2F_DATASETS") or "datasets").expanduser()


def check_task(dataset: str, task: str) -> None:
    """Fail before any work on a combination with no annotations behind it."""
    if dataset not in TASKS:
        raise ValueError(f"unknown dataset '{dataset}'; choose one of {sorted(TASKS)}")
    if task not in TASKS[dataset]:
        raise ValueError(
            f"dataset '{dataset}' has no annotations for task '{task}'; valid tasks: {list(TASKS[dataset])}"
        )


def metadata_for(dataset: str, task: str) -> DatasetMetadata:
    """The category catalog used for (dataset, task)."""
    check_task(dataset, task)
    return get_metadata(CATALOGS.get((dataset, task), CATALOGS[dataset]))


def build_reader(dataset: str, task: str, split: str, root: str | Path | None = None) -> Reader:
    """The reader of one split (`train` or `val`) of a dataset for a task."""
    check_task(dataset, task)
    if split not in ("train", "val"):
        raise ValueError(f"unknown split '{split}': choose train or val")
    meta = metadata_for(dataset, task)
    base = datasets_root(root)
    folder = {"ade20k": "ADEChallengeData2016"}.get(dataset, dataset)
    require_dir(base / folder, f"{dataset} dataset", LAYOUTS[dataset], HINTS[dataset])
    return _BUILDERS[dataset](base / folder, task, split, meta)


def _coco_like(root: Path, task: str, split: str, meta: DatasetMetadata) -> Reader:
    """COCO panoptic/instance; semantic reads `panoptic_semseg_*` PNGs written by
    scripts/prepare_coco_semantic.py, or derives them from the panoptic PNGs when absent."""
    images = root / f"{split}2017"
    semseg = root / f"panoptic_semseg_{split}2017"
    if task == "semantic" and semseg.is_dir():
        pairs = paired_files(images, semseg, "*.jpg", lambda p: p.with_suffix(".png").name)
        return SemanticReader(pairs, meta.num_classes)
    if task == "instance" and (root / "annotations" / f"instances_{split}2017.json").is_file():
        return CocoInstanceReader(
            root / "annotations" / f"instances_{split}2017.json", images, meta
        )
    return PanopticReader(
        root / "annotations" / f"panoptic_{split}2017.json",
        root / f"panoptic_{split}2017",
        lambda info: images / info["file_name"].replace(".png", ".jpg"),
        meta,
    )


def _ade20k(root: Path, task: str, split: str, meta: DatasetMetadata) -> Reader:
    folder = {"train": "training", "val": "validation"}[split]
    images = root / "images" / folder
    if task == "semantic":
        prepared = root / "annotations_detectron2" / folder
        labels, transform = (
            (prepared, None) if prepared.is_dir() else (root / "annotations" / folder, shift_ade20k)
        )
        pairs = paired_files(images, labels, "*.jpg", lambda p: p.with_suffix(".png").name)
        return SemanticReader(pairs, meta.num_classes, transform)
    if task == "instance":
        return CocoInstanceReader(root / f"ade20k_instance_{split}.json", images, meta)
    return PanopticReader(
        root / f"ade20k_panoptic_{split}.json",
        root / f"ade20k_panoptic_{split}",
        lambda info: images / info["file_name"].replace(".png", ".jpg"),
        meta,
    )


def _cityscapes(root: Path, task: str, split: str, meta: DatasetMetadata) -> Reader:
    images = root / "leftImg8bit" / split
    gt = root / "gtFine" / split

    def gt_name(kind: str):
        return lambda rel: str(rel).replace("_leftImg8bit.png", f"_gtFine_{kind}.png")

    if task == "semantic":
        pairs = paired_files(images, gt, "*/*_leftImg8bit.png", gt_name("labelTrainIds"))
        return SemanticReader(pairs, meta.num_classes)
    if task == "instance":
        return CityscapesInstanceReader(
            paired_files(images, gt, "*/*_leftImg8bit.png", gt_name("instanceIds")), meta
        )
    return PanopticReader(
        root / "gtFine" / f"cityscapes_panoptic_{split}.json",
        root / "gtFine" / f"cityscapes_panoptic_{split}",
        # by id: cityscapesScripts writes file_name "<id>_gtFine_leftImg8bit.png", not a real file
        lambda info: images / str(info["id"]).split("_")[0] / f"{info['id']}_leftImg8bit.png",
        meta,
    )


def _mapillary(root: Path, task: str, split: str, meta: DatasetMetadata) -> Reader:
    folder = root / {"train": "training", "val": "validation"}[split]
    if task == "semantic":
        pairs = paired_files(
            folder / "images", folder / "labels", "*.jpg", lambda p: p.with_suffix(".png").name
        )
        return SemanticReader(
            pairs, meta.num_classes, remap_ignore(int(meta.extra.get("file_ignore_label", 65)))
        )
    return PanopticReader(
        folder / "panoptic" / "panoptic_2018.json",
        folder / "panoptic",
        lambda info: folder / "images" / info["file_name"],
        meta,
    )


_BUILDERS = {
    "coco": _coco_like,
    "synthetic": _coco_like,
    "ade20k": _ade20k,
    "cityscapes": _cityscapes,
    "mapillary_vistas": _mapillary,
}
