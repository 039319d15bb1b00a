"""A user's own dataset by config alone (`dataset=custom`): COCO-panoptic, COCO-instance or
image + label-PNG folders, anywhere under the datasets root.

`dataset.source` says where the files are and what they hold:

    format: coco_panoptic | coco_instance | semantic_png
    train: {images: DIR, annotations: JSON, panoptic: DIR (coco_panoptic), labels: DIR (semantic_png)}
    val:   {...the same}
    classes: [names]   # semantic_png only: label value i is class i, 255 ignores

For the COCO formats the categories (ids, names, thing/stuff) come from the annotation JSON of the
training split; semantic PNGs take the `classes` list.
"""

import colorsys
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError, MissingDataError
from ..catalog import DatasetMetadata
from .base import Reader
from .instance import CocoInstanceReader
from .panoptic import PanopticReader
from .semantic import SemanticReader, paired_files

FORMAT_TASKS = {
    "coco_panoptic": ("panoptic", "instance", "semantic"),
    "coco_instance": ("instance",),
    "semantic_png": ("semantic",),
}


def _format(source: dict[str, Any]) -> str:
    fmt = source.get("format")
    if fmt not in FORMAT_TASKS:
        raise ConfigError(
            f"dataset.source.format must be one of {sorted(FORMAT_TASKS)}; got {fmt!r}"
        )
    return fmt


def custom_tasks(source: dict[str, Any]) -> tuple[str, ...]:
    return FORMAT_TASKS[_format(source)]


def palette(n: int) -> list[tuple[int, int, int]]:
    """`n` distinct, saturated overlay colours (golden-ratio hues)."""
    colors = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _split_entry(source: dict[str, Any], split: str, key: str, root: Path) -> Path:
    entry = (source.get(split) or {}).get(key)
    if not entry:
        raise ConfigError(f"dataset.source.{split}.{key} is not set (format {source['format']})")
    path = Path(entry).expanduser()
    return path if path.is_absolute() else root / path


@cache
def _json_categories(json_file: str) -> list[dict[str, Any]]:
    path = Path(json_file)
    if not path.is_file():
        raise MissingDataError(f"annotation file not found: {path}")
    categories = json.loads(path.read_text()).get("categories")
    if not categories:
        raise DataError(f"{path}: no 'categories' list to take the classes from")
    return categories


def _name_key(name: str) -> str:
    """Names that differ only in case, spaces or punctuation ("Traffic-Light", "traffic light")
    are one class to a reader of the report and to fine-tuning's class matching."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _refuse_duplicates(
    names: list[str], ids: list[int], where: str, error: type[Exception], what: str
) -> None:
    """Two classes of one name would be two indistinguishable rows of every report, and two
    categories of one id would leave one of them unreachable: both are refused."""
    problems = []
    first_id: dict[int, str] = {}
    first_name: dict[str, tuple[int, str]] = {}
    for name, i in zip(names, ids, strict=True):
        if i in first_id:
            problems.append(f"{what} {i} is listed twice ({first_id[i]!r} and {name!r})")
        first_id.setdefault(i, name)
        earlier = first_name.setdefault(_name_key(name), (i, name))
        if earlier[0] != i:
            problems.append(
                f"{what}s {earlier[0]} ({earlier[1]!r}) and {i} ({name!r}) have the same class "
                "name: rename one of them (or merge them)"
            )
    if problems:
        raise error(f"{where}: " + "; ".join(problems))


def custom_metadata(source: dict[str, Any], task: str, root: Path) -> DatasetMetadata:
    """Classes of a custom dataset: the training JSON's categories, or `source.classes`."""
    fmt = _format(source)
    if fmt == "semantic_png":
        names = list(source.get("classes") or [])
        if not names:
            raise ConfigError("dataset.source.classes must list the class names of semantic_png")
        ids = list(range(len(names)))
        is_thing = [False] * len(names)
        _refuse_duplicates(names, ids, "dataset.source.classes", ConfigError, "value")
    else:
        json_file = _split_entry(source, "train", "annotations", root)
        categories = _json_categories(str(json_file))
        names = [str(c["name"]) for c in categories]
        ids = [int(c["id"]) for c in categories]
        # COCO instance files hold things only; panoptic ones say which are things
        is_thing = [bool(c.get("isthing", 1)) for c in categories]
        _refuse_duplicates(names, ids, f"the categories of {json_file}", DataError, "id")
    return DatasetMetadata(
        name="custom",
        class_names=names,
        dataset_ids=ids,
        is_thing=is_thing,
        colors=palette(len(names)),
    )


def custom_reader(
    source: dict[str, Any], task: str, split: str, root: Path, meta: DatasetMetadata
) -> Reader:
    """The reader of one split of a custom dataset."""
    fmt = _format(source)
    images = _split_entry(source, split, "images", root)
    if not images.is_dir():
        raise MissingDataError(f"dataset.source.{split}.images: no folder at {images}")
    if fmt == "semantic_png":
        labels = _split_entry(source, split, "labels", root)
        pattern = source.get("image_glob", "*.jpg")
        pairs = paired_files(images, labels, pattern, lambda p: p.with_suffix(".png").name)
        return SemanticReader(pairs, meta.num_classes)
    annotations = _split_entry(source, split, "annotations", root)
    if fmt == "coco_instance" or task == "instance" and "panoptic" not in (source.get(split) or {}):
        return CocoInstanceReader(
            annotations,
            images,
            meta,
            filter_empty=split == "train",
            keep_polygons=split == "train",
        )
    return PanopticReader(
        annotations,
        _split_entry(source, split, "panoptic", root),
        lambda info: images / info["file_name"],
        meta,
    )
