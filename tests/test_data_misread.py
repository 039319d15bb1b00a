"""Data that used to be misread without a word (issue 23, section 2), on real on-disk datasets
written by the synthetic writers and then altered: each case now stops with an error naming the
file and the ids, or warns with the count, and `m2f-doctor` reports it.

References: the 8-bit values a 16-bit image was widened from (v * 257), the ids and file names
the test itself writes into the files, and detectron2's "Removed N images with no usable
annotations. M images left." for the filtered training images.
"""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.classes import match_classes
from m2f_lightning.cli.doctor import doctor
from m2f_lightning.data import build_reader, metadata_for
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.data.targets import semantic_from_panoptic
from m2f_lightning.data.validation import DataWarning
from m2f_lightning.errors import ConfigError, DataError
from tests.helpers import compose

# panoptic readers warn that no instance JSON scores the AP: not what these tests are about
pytestmark = pytest.mark.filterwarnings("ignore:.*not found:UserWarning")

SIZE = (32, 40)


def _run_doctor(root: Path, tmp_path: Path, capsys, *overrides: str) -> tuple[int, str]:
    """m2f-doctor's exit code and what it printed."""
    cfg = compose("doctor", [f"paths.datasets_dir={root}", "workers=1", *overrides], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the doctor prints the data warnings itself
        code = doctor(cfg)
    return code, capsys.readouterr().out


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- 16-bit images: a fixed scale, not each image's own peak ---------------------------------


def test_16_bit_image_in_a_dataset_keeps_its_brightness_and_doctor_names_its_mode(
    tmp_path: Path, capsys
) -> None:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, size=SIZE)
    image = tmp_path / "coco" / "train2017" / "000000000001.jpg"
    dark = np.linspace(77, 190, SIZE[0] * SIZE[1]).round().astype(np.uint16).reshape(SIZE)
    Image.fromarray(dark * 257).save(image, format="PNG")  # 16-bit grey under the listed name
    sample = build_reader("coco", "panoptic", "train", tmp_path)[0]
    assert sample.file_name == str(image)
    np.testing.assert_array_equal(sample.image[..., 1], dark)  # 77..190, not 106..255
    code, out = _run_doctor(tmp_path, tmp_path, capsys, "dataset=coco", "task=panoptic")
    assert code == 0
    modes = next(line for line in out.splitlines() if "image modes:" in line)  # train's
    assert "I;16 (1)" in modes and "RGB (1)" in modes
    assert modes.endswith("; 16-bit grey images are read as value >> 8 (their high byte)")


def test_16_bit_image_holding_8_bit_values_is_named_by_doctor(tmp_path: Path, capsys) -> None:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, size=SIZE)
    image = tmp_path / "coco" / "val2017" / "000000000002.jpg"
    Image.fromarray(np.full(SIZE, 200, dtype=np.uint16)).save(image, format="PNG")
    code, out = _run_doctor(tmp_path, tmp_path, capsys, "dataset=coco", "task=panoptic")
    assert code == 0
    assert re.search(
        rf"warning \[val\]: {re.escape(str(image))}: 16-bit \(I;16\) grey image whose values are "
        r"all below 256 \(peak 200\)",
        out,
    )


# --- the same image listed twice in one JSON -------------------------------------------------


def _list_image_again(data: dict, file_name: str, new_id: int, panoptic: bool) -> None:
    """A second `images` entry (id `new_id`, file `file_name`) for the first image, with a copy
    of its annotation(s) under the new id, as a merged or hand-edited JSON has."""
    first = data["images"][0]
    data["images"].append({**first, "id": new_id, "file_name": file_name})
    if panoptic:
        ann = next(a for a in data["annotations"] if a["image_id"] == first["id"])
        data["annotations"].append({**ann, "image_id": new_id})
    else:
        top = max(a["id"] for a in data["annotations"])
        copies = [a for a in data["annotations"] if a["image_id"] == first["id"]]
        data["annotations"] += [
            {**a, "id": top + k + 1, "image_id": new_id} for k, a in enumerate(copies)
        ]


