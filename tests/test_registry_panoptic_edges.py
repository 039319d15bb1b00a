"""Edge cases of the dataset registry (which reader, which files of each dataset's official
layout, which catalog) and of the COCO-panoptic reader, written from surviving mutants.

Expected values come from the official layouts and formats (Mask2Former's `datasets/README.md`,
COCO panoptic's `id = R + 256*G + 256^2*B`), worked out here from the raw files on disk.
"""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.data import build_reader, metadata_for
from m2f_lightning.data.catalog import get_metadata
from m2f_lightning.data.datasets.registry import DATASETS, check_task, datasets_root
from m2f_lightning.data.datasets.semantic import SemanticReader
from m2f_lightning.data.io import DataError
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.data.validation import DataWarning
from m2f_lightning.errors import ConfigError, MissingDataError
from tests.helpers import coco_custom_source

# the COCO panoptic tests below have no instances JSON on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*instances_val2017.json not found:UserWarning")


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- catalogs and root ---------------------------------------------------------------------


def test_class_counts_of_each_dataset_and_task_are_the_official_ones() -> None:
    # COCO: 133 panoptic / 80 instance; ADE20K: 150 / 100 things; Cityscapes 19 / 8 things;
    # Mapillary Vistas v1.2: 65
    expected = {
        ("coco", "panoptic"): 133,
        ("coco", "semantic"): 133,
        ("coco", "instance"): 80,
        ("ade20k", "semantic"): 150,
        ("ade20k", "panoptic"): 150,
        ("ade20k", "instance"): 100,
        ("cityscapes", "semantic"): 19,
        ("cityscapes", "instance"): 8,
        ("mapillary_vistas", "panoptic"): 65,
    }
    for (dataset, task), count in expected.items():
        assert metadata_for(dataset, task).num_classes == count, (dataset, task)
        assert DATASETS[dataset].metadata(task).num_classes == count, (dataset, task)


def test_datasets_root_is_argument_then_environment_then_dot_datasets(monkeypatch) -> None:
    monkeypatch.delenv("M2F_DATASETS", raising=False)
    assert datasets_root() == Path("datasets")
    monkeypatch.setenv("M2F_DATASETS", "/data/sets")
    assert datasets_root() == Path("/data/sets")
    assert datasets_root("~/mine") == Path.home() / "mine"


# --- custom datasets through the registry --------------------------------------------------


def test_custom_tasks_follow_the_source_format() -> None:
    check_task("custom", "semantic", {"format": "semantic_png"})
    with pytest.raises(ConfigError, match=r"'custom' has no annotations for task 'panoptic'"):
        check_task("custom", "panoptic", {"format": "semantic_png"})
    meta = metadata_for("custom", "semantic", {"format": "semantic_png", "classes": ["sky", "x"]})
    assert meta.class_names == ["sky", "x"]


def test_custom_coco_panoptic_paths_are_relative_to_the_given_root(
    tmp_path: Path, monkeypatch
) -> None:
    root = tmp_path / "data"
    write_dataset("coco_panoptic", root, num=2, num_val=2, seed=2, size=(32, 40))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no ./datasets here: the root must come from the argument
    monkeypatch.delenv("M2F_DATASETS", raising=False)
    source = coco_custom_source("coco_panoptic", "panoptic")
    reader = build_reader("custom", "panoptic", "val", root, source)
    data = json.loads((root / "coco" / "annotations" / "panoptic_train2017.json").read_text())
    assert reader.metadata.class_names == [c["name"] for c in data["categories"]]
    assert len(reader) == 2
    sample = reader[0]
    assert sample.file_name == str(root / "coco" / "val2017" / "000000000001.jpg")


# --- ADE20K --------------------------------------------------------------------------------


@pytest.fixture
def ade(tmp_path: Path) -> Path:
    write_dataset("ade20k", tmp_path, num=3, num_val=2, seed=8, size=(32, 48))
    return tmp_path


def _ade_dir(root: Path) -> Path:
    return root / "ADEChallengeData2016"


