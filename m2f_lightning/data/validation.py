"""Checks of annotation files against their format and the category catalog, shared by the
readers (which raise) and `m2f-doctor` (which collects every problem, then reports them all).

A record that contradicts itself or its format (ids, value ranges, sizes, categories, polygons,
RLE) is a problem naming the file and the record. What the official pipeline (detectron2's
`load_coco_json`) skips is skipped here too, with one warning that counts it: polygons of fewer
than 3 points or an odd number of coordinates, and annotations left without any polygon.
Categories of a JSON that disagree with the catalog (renamed, thing/stuff flipped) are a warning
listing the differences: the catalog decides.
"""

import json
import posixpath
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import DataError, MissingDataError, summarise
from .catalog import DatasetMetadata
from .rle import check_rle_runs


class DataWarning(UserWarning):
    """Something in a dataset that is accepted (as the official pipeline accepts it) but may not
    be what the user meant."""


_collected: list[str] | None = None


@contextmanager
def collecting() -> Iterator[list[str]]:
    """Within this block readers do not raise on problems found while indexing annotation files:
    they drop the bad records and add the problems to the yielded list (m2f-doctor)."""
    global _collected
    previous, _collected = _collected, []
    try:
        yield _collected
    finally:
        _collected = previous


def report(problems: list[str], where: Path | str) -> None:
    """Raise one `DataError` for `problems` (all kept in `.problems`), or collect them."""
    if not problems:
        return
    if _collected is not None:
        _collected.extend(problems)
        return
    raise DataError(summarise(problems, f"{len(problems)} problem(s) in {where}:"), problems)


def load_json(path: Path, lists: tuple[str, ...], what: str) -> dict[str, Any]:
    """The JSON object at `path`, with each key of `lists` present and a list."""
    if not path.is_file():
        raise MissingDataError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with keys {list(lists)}")
    for key in lists:
        if key not in data:
            raise DataError(
                f"{path} has no '{key}' list (a {what} needs {', '.join(map(repr, lists))})"
            )
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def compare_categories(
    categories: Any, metadata: DatasetMetadata, json_file: Path, things_only: bool = False
) -> list[str]:
    """Differences between a JSON's `categories` and the catalog (a warning, the catalog wins).
    `things_only`: an instance file lists things only, so `isthing` is not compared."""
    if not isinstance(categories, list):
        return []
    catalog = {d: i for i, d in enumerate(metadata.dataset_ids)}
    differences = []
    for cat in categories:
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            differences.append(f"category entry without an integer id: {cat!r}")
            continue
        index = catalog.get(cat["id"])
        if index is None:
            differences.append(f"id {cat['id']} ({cat.get('name')!r}) is not in the catalog")
            continue
        name = cat.get("name")
        if name is not None and name != metadata.class_names[index]:
            differences.append(
                f"id {cat['id']} is named {name!r} in the file, "
                f"{metadata.class_names[index]!r} in the catalog"
            )
        if (
            not things_only
            and "isthing" in cat
            and bool(cat["isthing"]) != metadata.is_thing[index]
        ):
            differences.append(
                f"id {cat['id']} ({metadata.class_names[index]!r}) has isthing={cat['isthing']} "
                f"in the file but is a {'thing' if metadata.is_thing[index] else 'stuff'} class "
                "in the catalog"
            )
    if differences:
        warnings.warn(
            summarise(
                differences,
                f"the categories of {json_file} differ from the '{metadata.name}' catalog, which "
                "is used (class names, thing/stuff):",
            ),
            DataWarning,
            stacklevel=3,
        )
    return differences