@pytest.mark.parametrize("spelling", ["{}", "./{}", "sub/../{}"])
def test_coco_panoptic_image_listed_twice_is_an_error_naming_file_and_ids(
    tmp_path: Path, spelling: str, capsys
) -> None:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, size=SIZE)
    path = tmp_path / "coco" / "annotations" / "panoptic_train2017.json"
    _edit_json(
        path, lambda d: _list_image_again(d, spelling.format(d["images"][0]["file_name"]), 77, True)
    )
    with pytest.raises(DataError) as err:
        build_reader("coco", "panoptic", "train", tmp_path)
    message = (
        f"{path}: image file '{spelling.format('000000000001.jpg')}' is listed twice, as image "
        "id 1 ('000000000001.jpg') and image id 77"
    )
    assert any(p.startswith(message) for p in err.value.problems)
    code, out = _run_doctor(tmp_path, tmp_path, capsys, "dataset=coco", "task=panoptic")
    assert code == 1 and f"problem [train]: {message}" in out


def test_coco_instance_image_listed_twice_is_an_error_naming_file_and_ids(
    tmp_path: Path, capsys
) -> None:
    write_dataset("coco_instance", tmp_path, num=2, num_val=2, size=SIZE)
    path = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    _edit_json(path, lambda d: _list_image_again(d, "./000000000001.jpg", 5, False))
    with pytest.raises(DataError) as err:
        build_reader("coco", "instance", "val", tmp_path)
    message = (
        f"{path}: image file './000000000001.jpg' is listed twice, as image id 1 "
        "('000000000001.jpg') and image id 5"
    )
    assert any(p.startswith(message) for p in err.value.problems)
    code, out = _run_doctor(tmp_path, tmp_path, capsys, "dataset=coco", "task=instance")
    assert code == 1 and f"problem [val]: {message}" in out


def _custom(fmt: str, annotations: str, task: str) -> list[str]:
    """Doctor overrides of a custom dataset laid out as the synthetic COCO one."""
    split = (
        "{{images: coco/{s}2017, annotations: coco/annotations/"
        + annotations
        + "_{s}2017.json, panoptic: coco/panoptic_{s}2017}}"
    )
    return [
        "dataset=custom",
        f"task={task}",
        f"dataset.source.format={fmt}",
        "dataset.source.train=" + split.format(s="train"),
        "dataset.source.val=" + split.format(s="val"),
    ]


@pytest.mark.parametrize(
    ("fmt", "annotations", "task"),
    [("coco_panoptic", "panoptic", "panoptic"), ("coco_instance", "instances", "instance")],
)
def test_custom_dataset_image_listed_twice_is_an_error_naming_file_and_ids(
    tmp_path: Path, fmt: str, annotations: str, task: str, capsys
) -> None:
    write_dataset(fmt, tmp_path, num=2, num_val=2, size=SIZE)
    path = tmp_path / "coco" / "annotations" / f"{annotations}_train2017.json"
    _edit_json(path, lambda d: _list_image_again(d, "000000000001.jpg", 9, fmt == "coco_panoptic"))
    code, out = _run_doctor(tmp_path, tmp_path, capsys, *_custom(fmt, annotations, task))
    assert code == 1
    assert (
        f"problem [train]: {path}: image file '000000000001.jpg' is listed twice, as image id 1 "
        "('000000000001.jpg') and image id 9" in out
    )