def test_ade20k_semantic_shifts_the_raw_annotations(ade: Path) -> None:
    reader = build_reader("ade20k", "semantic", "val", ade)
    assert isinstance(reader, SemanticReader)
    sample = reader[0]
    name = Path(sample.file_name).with_suffix(".png").name
    raw = np.asarray(Image.open(_ade_dir(ade) / "annotations" / "validation" / name))
    # the official prepare_ade20k_sem_seg.py: 0 ("other") → 255, class k → k - 1
    expected = np.where(raw == 0, 255, raw.astype(int) - 1)
    assert (raw == 0).any() and (raw > 0).any()
    np.testing.assert_array_equal(sample.sem_seg, expected)


def _write_prepared(root: Path, folder: str, seed: int) -> dict[str, np.ndarray]:
    """annotations_detectron2 PNGs of arbitrary content (so that they differ from the raw ones)."""
    rng = np.random.default_rng(seed)
    out = {}
    for image in sorted((_ade_dir(root) / "images" / folder).glob("*.jpg")):
        h, w = np.asarray(Image.open(image)).shape[:2]
        labels = rng.integers(0, 150, (h, w), dtype=np.uint8)
        labels[0] = 255
        png = image.with_suffix(".png").name
        _save(_ade_dir(root) / "annotations_detectron2" / folder / png, labels)
        out[png] = labels
    return out


def test_ade20k_semantic_reads_prepared_annotations_as_they_are(ade: Path) -> None:
    prepared = _write_prepared(ade, "validation", seed=0)
    reader = build_reader("ade20k", "semantic", "val", ade)
    assert len(reader) == len(prepared) == 2
    for i in range(len(reader)):
        sample = reader[i]
        expected = prepared[Path(sample.file_name).with_suffix(".png").name]
        np.testing.assert_array_equal(sample.sem_seg, expected)


def test_ade20k_panoptic_val_scores_miou_against_the_prepared_semantic_pngs(ade: Path) -> None:
    without = build_reader("ade20k", "panoptic", "val", ade)
    assert without[0].sem_seg is None  # no annotations_detectron2: no semantic ground truth
    prepared = _write_prepared(ade, "validation", seed=1)
    _write_prepared(ade, "training", seed=2)
    val = build_reader("ade20k", "panoptic", "val", ade)
    for i in range(len(val)):
        sample = val[i]
        assert sample.id_map is not None
        assert sample.sem_seg is not None and sample.sem_seg.dtype == np.uint8
        expected = prepared[Path(sample.file_name).with_suffix(".png").name]
        np.testing.assert_array_equal(sample.sem_seg, expected)
    train = build_reader("ade20k", "panoptic", "train", ade)
    assert all(train[i].sem_seg is None for i in range(len(train)))  # an evaluation-only input


def test_ade20k_panoptic_semantic_png_of_another_size_names_both_files(ade: Path) -> None:
    _write_prepared(ade, "validation", seed=1)
    png = _ade_dir(ade) / "annotations_detectron2" / "validation" / "ADE_val_00000001.png"
    _save(png, np.zeros((30, 48), dtype=np.uint8))
    image = _ade_dir(ade) / "images" / "validation" / "ADE_val_00000001.jpg"
    with pytest.raises(DataError) as err:
        build_reader("ade20k", "panoptic", "val", ade)[0]
    assert str(png) in str(err.value) and str(image) in str(err.value)


def test_ade20k_instance_train_filters_images_without_things(tmp_path: Path) -> None:
    write_dataset("ade20k", tmp_path, num=8, num_val=4, seed=1, size=(32, 48), num_shapes=(0, 1))
    for split in ("train", "val"):
        data = json.loads((_ade_dir(tmp_path) / f"ade20k_instance_{split}.json").read_text())
        with_things = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
        reader = build_reader("ade20k", "instance", split, tmp_path)
        if split == "train":
            assert len(with_things) < len(data["images"])  # the test needs an empty image
            assert sorted(reader.image_ids) == sorted(with_things)
        else:
            assert len(reader) == len(data["images"])


