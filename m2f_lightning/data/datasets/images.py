"""Images-only splits for prediction: a benchmark's test split lists images but ships no
annotations (COCO `image_info_test-dev2017.json` + `test2017/`, the test folders of Cityscapes,
ADE20K and Mapillary Vistas). `prediction_reader` serves any split of a dataset for predict:
train/val through the dataset's own reader (so the ids are the annotation files'), `test`
through the image lists below."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import DataError, read_image
from .base import Reader, Sample, require_dir
from .registry import DATASETS, build_reader, check_task, datasets_root

SPLITS = ("train", "val", "test")


class ImageListReader(Reader):
    """(image path, image id) records; samples carry the image only."""

    def __init__(self, records: list[tuple[Path, int | str]], source: str) -> None:
        if not records:
            raise DataError(f"no images listed in {source}")
        self.records = records
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        path, image_id = self.records[index]
        return Sample(image=read_image(path), file_name=str(path), image_id=image_id)


def coco_image_info(json_file: Path, image_dir: Path) -> ImageListReader:
    """A COCO `image_info_*.json` (an `images` list with integer ids, no annotations)."""
    if not json_file.is_file():
        raise FileNotFoundError(f"image list not found: {json_file}")
    images = json.loads(json_file.read_text()).get("images", [])
    return ImageListReader(
        [(image_dir / info["file_name"], info["id"]) for info in images], str(json_file)
    )


def image_glob(folder: Path, pattern: str) -> ImageListReader:
    """Every file matching `pattern` under `folder`, its id the file's stem (the test splits of
    Cityscapes, ADE20K and Mapillary Vistas name images, not ids)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"test images not found: {folder}")
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    return ImageListReader([(p, p.stem) for p in files], f"{folder}/{pattern}")


# dataset → (folder under the dataset's own folder, its test reader)
TEST_SPLITS: dict[str, tuple[str, Callable[[Path], ImageListReader]]] = {
    "coco": (
        "annotations/image_info_test-dev2017.json + test2017/",
        lambda root: coco_image_info(
            root / "annotations" / "image_info_test-dev2017.json", root / "test2017"
        ),
    ),
    "synthetic": (
        "annotations/image_info_test-dev2017.json + test2017/",
        lambda root: coco_image_info(
            root / "annotations" / "image_info_test-dev2017.json", root / "test2017"
        ),
    ),
    "cityscapes": (
        "leftImg8bit/test/<city>/*_leftImg8bit.png",
        lambda root: image_glob(root / "leftImg8bit" / "test", "*/*_leftImg8bit.png"),
    ),
    "ade20k": (
        "images/testing/*.jpg",
        lambda root: image_glob(root / "images" / "testing", "*.jpg"),
    ),
    "mapillary_vistas": (
        "testing/images/*.jpg",
        lambda root: image_glob(root / "testing" / "images", "*.jpg"),
    ),
}


def prediction_reader(
    dataset: str,
    task: str,
    split: str,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> Reader:
    """The reader of a split to predict on: train/val as for evaluation, test images-only."""
    check_task(dataset, task, options)
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}': choose one of {list(SPLITS)}")
    if split != "test":
        return build_reader(dataset, task, split, root, options)
    if dataset not in TEST_SPLITS:
        raise ValueError(
            f"dataset '{dataset}' has no test split; test splits: {sorted(TEST_SPLITS)}"
        )
    spec = DATASETS[dataset]
    layout, build = TEST_SPLITS[dataset]
    folder = datasets_root(root) / spec.folder
    require_dir(folder, f"{dataset} dataset", f"  {spec.folder}/{layout}", spec.hint)
    return build(folder)
