"""The official registrations' ground truth: Cityscapes instance training from the polygon JSON
(detectron2's `load_cityscapes_instances(from_json=True)`, rasterised after the augmentation,
images without instances dropped) and Mapillary Vistas panoptic mIoU against `labels/*.png`.

References are computed with the libraries the official code uses (pycocotools for the
polygon → mask step, cityscapesScripts for drawing a polygon file), never with our code."""

import json
import logging
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from PIL import Image
from pycocotools import mask as mask_utils

from m2f_lightning.data.datasets import build_reader, metadata_for
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.data.targets import eval_targets
from m2f_lightning.data.torch_datasets import SegmentationDataset
from m2f_lightning.data.transforms import ShortEdgeResizeCrop
from m2f_lightning.metrics.semantic import SemanticIoU

# Cityscapes label ids (cityscapesScripts labels.py): car 26, person 24
CAR, PERSON = 26, 24
HEIGHT, WIDTH = 40, 60


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """A Cityscapes polygon (integer vertices) of the pixels x0..x1, y0..y1."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _write_city(root: Path, stem: str, objects: list[dict]) -> None:
    """One gtFine training image: the polygon file, and the instanceIds PNG that
    cityscapesScripts draws from it (as the real dataset's PNGs are made)."""
    gt = root / "cityscapes" / "gtFine" / "train" / "aachen"
    images = root / "cityscapes" / "leftImg8bit" / "train" / "aachen"
    gt.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    polygons = {"imgHeight": HEIGHT, "imgWidth": WIDTH, "objects": objects}
    json_file = gt / f"{stem}_gtFine_polygons.json"
    json_file.write_text(json.dumps(polygons))
    annotation = Annotation()
    annotation.fromJsonFile(str(json_file))
    ids = np.array(createInstanceImage(annotation, "ids")).astype(np.uint16)
    Image.fromarray(ids).save(gt / f"{stem}_gtFine_instanceIds.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(
        images / f"{stem}_leftImg8bit.png"
    )


class _Recorded:
    """A pipeline that keeps the parameters of its last run, for the reference."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline
        self.applied: list = []

    def __call__(self, **data):
        out = self.pipeline(**data)
        self.applied = out["applied_transforms"]
        return out


def _reference_mask(box: tuple[float, float, float, float], applied: list, out_hw) -> np.ndarray:
    """pycocotools' rasterisation of an axis-aligned box (x0, y0, x1, y1 in pixel edges of the
    original image) moved as detectron2 moves polygons: resize, crop shift, flip."""
    params = dict(applied)
    crop = params["ShortEdgeResizeCrop"]
    sx, sy = crop["out_w"] / WIDTH, crop["out_h"] / HEIGHT
    x0, x1 = box[0] * sx - crop["x0"], box[2] * sx - crop["x0"]
    y0, y1 = box[1] * sy - crop["y0"], box[3] * sy - crop["y0"]
    if "HorizontalFlip" in params:
        x0, x1 = crop["crop_w"] - x1, crop["crop_w"] - x0
    polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], *out_hw)))


def test_cityscapes_instance_targets_are_the_polygons_rasterised_after_augmentation(tmp_path):
    """The official loader on this file (objects drawn in order, later over earlier): the car
    keeps its part not under the later caravan (which has instances but is not evaluated, so
    it only covers), and its whole exterior around the person inside it (the loader keeps
    exterior boundaries only); the license plate (id -1) is skipped; the cargroup is crowd, no
    target. Each polygon is shifted by +0.5 and dilated by 0.5 (buffer), which for the pixels
    x0..x1 is the box [x0, x1 + 1]; after a 2x resize its rounded corners (radius 1 px) cover
    the corner pixels, so pycocotools' rasterisation of the moved box is the official mask."""
    objects = [
        {"label": "car", "polygon": _rect(10, 8, 33, 25)},
        {"label": "person", "polygon": _rect(14, 12, 19, 20)},
        {"label": "license plate", "polygon": _rect(20, 21, 24, 23)},
        {"label": "caravan", "polygon": _rect(28, 4, 45, 30)},
        {"label": "cargroup", "polygon": _rect(48, 30, 55, 36)},
    ]
    _write_city(tmp_path, "aachen_000000_000000", objects)
    reader = build_reader("cityscapes", "instance", "train", root=tmp_path)
    meta = metadata_for("cityscapes", "instance")
    pipeline = _Recorded(
        A.Compose(
            [ShortEdgeResizeCrop([80], 1000, (64, 96)), A.HorizontalFlip(p=1.0)],
            save_applied_params=True,
        )
    )
    dataset = SegmentationDataset(reader, "instance", meta, pipeline, train=True, keep_empty=True)
    for _ in range(3):  # three random crops
        targets = dataset[0]["targets"]
        out_hw = tuple(targets["masks"].shape[1:])
        assert out_hw == (64, 96)
        # caravan (x from 28) over the car: the car keeps x 10..27 → box [10, 28]
        car = _reference_mask((10, 8, 28, 26), pipeline.applied, out_hw)
        person = _reference_mask((14, 12, 20, 21), pipeline.applied, out_hw)
        classes = [meta.contiguous_id(i, "") for i in (PERSON, CAR)]  # topmost first
        assert targets["labels"].tolist() == classes
        assert torch.equal(targets["masks"][0], torch.from_numpy(person.astype(bool)))
        assert torch.equal(targets["masks"][1], torch.from_numpy(car.astype(bool)))