def test_ade20k_panoptic_val_scores_ap_against_the_instance_json(ade: Path) -> None:
    data = json.loads((_ade_dir(ade) / "ade20k_instance_val.json").read_text())
    reader = build_reader("ade20k", "panoptic", "val", ade)
    sample = reader[0]
    assert sample.eval_instances is not None
    masks, labels, crowd, areas = sample.eval_instances
    expected = [a for a in data["annotations"] if a["image_id"] == sample.image_id]
    assert len(masks) == len(labels) == len(crowd) == len(expected) > 0
    assert areas.tolist() == [a["area"] for a in expected]  # COCOeval's size buckets
    assert crowd.tolist() == [bool(a["iscrowd"]) for a in expected]
    train = build_reader("ade20k", "panoptic", "train", ade)
    assert train[0].eval_instances is None  # AP is a val-only score
    (_ade_dir(ade) / "ade20k_instance_val.json").unlink()
    with pytest.warns(
        UserWarning, match=r"ade20k_instance_val\.json not found.*this ADE20K panoptic"
    ):
        missing = build_reader("ade20k", "panoptic", "val", ade)
    assert missing[0].eval_instances is None


def test_ade20k_panoptic_image_entry_named_png_reads_the_jpg(ade: Path) -> None:
    json_file = _ade_dir(ade) / "ade20k_panoptic_train.json"

    def rename(data):
        for info in data["images"]:
            info["file_name"] = info["file_name"].replace(".jpg", ".png")

    _edit_json(json_file, rename)
    sample = build_reader("ade20k", "panoptic", "train", ade)[0]
    expected = _ade_dir(ade) / "images" / "training" / "ADE_train_00000001.jpg"
    assert sample.file_name == str(expected)
    np.testing.assert_array_equal(sample.image, np.asarray(Image.open(expected).convert("RGB")))


# --- Mapillary Vistas ----------------------------------------------------------------------


def test_mapillary_ignore_value_comes_from_the_catalog_default_65(tmp_path: Path) -> None:
    write_dataset("mapillary", tmp_path, num=2, num_val=2, seed=3, size=(32, 48))
    folder = tmp_path / "mapillary_vistas"
    png = folder / "validation" / "labels" / "mval00000.png"
    raw = np.asarray(Image.open(png))
    assert (raw == 65).any()
    expected = np.where(raw == 65, 255, raw)
    catalog = get_metadata("mapillary_vistas")
    assert catalog.extra["file_ignore_label"] == 65  # v1.2: 65 = "unlabeled"
    build = DATASETS["mapillary_vistas"].build_reader
    # a catalog that says nothing: v1.2's 65
    silent = dataclasses.replace(catalog, extra={})
    np.testing.assert_array_equal(build(folder, "semantic", "val", silent)[0].sem_seg, expected)
    # another release stores "unlabeled" as another value: the catalog says which
    value = next(v for v in range(65) if not (raw == v).any())
    _save(png, np.where(raw == 65, value, raw).astype(np.uint8))
    other = dataclasses.replace(catalog, extra={"file_ignore_label": value})
    np.testing.assert_array_equal(build(folder, "semantic", "val", other)[0].sem_seg, expected)


# --- the COCO panoptic reader --------------------------------------------------------------


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, seed=3, size=(32, 40))
    return tmp_path


def _panoptic_json(root: Path) -> Path:
    return root / "coco" / "annotations" / "panoptic_val2017.json"


def _png(root: Path) -> Path:
    return root / "coco" / "panoptic_val2017" / "000000000001.png"


def test_missing_panoptic_json_is_named_as_such(coco: Path) -> None:
    _panoptic_json(coco).unlink()
    with pytest.raises(MissingDataError, match=r"panoptic annotation file not found: .*val2017"):
        build_reader("coco", "panoptic", "val", coco)


def test_categories_renamed_in_the_json_warn_naming_the_file(coco: Path) -> None:
    def rename(data):
        data["categories"][0]["name"] = "not-a-person"

    _edit_json(_panoptic_json(coco), rename)
    with pytest.warns(DataWarning) as record:
        reader = build_reader("coco", "panoptic", "val", coco)
    message = "\n".join(str(w.message) for w in record)
    assert str(_panoptic_json(coco)) in message
    assert "'not-a-person' in the file, 'person' in the catalog" in message
    assert reader.metadata.class_names[0] == "person"  # the catalog decides


