"""Which reader serves which (dataset, task, split), and where the files lie: one `DatasetSpec`
per dataset, registered in `DATASETS`.

The layouts are the original Mask2Former `datasets/` folder's, so existing data is used
unchanged. The root is `./datasets` unless the config or the `M2F_DATASETS` environment variable
says otherwise. A user's own data in COCO-panoptic, COCO-instance or image/label-PNG form needs no
code: see `custom.py` (`dataset=custom`).
"""

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..catalog import DatasetMetadata, get_metadata
from .base import Reader, require_dir
from .instance import CityscapesInstanceReader, CocoInstanceReader, polygons_json
from .panoptic import PanopticReader
from .semantic import SemanticReader, paired_files, remap_ignore, shift_ade20k

ReaderBuilder = Callable[[Path, str, str, DatasetMetadata], Reader]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the code knows about one dataset.

    `build_reader(folder, task, split, metadata)` returns the reader of a split; `catalog` names
    the category catalog (`data/catalog/<name>.json`), `task_catalogs` the exceptions per task.
    """

    name: str
    tasks: tuple[str, ...]
    folder: str  # under the datasets root
    layout: str  # the expected files, shown when the folder is missing
    hint: str  # how to get the data
    catalog: str
    build_reader: ReaderBuilder
    task_catalogs: dict[str, str] = field(default_factory=dict)

    def metadata(self, task: str) -> DatasetMetadata:
        return get_metadata(self.task_catalogs.get(task, self.catalog))


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Make a dataset available as `dataset=<spec.name>` (with a conf/dataset/<name>.yaml)."""
    DATASETS[spec.name] = spec
    return spec


def datasets_root(root: str | Path | None = None) -> Path:
    """The folder holding all datasets: argument, else $M2F_DATASETS, else ./datasets."""
    return Path(root or os.environ.get("M2F_DATASETS") or "datasets").expanduser()


def check_task(dataset: str, task: str, options: dict[str, Any] | None = None) -> None:
    """Fail before any work on a combination with no annotations behind it."""
    if dataset == "custom":
        from .custom import custom_tasks

        tasks = custom_tasks(options or {})
    elif dataset in DATASETS:
        tasks = DATASETS[dataset].tasks
    else:
        raise ConfigError(
            f"unknown dataset '{dataset}'; choose one of {sorted([*DATASETS, 'custom'])}"
        )
    if task not in tasks:
        raise ConfigError(
            f"dataset '{dataset}' has no annotations for task '{task}'; valid tasks: {list(tasks)}"
        )


def metadata_for(
    dataset: str,
    task: str,
    options: dict[str, Any] | None = None,
    root: str | Path | None = None,
) -> DatasetMetadata:
    """The category catalog used for (dataset, task); `options`/`root` locate a custom one."""
    check_task(dataset, task, options)
    if dataset == "custom":
        from .custom import custom_metadata

        return custom_metadata(options or {}, task, datasets_root(root))
    return DATASETS[dataset].metadata(task)