def check_panoptic_annotations(
    data: dict[str, Any], json_file: Path, metadata: DatasetMetadata
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The (image info, annotation) pairs of a COCO-panoptic JSON whose records are sound;
    problems (unknown image or category ids, duplicate or non-positive segment ids, bad
    `iscrowd`) are reported, naming the file and the record."""
    problems: list[str] = []
    images = _index_images(data["images"], json_file, problems, need_size=False)
    known = set(metadata.dataset_ids)
    seen_images: set[Any] = set()
    seen_pngs: dict[str, Any] = {}
    pairs = []
    for n, ann in enumerate(data["annotations"]):
        where = f"{json_file}: annotation #{n}"
        if not isinstance(ann, dict):
            problems.append(f"{where} is not an object")
            continue
        missing = [k for k in ("image_id", "file_name", "segments_info") if k not in ann]
        if missing:
            problems.append(f"{where} has no {', '.join(missing)}")
            continue
        where = f"{json_file}: annotation of image id {ann['image_id']} ({ann['file_name']})"
        bad = []
        if ann["image_id"] not in images:
            bad.append(f"unknown image id {ann['image_id']} (not in 'images')")
        elif ann["image_id"] in seen_images:
            bad.append("a second annotation for this image")
        first = seen_pngs.setdefault(same_file_key(ann["file_name"]), ann["image_id"])
        if first != ann["image_id"]:
            bad.append(f"its PNG is also the annotation of image id {first}")
        if not isinstance(ann["segments_info"], list):
            bad.append("segments_info is not a list")
        else:
            ids: set[int] = set()
            for seg in ann["segments_info"]:
                if not isinstance(seg, dict) or not _is_int(seg.get("id")):
                    bad.append(f"segment without an integer id: {seg!r}")
                    continue
                if seg["id"] <= 0 or seg["id"] >= 256**3:
                    bad.append(f"segment id {seg['id']} outside 1..{256**3 - 1} (0 is void)")
                if seg["id"] in ids:
                    bad.append(f"segment id {seg['id']} listed twice")
                ids.add(seg["id"])
                if seg.get("category_id") not in known:
                    problems.append(
                        f"unknown category id {seg.get('category_id')} in {json_file} (image id "
                        f"{ann['image_id']}, {ann['file_name']}, segment {seg['id']}) for dataset "
                        f"'{metadata.name}' (known ids: {min(known)}..{max(known)})"
                    )
                    bad.append("")  # counted above
                if seg.get("iscrowd", 0) not in (0, 1):
                    bad.append(f"segment {seg['id']}: iscrowd is {seg['iscrowd']!r}, not 0 or 1")
        if bad:
            problems += [f"{where}: {b}" for b in bad if b]
            continue
        seen_images.add(ann["image_id"])
        pairs.append((images[ann["image_id"]], ann))
    report(problems, json_file)
    return pairs


def _index_images(
    entries: list[Any], json_file: Path, problems: list[str], need_size: bool
) -> dict[Any, dict[str, Any]]:
    images: dict[Any, dict[str, Any]] = {}
    by_file: dict[str, dict[str, Any]] = {}
    for n, img in enumerate(entries):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            problems.append(f"{json_file}: image entry #{n} needs an 'id' and a 'file_name'")
            continue
        where = f"{json_file}: image id {img['id']} ({img['file_name']})"
        if img["id"] in images:
            problems.append(f"{where}: image id listed twice")
            continue
        first = by_file.setdefault(same_file_key(img["file_name"]), img)
        if first is not img:
            problems.append(
                f"{json_file}: image file {img['file_name']!r} is listed twice, as image id "
                f"{first['id']} ({first['file_name']!r}) and image id {img['id']}: it would be "
                "read twice, each id with its own share of the annotations; keep one entry"
            )
            continue
        sizes = [img.get("height"), img.get("width")]
        if need_size and not all(_is_int(v) and v > 0 for v in sizes):
            problems.append(f"{where}: height and width must be positive integers, got {sizes}")
            continue
        images[img["id"]] = img
    return images


def same_file_key(file_name: Any) -> str:
    """One key for every spelling of a relative file name: `a.jpg`, `./a.jpg`, `x/../a.jpg`,
    `x//a.jpg` and `x\\a.jpg` name the same file."""
    return posixpath.normpath(str(file_name).replace("\\", "/"))


def check_instance_annotations(
    data: dict[str, Any], json_file: Path, metadata: DatasetMetadata
) -> tuple[dict[Any, dict[str, Any]], dict[Any, list[dict[str, Any]]]]:
    """(images by id, sound annotations by image id) of a COCO-instances JSON.

    Problems: unknown image or category ids, duplicate annotation ids, `iscrowd` not 0/1, a
    segmentation that is neither polygons nor RLE, an RLE whose `size` is not its image's.
    Skipped with one warning, as detectron2 does: polygons of fewer than 3 points (or an odd
    number of coordinates), and annotations with no polygon left (`segmentation: []`).
    """
    problems: list[str] = []
    images = _index_images(data["images"], json_file, problems, need_size=True)
    known = set(metadata.dataset_ids)
    by_image: dict[Any, list[dict[str, Any]]] = {i: [] for i in images}
    ann_ids: set[Any] = set()
    dropped_polygons = skipped = 0
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            problems.append(f"{json_file}: annotation #{n} has no image_id")
            continue
        where = f"{json_file}: annotation id {ann.get('id', f'#{n}')} (image id {ann['image_id']})"
        info = images.get(ann["image_id"])
        bad = []
        if info is None:
            bad.append(f"unknown image id {ann['image_id']} (not in 'images')")
        if "id" in ann:
            if ann["id"] in ann_ids:
                bad.append("annotation id listed twice")
            ann_ids.add(ann["id"])
        if ann.get("category_id") not in known:
            bad.append(
                f"unknown category id {ann.get('category_id')} in {json_file} for dataset "
                f"'{metadata.name}' (known ids: {min(known)}..{max(known)})"
            )
        if ann.get("iscrowd", 0) not in (0, 1):
            bad.append(f"iscrowd is {ann['iscrowd']!r}, not 0 or 1")
        segm = ann.get("segmentation")
        if isinstance(segm, list):
            polygons = []
            for poly in segm:
                if not isinstance(poly, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly
                ):
                    bad.append("a polygon that is not a list of numbers")
                    break
                if len(poly) % 2 == 0 and len(poly) >= 6:
                    polygons.append(poly)
                else:
                    dropped_polygons += 1
        elif isinstance(segm, dict):
            size, counts = segm.get("size"), segm.get("counts")
            size_ok = isinstance(size, list) and len(size) == 2 and all(map(_is_int, size))
            if not size_ok:
                bad.append(f"RLE 'size' must be [height, width], got {size!r}")
            elif info is not None and list(size) != [info["height"], info["width"]]:
                bad.append(
                    f"RLE size {size[1]}x{size[0]} (WxH) differs from its image "
                    f"{info['file_name']} ({info['width']}x{info['height']})"
                )
            if not isinstance(counts, (str, list)):
                bad.append(f"RLE 'counts' must be a string or a list, got {type(counts).__name__}")
            elif size_ok:
                try:  # pycocotools would decode runs that do not cover the image into junk
                    check_rle_runs(counts, size[0], size[1])
                except ValueError as err:
                    bad.append(f"RLE 'counts': {err}")
        else:
            bad.append(f"segmentation must be polygons or an RLE, got {segm!r:.60}")
        if bad:
            problems += [f"{where}: {b}" for b in bad]
            continue
        if isinstance(segm, list):
            if not polygons:
                skipped += 1
                continue
            if len(polygons) != len(segm):
                ann = {**ann, "segmentation": polygons}
        by_image[ann["image_id"]].append(ann)
    report(problems, json_file)
    if skipped or dropped_polygons:
        warnings.warn(
            f"{json_file}: skipped {skipped} annotation(s) without a valid polygon and dropped "
            f"{dropped_polygons} polygon(s) of fewer than 3 points (or an odd number of "
            "coordinates), as detectron2 does",
            DataWarning,
            stacklevel=2,
        )
    return images, by_image
