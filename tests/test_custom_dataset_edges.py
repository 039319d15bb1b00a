"""`dataset=custom` edges: the classes read from the user's files, the overlay palette, which
reader each format/task/split entry gets, and errors naming the key or file to fix."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.data import build_reader, metadata_for
from m2f_lightning.data.datasets.custom import custom_metadata, palette
from m2f_lightning.data.datasets.instance import CocoInstanceReader
from m2f_lightning.data.datasets.panoptic import PanopticReader
from m2f_lightning.data.datasets.semantic import SemanticReader
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.errors import ConfigError
from tests.helpers import coco_custom_source

# the panoptic-format tests below have no instances JSON for the panoptic task on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*not found:UserWarning")


def _categories_json(path: Path, categories: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    return path


# --- palette --------------------------------------------------------------------------------


def _hue_saturation_value(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """The textbook RGB -> HSV formulas (hue in turns)."""
    r, g, b = (c / 255 for c in rgb)
    hi, lo = max(r, g, b), min(r, g, b)
    d = hi - lo
    if hi == r:
        h = ((g - b) / d) % 6
    elif hi == g:
        h = (b - r) / d + 2
    else:
        h = (r - g) / d + 4
    return h / 6, d / hi, hi


def test_palette_colours_are_8_bit_saturated_golden_ratio_hues() -> None:
    colors = palette(40)
    assert len(colors) == 40 and len(set(colors)) == 40
    golden = (math.sqrt(5) - 1) / 2
    for i, rgb in enumerate(colors):
        assert isinstance(rgb, tuple) and all(isinstance(c, int) for c in rgb)
        # value 0.95 and saturation 0.75, truncated to 8 bits: max 242, min 0.95 * 0.25 * 255
        assert max(rgb) == int(0.95 * 255) == 242
        assert min(rgb) == int(0.95 * 0.25 * 255) == 60
        hue, saturation, value = _hue_saturation_value(rgb)
        assert saturation == pytest.approx(0.75, abs=0.01)
        assert value == pytest.approx(0.95, abs=0.005)
        expected = (i * golden) % 1.0
        assert min(abs(hue - expected), 1 - abs(hue - expected)) < 0.01, i


def test_first_palette_colours_are_the_hsv_conversions() -> None:
    # hue 0 is red: (V, V(1-S), V(1-S)); hue 0.618 lies between blue (2/3) and cyan (1/2)
    assert palette(1) == [(242, 60, 60)]
    assert palette(0) == []
    r, g, b = palette(2)[1]
    assert b == 242 and r == 60 and 60 < g < 242


# --- metadata from the user's files ---------------------------------------------------------


def test_semantic_png_classes_are_label_values_all_stuff(tmp_path: Path) -> None:
    source = {"format": "semantic_png", "classes": ["sky", "road", "car"]}
    meta = custom_metadata(source, "semantic", tmp_path)
    assert meta.name == "custom"
    assert meta.class_names == ["sky", "road", "car"]
    assert meta.dataset_ids == [0, 1, 2]
    assert meta.is_thing == [False, False, False] and meta.thing_ids == []
    assert meta.contiguous_id(2) == 2
    assert meta.colors == palette(3)


def test_json_categories_give_names_ids_and_thing_flags(tmp_path: Path) -> None:
    categories = [
        {"id": 7, "name": "tree", "isthing": 0},
        {"id": 3, "name": "dog", "isthing": 1},
        {"id": 12, "name": "lamp"},  # COCO instance files carry no isthing: a thing
    ]
    _categories_json(tmp_path / "mine" / "pan_train.json", categories)
    source = {"format": "coco_panoptic", "train": {"annotations": "mine/pan_train.json"}}
    meta = metadata_for("custom", "panoptic", source, tmp_path)
    assert meta.name == "custom"
    assert meta.class_names == ["tree", "dog", "lamp"]
    assert meta.dataset_ids == [7, 3, 12]
    assert meta.is_thing == [False, True, True]
    assert meta.thing_ids == [1, 2] and meta.stuff_ids == [0]
    assert meta.colors == palette(3)
    with pytest.raises(ValueError, match="for dataset 'custom'"):
        meta.contiguous_id(99)


def test_instance_json_without_isthing_makes_every_class_a_thing(tmp_path: Path) -> None:
    path = _categories_json(
        tmp_path / "ins_train.json", [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    )
    source = {"format": "coco_instance", "train": {"annotations": str(path)}}
    meta = custom_metadata(source, "instance", tmp_path / "unused_root")
    assert meta.is_thing == [True, True]
    assert meta.class_names == ["a", "b"] and meta.dataset_ids == [1, 2]


def test_missing_train_annotations_entry_names_the_key(tmp_path: Path) -> None:
    source = {"format": "coco_panoptic", "train": {"images": "x"}}
    with pytest.raises(ConfigError, match=r"dataset\.source\.train\.annotations is not set"):
        custom_metadata(source, "panoptic", tmp_path)


# --- which reader each split gets -----------------------------------------------------------


@pytest.fixture
def coco_both(tmp_path: Path) -> Path:
    # the same seed draws the same scenes: the instance JSON describes the panoptic images
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, seed=4, size=(32, 40))
    write_dataset("coco_instance", tmp_path, num=2, num_val=2, seed=4, size=(32, 40))
    return tmp_path


def _panoptic_source(**val_extra: str) -> dict:
    source = coco_custom_source("coco_panoptic", "panoptic")
    source["val"].update(val_extra)
    return source


def test_panoptic_format_instance_task_reads_the_panoptic_pngs(coco_both: Path) -> None:
    reader = build_reader("custom", "instance", "val", coco_both, _panoptic_source())
    assert isinstance(reader, PanopticReader)
    assert len(reader) == 2


def test_panoptic_format_val_split_without_pngs_reads_an_instances_json(
    coco_both: Path,
) -> None:
    source = _panoptic_source(annotations="coco/annotations/instances_val2017.json")
    del source["val"]["panoptic"]
    reader = build_reader("custom", "instance", "val", coco_both, source)
    assert isinstance(reader, CocoInstanceReader)
    assert len(reader) == 2
    assert Path(reader[0].file_name).parent == coco_both / "coco" / "val2017"
    # the panoptic task has no such fallback: it needs the PNG folder, and says which key
    with pytest.raises(ConfigError, match=r"dataset\.source\.val\.panoptic is not set"):
        build_reader("custom", "panoptic", "val", coco_both, source)


def test_coco_instance_format_ignores_a_stray_panoptic_entry(coco_both: Path) -> None:
    source = coco_custom_source("coco_instance", "instances")
    reader = build_reader("custom", "instance", "val", coco_both, source)
    assert isinstance(reader, CocoInstanceReader)
    assert len(reader) == 2


def test_semantic_png_split_reads_image_and_label_pairs(tmp_path: Path) -> None:
    label = np.zeros((8, 10), dtype=np.uint8)
    label[4:, :] = 1
    label[0, 0] = 255
    for split in ("train", "val"):
        (tmp_path / "sem" / split / "img").mkdir(parents=True)
        (tmp_path / "sem" / split / "lbl").mkdir(parents=True)
        Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(
            tmp_path / "sem" / split / "img" / "a.jpg"
        )
        Image.fromarray(label).save(tmp_path / "sem" / split / "lbl" / "a.png")
    source = {
        "format": "semantic_png",
        "classes": ["sky", "road"],
        "train": {"images": "sem/train/img", "labels": "sem/train/lbl"},
        "val": {"images": str(tmp_path / "sem" / "val" / "img"), "labels": "sem/val/lbl"},
    }
    reader = build_reader("custom", "semantic", "val", tmp_path, source)
    assert isinstance(reader, SemanticReader)
    assert len(reader) == 1
    assert reader[0].file_name == str(tmp_path / "sem" / "val" / "img" / "a.jpg")
    del source["val"]["labels"]
    with pytest.raises(ConfigError, match=r"dataset\.source\.val\.labels is not set"):
        build_reader("custom", "semantic", "val", tmp_path, source)
