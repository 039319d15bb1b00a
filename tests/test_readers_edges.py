"""Edge cases of the dataset readers, written from the surviving mutants of
`make mutate MODULE=readers` (see SURVIVORS_READERS_TRIAGE.md).

Inputs are tiny hand-made PNG/JSON files, or the synthetic writer's real on-disk layouts; the
expected values are worked out here from the raw files, never taken from the code under test.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.data import build_reader
from m2f_lightning.data.catalog import get_metadata
from m2f_lightning.data.datasets import registry
from m2f_lightning.data.datasets.instance import CityscapesInstanceReader
from m2f_lightning.data.datasets.registry import DATASETS, DatasetSpec, check_task, register
from m2f_lightning.data.datasets.semantic import SemanticReader, remap_ignore, shift_ade20k
from m2f_lightning.data.io import DataError
from m2f_lightning.data.synthetic import write_dataset


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(path: Path, height: int, width: int) -> Path:
    rng = np.random.default_rng(0)
    return _save(path, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- Cityscapes instanceIds ----------------------------------------------------------------

# Cityscapes label ids (cityscapesScripts labels.py): road 7, ego vehicle 1, person 24, car 26;
# the instance catalog's contiguous ids are person 0, rider 1, car 2, ...
INSTANCE_IDS = np.array(
    [
        [0, 7, 7, 26, 26, 26],  # 26: a crowd group of cars (label id < 1000)
        [1000, 1000, 999, 999, 26, 26],  # 1000 → label id 1 (ego vehicle), 999 → no class
        [24000, 24000, 26000, 26000, 26001, 26001],  # person #0, car #0, car #1
        [24000, 24000, 26000, 26000, 26001, 26001],
    ],
    dtype=np.uint16,
)


def _cityscapes_pair(tmp_path: Path, ids: np.ndarray, image_shape=None) -> tuple[Path, Path]:
    city = tmp_path / "frankfurt"
    image = _rgb(city / "frankfurt_000000_000001_leftImg8bit.png", *(image_shape or ids.shape))
    label = _save(city / "frankfurt_000000_000001_gtFine_instanceIds.png", ids)
    return image, label


def test_cityscapes_instance_ids_are_decoded_per_value(tmp_path: Path) -> None:
    image, label = _cityscapes_pair(tmp_path, INSTANCE_IDS)
    reader = CityscapesInstanceReader([(image, label)], get_metadata("cityscapes_instance"))
    sample = reader[0]
    # the things, in increasing order of the stored value: 26 (crowd), 24000, 26000, 26001;
    # 0, 7, 999 and 1000 are no thing class and give no mask
    values = [26, 24000, 26000, 26001]
    assert sample.labels.tolist() == [2, 0, 2, 2]
    assert sample.labels.dtype == np.int64
    assert sample.crowd.tolist() == [True, False, False, False]
    assert sample.crowd.dtype == np.bool_
    assert sample.masks.dtype == np.uint8
    assert sample.masks.shape == (4, 4, 6)
    for mask, value in zip(sample.masks, values, strict=True):
        np.testing.assert_array_equal(mask, np.equal(INSTANCE_IDS, value).astype(np.uint8))
    assert sample.image.shape == (4, 6, 3)
    np.testing.assert_array_equal(sample.image, np.asarray(Image.open(image).convert("RGB")))
    assert sample.image_id == "frankfurt_000000_000001_leftImg8bit"
    assert sample.file_name == str(image)
    assert sample.instance_file == str(label)


def test_cityscapes_instance_ids_on_the_1000_boundary(tmp_path: Path) -> None:
    # 1000 is instance 0 of label id 1 (not a thing), 999 is label id 999 (no class): neither
    # is a car/person instance nor a crowd group
    ids = np.array([[1000, 999], [26000, 26]], dtype=np.uint16)
    image, label = _cityscapes_pair(tmp_path, ids)
    sample = CityscapesInstanceReader([(image, label)], get_metadata("cityscapes_instance"))[0]
    assert sample.labels.tolist() == [2, 2]
    assert sample.crowd.tolist() == [True, False]  # 26 < 1000 is the crowd group
    np.testing.assert_array_equal(sample.masks[0], [[0, 0], [0, 1]])
    np.testing.assert_array_equal(sample.masks[1], [[0, 0], [1, 0]])


def test_cityscapes_instance_without_things_gives_empty_typed_arrays(tmp_path: Path) -> None:
    ids = np.array([[0, 7, 7], [1000, 999, 0]], dtype=np.uint16)  # nothing of a thing class
    image, label = _cityscapes_pair(tmp_path, ids)
    sample = CityscapesInstanceReader([(image, label)], get_metadata("cityscapes_instance"))[0]
    assert sample.masks.shape == (0, 2, 3) and sample.masks.dtype == np.uint8
    assert sample.labels.shape == (0,) and sample.labels.dtype == np.int64
    assert sample.crowd.shape == (0,) and sample.crowd.dtype == np.bool_
    assert sample.instance_file == str(label)


def test_cityscapes_instance_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image, label = _cityscapes_pair(tmp_path, INSTANCE_IDS, image_shape=(5, 6))
    reader = CityscapesInstanceReader([(image, label)], get_metadata("cityscapes_instance"))
    with pytest.raises(DataError) as err:
        reader[0]
    assert str(image) in str(err.value) and str(label) in str(err.value)


# --- semantic reader, ADE20K shift, ignore remap -------------------------------------------


def test_semantic_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = _rgb(tmp_path / "a.jpg", 4, 5)
    label = _save(tmp_path / "labels" / "a.png", np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(DataError) as err:
        SemanticReader([(image, label)], 10)[0]
    assert str(image) in str(err.value) and str(label) in str(err.value)


def test_shift_ade20k_maps_0_to_ignore_and_k_to_k_minus_1() -> None:
    raw = np.array([[0, 1, 2], [75, 149, 150]], dtype=np.uint8)
    out = shift_ade20k(raw)
    assert out.dtype == np.int64  # not narrowed: SemanticReader checks the range first
    assert out.tolist() == [[255, 0, 1], [74, 148, 149]]


def test_remap_ignore_maps_the_file_ignore_value_to_255_without_narrowing() -> None:
    raw = np.array([[0, 65, 64], [65, 1, 255]], dtype=np.uint8)
    out = remap_ignore(65)(raw)
    assert out.dtype == np.int64  # not narrowed: SemanticReader checks the range first
    assert out.tolist() == [[0, 255, 64], [255, 1, 255]]
    assert raw.tolist() == [[0, 65, 64], [65, 1, 255]]  # the input is not changed


def test_mapillary_semantic_reads_labels_with_65_as_ignore(tmp_path: Path) -> None:
    write_dataset("mapillary", tmp_path, num=2, num_val=2, seed=3, size=(32, 48))
    reader = build_reader("mapillary_vistas", "semantic", "val", tmp_path)
    assert isinstance(reader, SemanticReader)
    sample = reader[0]
    png = tmp_path / "mapillary_vistas" / "validation" / "labels" / "mval00000.png"
    raw = np.asarray(Image.open(png))
    assert (raw == 65).any()  # the writer leaves unlabeled pixels at 65
    np.testing.assert_array_equal(sample.sem_seg, np.where(raw == 65, 255, raw))
    panoptic = build_reader("mapillary_vistas", "panoptic", "val", tmp_path)
    assert not isinstance(panoptic, SemanticReader)
    assert panoptic[0].id_map is not None


# --- registry: COCO ------------------------------------------------------------------------


def _coco_instances(root: Path, split: str) -> dict:
    return json.loads((root / "coco" / "annotations" / f"instances_{split}2017.json").read_text())


def test_coco_instance_train_filters_empty_images_and_keeps_polygons(tmp_path: Path) -> None:
    write_dataset("coco_instance", tmp_path, num=6, num_val=3, seed=1, num_shapes=(0, 1))
    for split in ("train", "val"):
        data = _coco_instances(tmp_path, split)
        with_things = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
        reader = build_reader("coco", "instance", split, tmp_path)
        if split == "train":
            assert len(with_things) < len(data["images"])  # the test needs an empty image
            assert sorted(reader.image_ids) == sorted(with_things)
        else:
            assert len(reader) == len(data["images"])
        sample = reader[0]
        if split == "train":
            assert sample.polygons is not None and len(sample.polygons) == len(sample.labels)
        else:
            assert sample.polygons is None


def test_coco_panoptic_val_scores_ap_against_the_instances_json(tmp_path: Path) -> None:
    # the same seed draws the same scenes: the instance JSON describes the panoptic images
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, seed=4, size=(48, 64))
    with pytest.warns(UserWarning, match=r"instances_val2017\.json not found.*this COCO panoptic"):
        no_instances = build_reader("coco", "panoptic", "val", tmp_path)
    assert no_instances[0].eval_instances is None
    write_dataset("coco_instance", tmp_path, num=2, num_val=2, seed=4, size=(48, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = build_reader("coco", "panoptic", "val", tmp_path)
        train = build_reader("coco", "panoptic", "train", tmp_path)
    data = _coco_instances(tmp_path, "val")
    sample = reader[0]
    assert sample.eval_instances is not None
    masks, labels, crowd, areas = sample.eval_instances
    expected = [a for a in data["annotations"] if a["image_id"] == sample.image_id]
    assert len(labels) == len(crowd) == len(masks) == len(expected)
    assert areas.tolist() == [a["area"] for a in expected]  # COCOeval's size buckets
    assert train[0].eval_instances is None  # AP is a val-only score


def test_synthetic_demo_panoptic_val_needs_no_instances_json(tmp_path: Path) -> None:
    write_dataset("demo", tmp_path, num=2, num_val=2, seed=5, size=(32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "instances JSON not found" warning
        reader = build_reader("synthetic", "panoptic", "val", tmp_path)
    assert reader[0].eval_instances is None


def test_coco_panoptic_image_entry_named_png_reads_the_jpg(tmp_path: Path) -> None:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, seed=6, size=(32, 40))
    json_file = tmp_path / "coco" / "annotations" / "panoptic_train2017.json"
    data = json.loads(json_file.read_text())
    for info in data["images"]:
        info["file_name"] = info["file_name"].replace(".jpg", ".png")
    json_file.write_text(json.dumps(data))
    sample = build_reader("coco", "panoptic", "train", tmp_path)[0]
    assert sample.file_name == str(tmp_path / "coco" / "train2017" / "000000000001.jpg")
    assert sample.image.shape == (32, 40, 3)


# --- registry: Cityscapes panoptic ---------------------------------------------------------


def test_cityscapes_panoptic_val_points_at_the_instance_ids_png(tmp_path: Path) -> None:
    write_dataset("cityscapes", tmp_path, num=2, num_val=2, seed=7, size=(32, 64))
    gt = tmp_path / "cityscapes" / "gtFine"
    val = build_reader("cityscapes", "panoptic", "val", tmp_path)
    for i in range(len(val)):
        stem = Path(val[i].file_name).name.replace("_leftImg8bit.png", "")
        expected = gt / "val" / "frankfurt" / f"{stem}_gtFine_instanceIds.png"
        assert expected.is_file()
        assert val[i].instance_file == str(expected)
    train = build_reader("cityscapes", "panoptic", "train", tmp_path)
    assert (gt / "train" / "aachen" / "aachen_000000_000000_gtFine_instanceIds.png").is_file()
    assert all(train[i].instance_file is None for i in range(len(train)))


# --- registry: register --------------------------------------------------------------------


def test_register_makes_a_dataset_available() -> None:
    spec = DatasetSpec(
        name="edge_test_dataset",
        tasks=("semantic",),
        folder="edge",
        layout="edge/",
        hint="none",
        catalog="synthetic",
        build_reader=lambda *args: None,
    )
    assert "edge_test_dataset" not in DATASETS
    try:
        assert register(spec) is spec
        assert DATASETS["edge_test_dataset"] is spec
        check_task("edge_test_dataset", "semantic")
        assert registry.metadata_for("edge_test_dataset", "semantic").name == "synthetic"
    finally:
        DATASETS.pop("edge_test_dataset", None)