def test_segment_id_mismatches_name_the_png_and_the_json(coco: Path) -> None:
    def add(data):
        data["annotations"][0]["segments_info"].append({"id": 4242, "category_id": 1})

    _edit_json(_panoptic_json(coco), add)
    with pytest.raises(DataError) as err:
        build_reader("coco", "panoptic", "val", coco)[0]
    assert str(_png(coco)) in str(err.value) and str(_panoptic_json(coco)) in str(err.value)

    def drop(data):
        data["annotations"][0]["segments_info"] = data["annotations"][0]["segments_info"][:-2]

    _edit_json(_panoptic_json(coco), drop)
    with pytest.raises(DataError, match="in the PNG are not listed") as err:
        build_reader("coco", "panoptic", "val", coco)[0]
    assert str(_png(coco)) in str(err.value) and str(_panoptic_json(coco)) in str(err.value)


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_panoptic_png_without_rgb_channels_is_named(coco: Path, mode: str) -> None:
    Image.open(_png(coco)).convert(mode).save(_png(coco))
    with pytest.raises(DataError, match="must be RGB-encoded ids") as err:
        build_reader("coco", "panoptic", "val", coco)[0]
    assert str(_png(coco)) in str(err.value)


def test_id_map_is_r_plus_256_g_plus_65536_b_as_int32(coco: Path) -> None:
    # three segments whose ids need all of R, G and B
    ids = [(7, 0, 0), (1, 2, 0), (3, 4, 5)]
    rgb = np.zeros((32, 40, 3), dtype=np.uint8)
    rgb[:10] = ids[0]
    rgb[10:20] = ids[1]
    rgb[20:] = ids[2]
    _save(_png(coco), rgb)
    expected = [r + 256 * g + 65536 * b for r, g, b in ids]  # 7, 513, 328707

    def segments(data):
        data["annotations"][0]["segments_info"] = [
            {"id": expected[0], "category_id": 1, "iscrowd": 1},
            {"id": expected[1], "category_id": 1},  # no iscrowd: not a crowd
            {"id": expected[2], "category_id": 1, "iscrowd": 0},
        ]

    _edit_json(_panoptic_json(coco), segments)
    sample = build_reader("coco", "panoptic", "val", coco)[0]
    assert sample.id_map.dtype == np.int32
    assert sample.id_map[0, 0] == 7 and sample.id_map[15, 0] == 513
    assert sample.id_map[25, 0] == 328707
    assert [s["id"] for s in sample.segments] == expected
    assert [s["iscrowd"] for s in sample.segments] == [True, False, False]


# --- the instances JSON a panoptic model's AP is scored against ----------------------------


@pytest.fixture
def coco_both(tmp_path: Path) -> Path:
    # the same seed draws the same scenes: the instance JSON describes the panoptic images
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, seed=4, size=(32, 40))
    write_dataset("coco_instance", tmp_path, num=2, num_val=2, seed=4, size=(32, 40))
    return tmp_path


def _instances_json(root: Path) -> Path:
    return root / "coco" / "annotations" / "instances_val2017.json"


def test_unknown_category_in_the_instances_json_names_it(coco_both: Path) -> None:
    def unknown(data):
        for ann in data["annotations"]:
            ann["category_id"] = 12  # not a COCO id

    _edit_json(_instances_json(coco_both), unknown)
    with pytest.raises(ValueError, match="unknown category id 12") as err:
        build_reader("coco", "panoptic", "val", coco_both)[0]
    assert str(_instances_json(coco_both)) in str(err.value)


def test_undecodable_instance_segmentation_names_the_instances_json(coco_both: Path) -> None:
    def broken(data):
        for ann in data["annotations"]:
            ann["segmentation"] = {"size": [32, 40]}  # an RLE without counts

    _edit_json(_instances_json(coco_both), broken)
    with pytest.raises(DataError, match="undecodable segmentation") as err:
        build_reader("coco", "panoptic", "val", coco_both)[0]
    assert re.search(
        re.escape(str(_instances_json(coco_both))) + r" \(image id 1\)", str(err.value)
    )


def test_image_missing_from_the_instances_json_names_it(coco_both: Path) -> None:
    def drop(data):
        data["images"] = [i for i in data["images"] if i["id"] != 1]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]

    _edit_json(_instances_json(coco_both), drop)
    with pytest.raises(DataError, match="image id 1 is not in") as err:
        build_reader("coco", "panoptic", "val", coco_both)[0]
    assert str(_instances_json(coco_both)) in str(err.value)