def test_one_panoptic_png_for_two_images_is_an_error_naming_both_ids(tmp_path: Path) -> None:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, size=SIZE)
    path = tmp_path / "coco" / "annotations" / "panoptic_val2017.json"

    def point_second_at_first_png(data: dict) -> None:
        data["annotations"][1]["file_name"] = "./" + data["annotations"][0]["file_name"]

    _edit_json(path, point_second_at_first_png)
    with pytest.raises(DataError) as err:
        build_reader("coco", "panoptic", "val", tmp_path)
    assert (
        f"{path}: annotation of image id 2 (./000000000001.png): its PNG is also the annotation "
        "of image id 1" in err.value.problems
    )


# --- training images without annotations: counted --------------------------------------------


def test_instance_training_says_how_many_empty_images_it_removed(tmp_path: Path, capsys) -> None:
    write_dataset("coco_instance", tmp_path, num=3, num_val=2, size=SIZE, num_shapes=(2, 3))
    path = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    _edit_json(
        path, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 2])
    )
    message = (
        f"{path}: removed 1 of 3 training images with no usable (non-crowd) annotations, as "
        "detectron2's FILTER_EMPTY_ANNOTATIONS does; 2 images left"
    )
    with pytest.warns(DataWarning, match=re.escape(message)):
        reader = build_reader("coco", "instance", "train", tmp_path)
    assert len(reader) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # validation keeps every image: no warning
        assert len(build_reader("coco", "instance", "val", tmp_path)) == 2
    code, out = _run_doctor(tmp_path, tmp_path, capsys, "dataset=coco", "task=instance")
    assert code == 0 and f"warning [train]: {message}" in out


# --- duplicate class names (and ids) of a custom dataset -------------------------------------


@pytest.mark.parametrize(
    "spelling", [str, str.upper, lambda name: f"{name} "], ids=["same", "upper", "space"]
)
def test_custom_category_renamed_to_an_existing_name_is_refused_naming_both_ids(
    tmp_path: Path, spelling, capsys
) -> None:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, size=SIZE)
    path = tmp_path / "coco" / "annotations" / "panoptic_train2017.json"
    data = json.loads(path.read_text())
    first, renamed = data["categories"][0], data["categories"][5]
    renamed["name"] = name = spelling(first["name"])
    path.write_text(json.dumps(data))
    message = (
        f"the categories of {path}: ids {first['id']} ({first['name']!r}) and {renamed['id']} "
        f"({name!r}) have the same class name"
    )
    source = {"format": "coco_panoptic", "train": {"annotations": str(path)}}
    with pytest.raises(DataError, match=re.escape(message)):
        metadata_for("custom", "panoptic", source, tmp_path)
    with pytest.raises(DataError, match=re.escape(message)):  # the CLI's one `error:` line
        _run_doctor(tmp_path, tmp_path, capsys, *_custom("coco_panoptic", "panoptic", "panoptic"))


def test_custom_category_id_listed_twice_is_refused(tmp_path: Path) -> None:
    write_dataset("coco_instance", tmp_path, num=2, num_val=2, size=SIZE)
    path = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    _edit_json(
        path, lambda d: d["categories"].append({"id": d["categories"][0]["id"], "name": "blob"})
    )
    first = json.loads(path.read_text())["categories"][0]
    source = {"format": "coco_instance", "train": {"annotations": str(path)}}
    with pytest.raises(
        DataError,
        match=re.escape(f"id {first['id']} is listed twice ({first['name']!r} and 'blob')"),
    ):
        metadata_for("custom", "instance", source, tmp_path)


def test_semantic_png_classes_with_a_name_twice_are_refused_naming_both_values(
    tmp_path: Path,
) -> None:
    source = {"format": "semantic_png", "classes": ["sky", "ground", "Sky"]}
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "dataset.source.classes: values 0 ('sky') and 2 ('Sky') have the same class name"
        ),
    ):
        metadata_for("custom", "semantic", source, tmp_path)


def test_class_map_onto_a_name_the_dataset_has_warns_naming_both_classes() -> None:
    with pytest.warns(
        UserWarning,
        match=re.escape(
            "class_map: dataset classes 0 ('car') and 1 ('auto') start from the checkpoint's "
            "class 0 ('car')"
        ),
    ):
        assert match_classes(["car", "auto", "sky"], ["car", "sky"], {"auto": "car"}) == {
            0: 0,
            1: 0,
            2: 1,
        }


