"""Edge cases of the COCO instance readers (`CocoInstanceReader`, `annotation_masks`), written
from the surviving mutants of `make mutate MODULE=readers`.

Inputs are tiny hand-made COCO JSON files and PNG images; masks are checked against
pycocotools' own `COCO.annToMask`, the other expected values are worked out from the JSON.
"""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from m2f_lightning.data.catalog import get_metadata
from m2f_lightning.data.datasets.instance import CocoInstanceReader, annotation_masks, load_coco
from m2f_lightning.data.io import DataError, MissingDataError
from m2f_lightning.data.validation import DataWarning

META = get_metadata("coco_instance")
H, W = 12, 16
# COCO category ids → positions among the 80 thing classes: person 1 → 0, car 3 → 2,
# toothbrush 90 → 79 (the last)
PERSON, CAR, TOOTHBRUSH = 1, 3, 90


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _box_mask(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


# annotations of image 1: integer polygon without an `iscrowd` key, two float polygons,
# an uncompressed-RLE crowd region, a compressed RLE
ANNS_IMAGE_1 = [
    {"id": 11, "image_id": 1, "category_id": PERSON, "segmentation": [[1, 1, 9, 1, 9, 7, 1, 7]]},
    {
        "id": 12,
        "image_id": 1,
        "category_id": CAR,
        "iscrowd": 0,
        "segmentation": [[10.5, 2.0, 15.0, 2.0, 12.0, 10.5], [0.0, 9.0, 4.0, 9.0, 0.0, 11.0]],
    },
    {
        "id": 13,
        "image_id": 1,
        "category_id": PERSON,
        "iscrowd": 1,
        # column-major run lengths: 30 off, 20 on, the rest off
        "segmentation": {"size": [H, W], "counts": [30, 20, H * W - 50]},
    },
    {
        "id": 14,
        "image_id": 1,
        "category_id": TOOTHBRUSH,
        "iscrowd": 0,
        "segmentation": _compressed_rle(_box_mask(3, 5, 8, 12)),
    },
]


def _write_coco(tmp_path: Path, images: list[dict], annotations: list[dict], **extra) -> Path:
    """A COCO instances JSON and one random PNG per image entry (of the size the entry gives,
    or `actual_size` (h, w) when present)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for img in images:
        h, w = img.pop("actual_size", (img["height"], img["width"]))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / img["file_name"])
        entries.append(img)
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({"images": entries, "annotations": annotations, **extra}))
    return json_file


def _image(image_id, name: str | None = None, **kwargs) -> dict:
    return {"id": image_id, "file_name": name or f"{image_id}.png", "height": H, "width": W} | (
        kwargs
    )


def _one_image_file(tmp_path: Path, annotations: list[dict] | None = None) -> Path:
    anns = ANNS_IMAGE_1 if annotations is None else annotations
    return _write_coco(tmp_path, [_image(1)], anns)


# --- CocoInstanceReader: what a sample holds ------------------------------------------------


def test_coco_instance_masks_match_pycocotools_ann_to_mask(tmp_path: Path) -> None:
    json_file = _one_image_file(tmp_path)
    sample = CocoInstanceReader(json_file, tmp_path / "images", META)[0]
    coco = COCO(str(json_file))
    expected = np.stack([coco.annToMask(a) for a in coco.loadAnns([11, 12, 13, 14])])
    assert all(m.any() for m in expected)  # each annotation draws something
    assert sample.masks.dtype == np.uint8
    np.testing.assert_array_equal(sample.masks, expected)
    assert sample.labels.dtype == np.int64
    assert sample.labels.tolist() == [0, 2, 0, 79]
    # no iscrowd key → not crowd (pycocotools' and detectron2's default)
    assert sample.crowd.dtype == np.bool_
    assert sample.crowd.tolist() == [False, False, True, False]
    assert sample.image_id == 1
    assert sample.file_name == str(tmp_path / "images" / "1.png")
    np.testing.assert_array_equal(sample.image, np.asarray(Image.open(sample.file_name)))


def test_coco_instance_image_without_annotations_gives_empty_typed_arrays(tmp_path: Path) -> None:
    json_file = _write_coco(tmp_path, [_image(5)], [])
    sample = CocoInstanceReader(json_file, tmp_path / "images", META)[0]
    assert sample.masks.shape == (0, H, W) and sample.masks.dtype == np.uint8
    assert sample.labels.shape == (0,) and sample.labels.dtype == np.int64
    assert sample.crowd.shape == (0,) and sample.crowd.dtype == np.bool_


def test_coco_instance_defaults_keep_every_image_and_no_polygons(tmp_path: Path) -> None:
    # as a user calls it: CocoInstanceReader(json, images, metadata)
    crowd_only = {**ANNS_IMAGE_1[2], "image_id": 2}
    json_file = _write_coco(
        tmp_path, [_image(1), _image(2), _image(3)], [ANNS_IMAGE_1[0], crowd_only]
    )
    reader = CocoInstanceReader(json_file, tmp_path / "images", META)
    assert len(reader) == 3  # neither the crowd-only image 2 nor the empty image 3 is dropped
    assert [reader[i].image_id for i in range(3)] == [1, 2, 3]
    assert all(reader[i].polygons is None for i in range(3))


def test_coco_instance_filter_empty_counts_a_missing_iscrowd_as_not_crowd(tmp_path: Path) -> None:
    no_key = ANNS_IMAGE_1[0]  # image 1: no iscrowd key
    crowd_only = {**ANNS_IMAGE_1[2], "image_id": 2}
    explicit = {**ANNS_IMAGE_1[1], "image_id": 4}
    json_file = _write_coco(
        tmp_path,
        [_image(1), _image(2), _image(3), _image(4)],
        [no_key, crowd_only, explicit],
    )
    reader = CocoInstanceReader(json_file, tmp_path / "images", META, filter_empty=True)
    assert reader.image_ids == [1, 4]


def test_coco_instance_keep_polygons_gives_float_xy_arrays_and_none_for_rle(
    tmp_path: Path,
) -> None:
    json_file = _one_image_file(tmp_path)
    sample = CocoInstanceReader(json_file, tmp_path / "images", META, keep_polygons=True)[0]
    polygons = sample.polygons
    assert polygons is not None and len(polygons) == 4
    assert polygons[2] is None and polygons[3] is None  # RLE annotations
    for got, ann in zip(polygons[:2], ANNS_IMAGE_1[:2], strict=True):
        assert len(got) == len(ann["segmentation"])
        for array, flat in zip(got, ann["segmentation"], strict=True):
            # integer JSON coordinates too: the LSJ transforms work in float
            assert array.dtype == np.float64
            assert array.shape == (len(flat) // 2, 2)
            np.testing.assert_array_equal(array[:, 0], flat[0::2])  # x
            np.testing.assert_array_equal(array[:, 1], flat[1::2])  # y


def test_coco_instance_mixed_int_and_str_image_ids_are_ordered(tmp_path: Path) -> None:
    # ids are whatever the JSON uses: a file mixing ints and strings still loads
    images = [_image(10), _image("b"), _image(2)]
    json_file = _write_coco(tmp_path, images, [{**ANNS_IMAGE_1[0], "image_id": "b"}])
    reader = CocoInstanceReader(json_file, tmp_path / "images", META)
    assert sorted(map(str, reader.image_ids)) == ["10", "2", "b"]
    assert [reader[i].image_id for i in range(3)] == reader.image_ids
    assert reader[reader.image_ids.index("b")].labels.tolist() == [0]
    # the order does not depend on the order of the JSON's list
    again = _write_coco(tmp_path / "again", images[::-1], [{**ANNS_IMAGE_1[0], "image_id": "b"}])
    assert CocoInstanceReader(again, tmp_path / "again" / "images", META).image_ids == (
        reader.image_ids
    )


# --- CocoInstanceReader: errors and warnings name the file ----------------------------------


def test_coco_instance_missing_json_names_what_and_where(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "instances_val2017.json"
    with pytest.raises(MissingDataError) as err:
        CocoInstanceReader(missing, tmp_path, META)
    assert str(err.value) == f"instance annotation file not found: {missing}"


def test_coco_instance_json_without_annotations_says_what_it_needs(tmp_path: Path) -> None:
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="instance annotation file needs 'images', 'annotations'"):
        CocoInstanceReader(json_file, tmp_path, META)


def test_coco_instance_category_name_mismatch_warns_naming_the_file(tmp_path: Path) -> None:
    json_file = _write_coco(
        tmp_path, [_image(1)], [], categories=[{"id": PERSON, "name": "pedestrian"}]
    )
    with pytest.warns(DataWarning) as record:
        CocoInstanceReader(json_file, tmp_path / "images", META)
    message = str(record[0].message)
    assert str(json_file) in message
    assert "'pedestrian'" in message and "'person'" in message


def test_coco_instance_categories_isthing_is_not_compared(tmp_path: Path) -> None:
    # an instance file lists things only: an `isthing: 0` there is no disagreement
    categories = [{"id": PERSON, "name": "person", "isthing": 0}]
    json_file = _write_coco(tmp_path, [_image(1)], [], categories=categories)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocoInstanceReader(json_file, tmp_path / "images", META)


def test_coco_instance_bad_annotation_error_names_the_file(tmp_path: Path) -> None:
    json_file = _one_image_file(tmp_path, [{**ANNS_IMAGE_1[0], "category_id": 999}])
    with pytest.raises(DataError) as err:
        CocoInstanceReader(json_file, tmp_path / "images", META)
    assert f"{json_file}: annotation id 11 (image id 1)" in str(err.value)
    assert "unknown category id 999" in str(err.value)


def test_coco_instance_image_size_mismatch_names_image_and_json(tmp_path: Path) -> None:
    json_file = _write_coco(tmp_path, [_image(1, actual_size=(H, W + 1))], [])
    reader = CocoInstanceReader(json_file, tmp_path / "images", META)
    image = tmp_path / "images" / "1.png"
    expected = f"{image} is {W + 1}x{H} but {json_file} says {W}x{H} (image id 1)"
    with pytest.raises(DataError, match=re.escape(expected)):
        reader[0]


def _short_rle() -> dict:
    """A compressed RLE of a 4x6 mask that claims to be H x W: pycocotools decodes it into
    24 real pixels and the rest from uninitialised memory, without an error."""
    rle = _compressed_rle(_box_mask(0, 0, 2, 3)[:4, :6])
    return {"size": [H, W], "counts": rle["counts"]}


@pytest.mark.parametrize(
    ("segmentation", "reason"),
    [
        ({"size": [H, W], "counts": [1, 2]}, f"RLE runs add up to 3 pixels, not {H}x{W}"),
        ({"size": [H, W], "counts": [H * W - 1, 1.0]}, "a list of integers"),
        ({"size": [H, W], "counts": [H * W + 2, -2]}, "a negative run length"),
        (_short_rle(), f"RLE runs add up to 24 pixels, not {H}x{W}"),
        ({"size": [H, W], "counts": "x"}, "has the character 'x'"),
    ],
)
def test_coco_instance_rle_runs_that_do_not_cover_the_image_are_refused(
    tmp_path: Path, segmentation: dict, reason: str
) -> None:
    bad = {**ANNS_IMAGE_1[2], "id": 42, "segmentation": segmentation}
    json_file = _one_image_file(tmp_path, [bad])
    with pytest.raises(DataError) as err:
        CocoInstanceReader(json_file, tmp_path / "images", META)
    message = str(err.value)
    assert f"{json_file}: annotation id 42 (image id 1): RLE 'counts': " in message
    assert reason in message


def test_coco_instance_rle_covering_the_image_in_either_form_is_accepted(tmp_path: Path) -> None:
    mask = _box_mask(2, 3, 7, 9)
    compressed = _compressed_rle(mask)
    flat = mask.flatten(order="F")  # COCO runs go down the columns, starting with 0s
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    anns = [
        {**ANNS_IMAGE_1[2], "id": 1, "segmentation": compressed},
        {**ANNS_IMAGE_1[2], "id": 2, "segmentation": {"size": [H, W], "counts": runs}},
    ]
    sample = CocoInstanceReader(_one_image_file(tmp_path, anns), tmp_path / "images", META)[0]
    np.testing.assert_array_equal(sample.masks, np.stack([mask, mask]))


@pytest.mark.parametrize(
    ("segmentation", "reason"),
    [
        ({"size": [H, W], "counts": [1, 2]}, f"RLE runs add up to 3 pixels, not {H}x{W}"),
        (_short_rle(), f"RLE runs add up to 24 pixels, not {H}x{W}"),
    ],
)
def test_annotation_masks_refuse_rle_runs_that_do_not_cover_the_image(
    tmp_path: Path, segmentation: dict, reason: str
) -> None:
    bad = {**ANNS_IMAGE_1[2], "id": 42, "segmentation": segmentation}
    coco = load_coco(_one_image_file(tmp_path, [bad]))
    expected = f"instances JSON (image id 1): annotation id 42: undecodable segmentation ({reason})"
    with pytest.raises(DataError, match=re.escape(expected)):
        annotation_masks(coco, 1, H, W, META, "instances JSON")


# --- annotation_masks (a panoptic dataset's instances JSON, for AP) -------------------------


def test_annotation_masks_match_pycocotools_ann_to_mask(tmp_path: Path) -> None:
    # an area (COCOeval's size buckets) on two of the annotations, none on the others
    areas = {12: 2000.5, 14: 0}
    json_file = _one_image_file(
        tmp_path, [{**a, "area": areas[a["id"]]} if a["id"] in areas else a for a in ANNS_IMAGE_1]
    )
    coco = load_coco(json_file)
    masks, labels, crowd, areas = annotation_masks(coco, 1, H, W, META, "instances JSON")
    reference = COCO(str(json_file))
    expected = np.stack([reference.annToMask(a) for a in reference.loadAnns([11, 12, 13, 14])])
    assert masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, expected)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 2, 0, 79]
    assert crowd.dtype == np.bool_ and crowd.tolist() == [False, False, True, False]
    assert areas.dtype == np.float64  # the JSON's area where given, NaN where not
    np.testing.assert_array_equal(areas, [np.nan, 2000.5, np.nan, 0.0])


def test_annotation_masks_image_without_annotations_gives_empty_typed_arrays(
    tmp_path: Path,
) -> None:
    json_file = _write_coco(tmp_path, [_image(1), _image(2)], [ANNS_IMAGE_1[0]])
    masks, labels, crowd, areas = annotation_masks(load_coco(json_file), 2, H, W, META, "x.json")
    assert masks.shape == (0, H, W) and masks.dtype == np.uint8
    assert areas.shape == (0,) and areas.dtype == np.float64
    assert labels.shape == (0,) and labels.dtype == np.int64
    assert crowd.shape == (0,) and crowd.dtype == np.bool_


def test_annotation_masks_unknown_category_names_the_source(tmp_path: Path) -> None:
    # pycocotools does not check category ids: the catalog lookup reports it
    json_file = _one_image_file(tmp_path, [{**ANNS_IMAGE_1[0], "category_id": 999}])
    coco = load_coco(json_file)
    with pytest.raises(ValueError, match="unknown category id 999 in instances JSON for"):
        annotation_masks(coco, 1, H, W, META, "instances JSON")
    # without a source, no dangling location
    with pytest.raises(ValueError, match="unknown category id 999 for dataset 'coco_instance'"):
        annotation_masks(coco, 1, H, W, META)


def test_annotation_masks_undecodable_rle_names_source_and_ids(tmp_path: Path) -> None:
    bad = {**ANNS_IMAGE_1[2], "id": 42, "segmentation": {"size": [H, W], "counts": [H * W + 5]}}
    coco = load_coco(_one_image_file(tmp_path, [bad]))
    expected = "instances JSON (image id 1): annotation id 42: undecodable segmentation"
    with pytest.raises(DataError, match=re.escape(expected)):
        annotation_masks(coco, 1, H, W, META, "instances JSON")


def test_load_coco_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = load_coco(_one_image_file(tmp_path))
    assert sorted(coco.anns) == [11, 12, 13, 14]
    assert capsys.readouterr().out == ""