def build_reader(
    dataset: str,
    task: str,
    split: str,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> Reader:
    """The reader of one split (`train` or `val`) of a dataset for a task."""
    check_task(dataset, task, options)
    if split not in ("train", "val"):
        raise ConfigError(f"unknown split '{split}': choose train or val")
    meta = metadata_for(dataset, task, options, root)
    if dataset == "custom":
        from .custom import custom_reader

        return custom_reader(options or {}, task, split, datasets_root(root), meta)
    spec = DATASETS[dataset]
    base = datasets_root(root)
    require_dir(base / spec.folder, f"{dataset} dataset", spec.layout, spec.hint)
    return spec.build_reader(base / spec.folder, task, split, meta)


def _official_instances(json_file: Path, task: str, split: str, dataset: str) -> Path | None:
    """The instance JSON a panoptic model's AP is scored against (the official evaluators use
    it); None, with a warning that says what is scored instead, when it is absent."""
    if task != "panoptic" or split != "val":
        return None
    if json_file.is_file():
        return json_file
    warnings.warn(
        f"{json_file} not found: the AP of this {dataset} panoptic model is scored against the "
        "thing segments of the panoptic PNGs, not against the instance annotations the official "
        "evaluator (and the paper's AP) uses; add the file to score the paper's AP",
        stacklevel=2,
    )
    return None


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
            root / "annotations" / f"instances_{split}2017.json",
            images,
            meta,
            filter_empty=split == "train",
            keep_polygons=split == "train",
        )
    instances = root / "annotations" / f"instances_{split}2017.json"
    return PanopticReader(
        root / "annotations" / f"panoptic_{split}2017.json",
        root / f"panoptic_{split}2017",
        lambda info: images / info["file_name"].replace(".png", ".jpg"),
        meta,
        # the demo's synthetic scenes have no instance file: their AP uses the panoptic PNGs
        instances_json=None
        if meta.name == "synthetic"
        else _official_instances(instances, task, split, "COCO"),
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
        return CocoInstanceReader(
            root / f"ade20k_instance_{split}.json", images, meta, filter_empty=split == "train"
        )
    # the official ADE20K panoptic evaluation: AP against ade20k_instance_val.json, mIoU
    # against the annotations_detectron2 semantic PNGs (when prepared)
    semantic = root / "annotations_detectron2" / folder
    return PanopticReader(
        root / f"ade20k_panoptic_{split}.json",
        root / f"ade20k_panoptic_{split}",
        lambda info: images / info["file_name"].replace(".png", ".jpg"),
        meta,
        instances_json=_official_instances(
            root / f"ade20k_instance_{split}.json", task, split, "ADE20K"
        ),
        semantic_png=(lambda info: semantic / Path(info["file_name"]).with_suffix(".png").name)
        if task == "panoptic" and split == "val" and semantic.is_dir()
        else None,
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
        pairs = paired_files(images, gt, "*/*_leftImg8bit.png", gt_name("instanceIds"))
        return CityscapesInstanceReader(
            pairs, meta, from_json=_train_from_polygons(pairs, split), filter_empty=split == "train"
        )
    return PanopticReader(
        root / "gtFine" / f"cityscapes_panoptic_{split}.json",
        root / "gtFine" / f"cityscapes_panoptic_{split}",
        # by id: cityscapesScripts writes file_name "<id>_gtFine_leftImg8bit.png", not a real file
        lambda info: images / str(info["id"]).split("_")[0] / f"{info['id']}_leftImg8bit.png",
        meta,
        # the paper's AP of a Cityscapes panoptic model: cityscapesScripts on the instanceIds PNGs
        instance_png=(
            lambda info: gt / str(info["id"]).split("_")[0] / f"{info['id']}_gtFine_instanceIds.png"
        )
        if task == "panoptic" and split == "val"
        else None,
    )


def _train_from_polygons(pairs: list[tuple[Path, Path]], split: str) -> bool:
    """Cityscapes instance training reads the `*_gtFine_polygons.json` files, as the official
    registration (from_json=True); without them it trains from the instanceIds PNGs, with a
    warning that says what then differs."""
    if split != "train":
        return False
    missing = [png for _, png in pairs if not polygons_json(png).is_file()]
    if not missing:
        return True
    warnings.warn(
        f"{len(missing)} of {len(pairs)} Cityscapes training images have no "
        f"*_gtFine_polygons.json (first: {polygons_json(missing[0])}): instance training reads "
        "the instanceIds PNGs instead, whose masks are resized rather than rasterised after the "
        "augmentation, and keeps images without instances; the official training uses the "
        "polygon files",
        stacklevel=2,
    )
    return False


def _mapillary(root: Path, task: str, split: str, meta: DatasetMetadata) -> Reader:
    folder = root / {"train": "training", "val": "validation"}[split]
    if task == "semantic":
        pairs = paired_files(
            folder / "images", folder / "labels", "*.jpg", lambda p: p.with_suffix(".png").name
        )
        return SemanticReader(
            pairs, meta.num_classes, remap_ignore(int(meta.extra.get("file_ignore_label", 65)))
        )
    # the official registration scores mIoU against labels/*.png (ignore 65), not against
    # semantics derived from the panoptic PNG
    labels = folder / "labels"
    scored = task == "panoptic" and split == "val"
    if scored and not labels.is_dir():
        warnings.warn(
            f"{labels} not found: the mIoU of this Mapillary Vistas panoptic model is scored "
            "against semantics derived from the panoptic PNGs, not against the labels/*.png the "
            "official evaluation uses, so it differs from the official mIoU",
            stacklevel=2,
        )
    return PanopticReader(
        folder / "panoptic" / "panoptic_2018.json",
        folder / "panoptic",
        lambda info: folder / "images" / info["file_name"],
        meta,
        semantic_png=(lambda info: labels / Path(info["file_name"]).with_suffix(".png").name)
        if scored and labels.is_dir()
        else None,
        semantic_transform=remap_ignore(int(meta.extra.get("file_ignore_label", 65))),
    )


register(
    DatasetSpec(
        name="coco",
        tasks=("panoptic", "instance", "semantic"),
        folder="coco",
        layout="""  coco/{train,val}2017/*.jpg
  coco/annotations/{instances,panoptic}_{train,val}2017.json
  coco/panoptic_{train,val}2017/*.png
  coco/panoptic_semseg_{train,val}2017/*.png  (semantic, optional: scripts/prepare_coco_semantic.py)""",
        hint="Download COCO 2017, or make a small stand-in: python scripts/make_synthetic.py --format coco_panoptic --out DIR",
        catalog="coco_panoptic",
        task_catalogs={"instance": "coco_instance"},
        build_reader=_coco_like,
    )
)
register(
    DatasetSpec(
        name="ade20k",
        tasks=("semantic", "panoptic", "instance"),
        folder="ADEChallengeData2016",
        layout="""  ADEChallengeData2016/images/{training,validation}/*.jpg
  ADEChallengeData2016/annotations/{training,validation}/*.png            (semantic, raw)
  ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png (semantic, prepared)
  ADEChallengeData2016/ade20k_panoptic_{train,val}.json + ade20k_panoptic_{train,val}/*.png
  ADEChallengeData2016/ade20k_instance_{train,val}.json""",
        hint="Download ADEChallengeData2016 and run python scripts/prepare_ade20k.py (panoptic/instance), or: python scripts/make_synthetic.py --format ade20k --out DIR",
        catalog="ade20k",
        task_catalogs={"instance": "ade20k_instance"},  # the 100 thing classes
        build_reader=_ade20k,
    )
)
register(
    DatasetSpec(
        name="cityscapes",
        tasks=("semantic", "instance", "panoptic"),
        folder="cityscapes",
        layout="""  cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
  cityscapes/gtFine/{train,val}/<city>/*_gtFine_{labelTrainIds,instanceIds}.png
  cityscapes/gtFine/train/<city>/*_gtFine_polygons.json  (instance training)
  cityscapes/gtFine/cityscapes_panoptic_{train,val}.json + cityscapes_panoptic_{train,val}/*.png""",
        hint="Download leftImg8bit + gtFine and run python scripts/prepare_cityscapes.py, or: python scripts/make_synthetic.py --format cityscapes --out DIR",
        catalog="cityscapes",
        task_catalogs={"instance": "cityscapes_instance"},  # the 8 thing classes
        build_reader=_cityscapes,
    )
)
register(
    DatasetSpec(
        name="mapillary_vistas",
        tasks=("semantic", "panoptic"),
        folder="mapillary_vistas",
        layout="""  mapillary_vistas/{training,validation}/images/*.jpg
  mapillary_vistas/{training,validation}/labels/*.png
  mapillary_vistas/{training,validation}/panoptic/panoptic_2018.json + *.png""",
        hint="Download Mapillary Vistas v1.2, or: python scripts/make_synthetic.py --format mapillary --out DIR",
        catalog="mapillary_vistas",
        build_reader=_mapillary,
    )
)
register(
    DatasetSpec(
        name="synthetic",
        tasks=("panoptic", "instance", "semantic"),
        folder="synthetic",
        layout="""  synthetic/{train,val}2017/*.jpg
  synthetic/annotations/panoptic_{train,val}2017.json + synthetic/panoptic_{train,val}2017/*.png""",
        hint="Make it with: python scripts/make_synthetic.py --format demo --out DIR",
        catalog="synthetic",
        build_reader=_coco_like,
    )
)

# the tasks each dataset has annotations for
TASKS = {name: spec.tasks for name, spec in DATASETS.items()}