# --- values checked before they are narrowed to uint8 ----------------------------------------


def _put_16_bit(path: Path, value: int) -> None:
    """Rewrite the label PNG at `path` as 16-bit with `value` in its first pixel."""
    labels = np.asarray(Image.open(path)).astype(np.uint16)
    labels[0, 0] = value
    Image.fromarray(labels).save(path)
    assert np.asarray(Image.open(path))[0, 0] == value


def test_cityscapes_train_id_past_255_is_named_not_wrapped(tmp_path: Path, capsys) -> None:
    write_dataset("cityscapes", tmp_path, num=2, num_val=2, size=SIZE)
    label = sorted((tmp_path / "cityscapes" / "gtFine" / "train").glob("*/*_labelTrainIds.png"))[0]
    _put_16_bit(label, 256 + 5)  # narrowed to uint8: 5, a valid class (wall)
    with pytest.raises(DataError, match=re.escape(f"{label}: unknown class ids [261]")):
        build_reader("cityscapes", "semantic", "train", tmp_path)[0]
    code, out = _run_doctor(tmp_path, tmp_path, capsys, "dataset=cityscapes", "task=semantic")
    assert code == 1 and f"problem [train]: {label}: unknown class ids [261]" in out


@pytest.mark.parametrize("raw", [256, 257])  # shifted and narrowed: 255 (ignore), 0 (wall)
def test_ade20k_raw_label_past_255_is_named_not_wrapped(tmp_path: Path, raw: int) -> None:
    write_dataset("ade20k", tmp_path, num=2, num_val=2, size=SIZE)
    label = (
        tmp_path / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000001.png"
    )
    _put_16_bit(label, raw)
    with pytest.raises(DataError, match=re.escape(f"{label}: unknown class ids [256]")):
        build_reader("ade20k", "semantic", "train", tmp_path)[0]


def test_mapillary_label_past_255_is_named_not_wrapped(tmp_path: Path) -> None:
    write_dataset("mapillary", tmp_path, num=2, num_val=2, size=SIZE)
    label = tmp_path / "mapillary_vistas" / "training" / "labels" / "mtrain00000.png"
    _put_16_bit(label, 256 + 3)  # narrowed to uint8: 3, a valid class
    with pytest.raises(DataError, match=re.escape(f"{label}: unknown class ids [259]")):
        build_reader("mapillary_vistas", "semantic", "train", tmp_path)[0]


def test_ade20k_panoptic_semantic_png_past_255_is_named_not_wrapped(tmp_path: Path) -> None:
    write_dataset("ade20k", tmp_path, num=2, num_val=2, size=SIZE)
    root = tmp_path / "ADEChallengeData2016"
    prepared = root / "annotations_detectron2" / "validation"
    prepared.mkdir(parents=True)
    for raw in sorted((root / "annotations" / "validation").glob("*.png")):
        Image.fromarray(np.zeros(SIZE, dtype=np.uint8)).save(prepared / raw.name)
    label = prepared / "ADE_val_00000001.png"
    _put_16_bit(label, 256 + 4)  # narrowed to uint8: 4, a valid class
    with pytest.raises(DataError, match=re.escape(f"{label}: unknown class ids [260]")):
        build_reader("ade20k", "panoptic", "val", tmp_path)[0]


def test_class_id_255_of_a_panoptic_segment_is_not_made_void() -> None:
    id_map = np.array([[1, 2]])
    segments = [{"id": 1, "category": 3}, {"id": 2, "category": 255}]
    with pytest.raises(DataError, match=re.escape("scene.png: class ids [255] do not fit")):
        semantic_from_panoptic(id_map, segments, "scene.png")