def test_cityscapes_instance_training_drops_images_without_instances(tmp_path, caplog):
    """DATALOADER.FILTER_EMPTY_ANNOTATIONS: True (the official Cityscapes instance config):
    an image whose only thing is a crowd group, or that has none, is not trained on."""
    _write_city(tmp_path, "aachen_000000_000000", [{"label": "car", "polygon": _rect(2, 2, 9, 9)}])
    _write_city(
        tmp_path, "aachen_000000_000001", [{"label": "cargroup", "polygon": _rect(2, 2, 9, 9)}]
    )
    _write_city(tmp_path, "aachen_000000_000002", [{"label": "road", "polygon": _rect(0, 0, 9, 9)}])
    with caplog.at_level(logging.INFO):
        reader = build_reader("cityscapes", "instance", "train", root=tmp_path)
    assert len(reader) == 1
    assert reader[0].file_name.endswith("aachen_000000_000000_leftImg8bit.png")
    assert "left out 2 of 3 images" in caplog.text


def test_cityscapes_object_wholly_under_later_ones_is_no_annotation(tmp_path):
    """detectron2 skips an object whose difference with the later polygons is empty; the
    covered car still covers nothing else, and the person beside it stays."""
    objects = [
        {"label": "car", "polygon": _rect(4, 4, 9, 9)},
        {"label": "building", "polygon": _rect(0, 0, 20, 20)},
        {"label": "person", "polygon": _rect(30, 5, 35, 15)},
    ]
    _write_city(tmp_path, "aachen_000000_000000", objects)
    sample = build_reader("cityscapes", "instance", "train", root=tmp_path)[0]
    meta = metadata_for("cityscapes", "instance")
    assert sample.labels.tolist() == [meta.contiguous_id(PERSON, "")]
    assert [index for _, index in sample.layers] == [0, -1, -1]
    person = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    person[5:16, 30:36] = 1  # the pixels 30..35 x 5..15, as cityscapesScripts draws them
    np.testing.assert_array_equal(sample.masks[0], person)


def test_synthetic_cityscapes_polygons_draw_its_instance_pngs(tmp_path):
    """The synthetic writer's polygon files are what its instanceIds PNGs are drawn from, as in
    the real dataset: cityscapesScripts' drawing of each file gives the PNG."""
    write_dataset("cityscapes", tmp_path, num=4, num_val=2, seed=3)
    files = sorted(tmp_path.rglob("*_gtFine_polygons.json"))
    assert len(files) == 6
    for json_file in files:
        annotation = Annotation()
        annotation.fromJsonFile(str(json_file))
        drawn = np.array(createInstanceImage(annotation, "ids"))
        png = str(json_file).replace("_polygons.json", "_instanceIds.png")
        np.testing.assert_array_equal(drawn, np.array(Image.open(png)))


def test_mapillary_panoptic_miou_is_scored_against_the_labels_pngs(tmp_path):
    """register_mapillary_vistas_panoptic.py gives each image `sem_seg_file_name` from
    `labels/` (ignore 65): where that PNG and the panoptic PNG disagree, the label PNG counts."""
    write_dataset("mapillary", tmp_path, num=2, num_val=2, seed=0)
    labels_dir = tmp_path / "mapillary_vistas" / "validation" / "labels"
    label_file = sorted(labels_dir.glob("*.png"))[0]
    labels = np.array(Image.open(label_file))
    changed = labels.copy()
    changed[:10, :20] = 7  # "Wall" in known pixels
    changed[10:20, :20] = 65  # unlabeled there
    Image.fromarray(changed).save(label_file)
    reader = build_reader("mapillary_vistas", "panoptic", "val", root=tmp_path)
    meta = metadata_for("mapillary_vistas", "panoptic")
    index = next(i for i in range(len(reader)) if reader.records[i]["semantic"] == label_file)
    target = eval_targets("panoptic", meta, reader[index])
    expected = np.where(changed == 65, 255, changed).astype(np.int64)
    np.testing.assert_array_equal(target.sem_seg.numpy(), expected)
    # a prediction equal to the label PNG scores mIoU 1
    metric = SemanticIoU(meta.num_classes)
    prediction = torch.from_numpy(np.where(changed == 65, 0, changed).astype(np.int64))
    metric.update(prediction[None], target.sem_seg[None])
    assert metric.compute()["miou"].item() == pytest.approx(1.0)


def test_mapillary_panoptic_without_labels_warns_that_miou_differs(tmp_path):
    write_dataset("mapillary", tmp_path, num=2, num_val=2, seed=0)
    for png in (tmp_path / "mapillary_vistas" / "validation" / "labels").glob("*.png"):
        png.unlink()
    (tmp_path / "mapillary_vistas" / "validation" / "labels").rmdir()
    with pytest.warns(UserWarning, match="differs from the official mIoU"):
        reader = build_reader("mapillary_vistas", "panoptic", "val", root=tmp_path)
    assert reader[0].sem_seg is None


def test_cityscapes_instance_training_without_polygon_files_warns_and_reads_the_pngs(tmp_path):
    _write_city(tmp_path, "aachen_000000_000000", [{"label": "car", "polygon": _rect(2, 2, 9, 9)}])
    _write_city(tmp_path, "aachen_000000_000001", [{"label": "road", "polygon": _rect(0, 0, 9, 9)}])
    gt = tmp_path / "cityscapes" / "gtFine" / "train" / "aachen"
    (gt / "aachen_000000_000001_gtFine_polygons.json").unlink()
    with pytest.warns(UserWarning, match="1 of 2 Cityscapes training images have no"):
        reader = build_reader("cityscapes", "instance", "train", root=tmp_path)
    assert len(reader) == 2  # nothing to filter by
    sample = reader[0]
    assert sample.layers is None and len(sample.labels) == 1
