"""The data pipeline against the official one (detectron2 transforms as Mask2Former's mappers use
them), computed with the library the official code uses (PIL) or from facts in
shared/reference/official_recipes.md and fidelity.md §3–§4, §7."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.data.catalog import get_metadata
from m2f_lightning.data.datamodule import keeps_empty_targets
from m2f_lightning.data.datasets.instance import CocoInstanceReader
from m2f_lightning.data.targets import train_targets
from m2f_lightning.data.transforms import eval_resize, lsj, semantic_jitter, short_edge_sizes


def _pil(array: np.ndarray, height: int, width: int, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((width, height), resample))


def test_shrinking_noise_8x_gives_pils_antialiased_bilinear() -> None:
    """fidelity.md §3: PIL's std is about 6 where OpenCV's INTER_LINEAR gives 36."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    reference = _pil(noise, 128, 128, Image.Resampling.BILINEAR).astype(int)
    assert reference.std() < 8
    # LSJ at s = 1/8 (no crop: the resized image is smaller than the crop)
    out = lsj(size=1024, min_scale=0.125, max_scale=0.125, flip_prob=0.0)(
        image=noise, mask=np.zeros((1024, 1024), np.int32)
    )
    assert np.abs(out["image"][:128, :128].astype(int) - reference).max() <= 1
    # the evaluation resize
    resized = eval_resize(128, 128)(image=noise)["image"]
    assert resized.shape == (128, 128, 3)
    assert np.abs(resized.astype(int) - reference).max() <= 1


def test_label_maps_resize_with_pils_pixel_centre_nearest() -> None:
    ids = np.arange(64 * 96, dtype=np.int32).reshape(64, 96)
    out = lsj(size=1024, min_scale=1 / 32, max_scale=1 / 32, flip_prob=0.0)(
        image=np.zeros((64, 96, 3), np.uint8), mask=ids
    )
    reference = _pil(ids, 21, 32, Image.Resampling.NEAREST)  # 64·(32/96) = 21.33 → 21
    np.testing.assert_array_equal(out["mask"][:21, :32], reference)
    # pixel centres: output (i, j) samples source row floor((i + 0.5)·64/21) = 1 for i = 0 and
    # column floor((j + 0.5)·3) = 1, 4, 7 (OpenCV's INTER_NEAREST takes row 0, columns 0, 3, 6)
    assert out["mask"][0, :3].tolist() == [96 + 1, 96 + 4, 96 + 7]


def test_lsj_resize_then_crop_equals_pils_full_resize_cropped() -> None:
    """The fused resize+crop gives the pixels of resizing the whole image with PIL, then
    cropping (what detectron2's ResizeScale + FixedSizeCrop do): label maps exactly; images at
    the same sample positions with the same filter, but PIL's 8-bit passes round the cropped
    vertical pass differently on some pixels (at most 2 grey levels, 0.14 on average)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    ids = rng.integers(0, 10_000, (120, 160)).astype(np.int32)
    transform = lsj(size=128, min_scale=1.5, max_scale=2.0, flip_prob=0.5)
    for seed in range(6):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=ids)
        p = dict(out["applied_transforms"])["LargeScaleJitter"]
        src_img = image[:, ::-1] if p["flip"] else image
        src_ids = ids[:, ::-1] if p["flip"] else ids
        full = _pil(np.ascontiguousarray(src_img), p["out_h"], p["out_w"], Image.BILINEAR)
        full_ids = _pil(np.ascontiguousarray(src_ids), p["out_h"], p["out_w"], Image.NEAREST)
        y, x = p["y0"], p["x0"]
        diff = np.abs(out["image"].astype(int) - full[y : y + 128, x : x + 128])
        assert diff.max() <= 2 and diff.mean() < 0.2
        np.testing.assert_array_equal(out["mask"], full_ids[y : y + 128, x : x + 128])


def test_lsj_crop_offsets_come_from_one_shared_fraction() -> None:
    """detectron2's FixedSizeCrop: offset = round(max_offset · f) with one f for both axes."""
    size = 64
    ids = np.arange(32 * 32, dtype=np.int32).reshape(32, 32)  # square: max offsets equal
    transform = lsj(size=size, min_scale=4.0, max_scale=4.0, flip_prob=0.0)  # 32 → 256
    offsets = []
    for seed in range(12):
        transform.set_random_seed(seed)
        corner = int(transform(image=np.zeros((32, 32, 3), np.uint8), mask=ids)["mask"][0, 0])
        offsets.append(divmod(corner, 32))  # source (row, col) under the crop's first pixel
    assert len(set(offsets)) > 3
    assert all(row == col for row, col in offsets)


@pytest.mark.parametrize(
    ("base", "official"),
    [
        (512, [256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024]),
        (640, list(range(320, 1281, 64))),
        (
            1024,
            [512, 614, 716, 819, 921, 1024, 1126, 1228, 1331, 1433]
            + [1536, 1638, 1740, 1843, 1945, 2048],
        ),
        (
            2048,
            [1024, 1228, 1433, 1638, 1843, 2048, 2252, 2457, 2662, 2867]
            + [3072, 3276, 3481, 3686, 3891, 4096],
        ),
    ],
)
def test_short_edge_lists_are_the_official_int_lists(base: int, official: list[int]) -> None:
    """official_recipes.md N6: MIN_SIZE_TRAIN = int(x·0.1·S) for x = 5..20."""
    assert short_edge_sizes(base) == official
    transform = semantic_jitter(base_size=base, crop_size=(base, base))
    assert transform.transforms[0].short_sizes == official


def test_semantic_recipe_pads_last_bottom_right_unjittered() -> None:
    """ADE20K: crop, colour jitter and flip run on the image; the mapper pads afterwards,
    bottom/right, image 128 and labels ignore (fidelity.md §7)."""
    transform = semantic_jitter(base_size=32, crop_size=(64, 64))  # short side 16..64
    image = np.full((40, 60, 3), 60, dtype=np.uint8)
    labels = np.zeros((40, 60), dtype=np.uint8)
    padded = 0
    for seed in range(30):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=labels)
        h, w = dict(out["applied_transforms"])["ShortEdgeResizeCrop"]["crop_h"], None
        w = dict(out["applied_transforms"])["ShortEdgeResizeCrop"]["crop_w"]
        assert out["image"].shape == (64, 64, 3)
        assert (out["mask"][:h, :w] == 0).all()
        if h < 64 or w < 64:
            padded += 1
            assert (out["image"][h:] == 128).all() and (out["image"][:, w:] == 128).all()
            assert (out["mask"][h:] == 255).all() and (out["mask"][:, w:] == 255).all()
    assert padded > 10


def test_segments_emptied_by_the_crop_stay_targets_where_the_official_mappers_keep_them() -> None:
    """fidelity.md §4: the panoptic mappers and the ADE20K / Cityscapes instance mapper keep an
    emptied segment as an all-zero mask; COCO's instance LSJ mapper filters it."""
    assert keeps_empty_targets("panoptic", "lsj") and keeps_empty_targets("panoptic", "semantic")
    assert keeps_empty_targets("instance", "semantic")
    assert not keeps_empty_targets("instance", "lsj")
    meta = get_metadata("synthetic")  # 0, 1 stuff; 2.. things
    id_map = np.array([[1, 1], [3, 3]], dtype=np.int32)  # segment 2 was cropped away
    segments = [
        {"id": 1, "category": 0, "iscrowd": False},
        {"id": 2, "category": 2, "iscrowd": False},
        {"id": 3, "category": 3, "iscrowd": False},
        {"id": 4, "category": 3, "iscrowd": True},
    ]
    kept = train_targets("panoptic", meta, id_map=id_map, segments=segments, keep_empty=True)
    assert kept["labels"].tolist() == [0, 2, 3] and not kept["masks"][1].any()
    masks = np.stack([id_map == 3, np.zeros_like(id_map, bool)]).astype(np.uint8)
    inst = dict(masks=masks, labels=[3, 2], crowd=[False, False])
    assert train_targets("instance", meta, **inst, keep_empty=True)["labels"].tolist() == [3, 2]
    assert train_targets("instance", meta, **inst, keep_empty=False)["labels"].tolist() == [3]


def test_instance_training_drops_images_without_a_non_crowd_annotation(tmp_path: Path) -> None:
    """DATALOADER.FILTER_EMPTY_ANNOTATIONS (True in every official config)."""
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{name}.jpg")
    box = {"segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]], "area": 25, "bbox": [1, 1, 5, 5]}
    data = {
        "images": [
            {"id": i, "file_name": f"{n}.jpg", "height": 8, "width": 8}
            for i, n in enumerate("abc", 1)
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, **box},
            {"id": 2, "image_id": 2, "category_id": 1, "iscrowd": 1, **box},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    meta = get_metadata("coco_instance")
    train = CocoInstanceReader(tmp_path / "instances.json", tmp_path, meta, filter_empty=True)
    val = CocoInstanceReader(tmp_path / "instances.json", tmp_path, meta)
    assert len(train) == 1 and train[0].image_id == 1
    assert len(val) == 3


def test_instance_tasks_use_the_official_class_sets(tmp_path: Path) -> None:
    """ADE20K instance: the 100 thing classes; Cityscapes instance: the 8 thing classes
    (official SEM_SEG_HEAD.NUM_CLASSES 100 and 8)."""
    from m2f_lightning.data import build_reader, metadata_for
    from m2f_lightning.data.synthetic import write_dataset

    ade, city = metadata_for("ade20k", "instance"), metadata_for("cityscapes", "instance")
    assert ade.num_classes == 100 and ade.thing_ids == list(range(100))
    assert city.class_names == [
        *("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    ]
    assert metadata_for("ade20k", "panoptic").num_classes == 150
    write_dataset("ade20k", tmp_path, num=2, num_val=2, seed=0)
    write_dataset("cityscapes", tmp_path, num=2, num_val=2, seed=0)
    for dataset, meta in (("ade20k", ade), ("cityscapes", city)):
        sample = build_reader(dataset, "instance", "val", tmp_path)[0]
        assert len(sample.labels) and max(sample.labels) < meta.num_classes
        names = {meta.class_names[i] for i in sample.labels}
        assert names <= set(metadata_for(dataset, "panoptic").class_names)


def test_coco_instance_polygons_are_transformed_then_rasterised(tmp_path: Path) -> None:
    """The official COCO instance mapper flips/resizes/crops the polygons and rasterises them
    at the output size (pycocotools), rather than resizing a raster."""
    from pycocotools import mask as mask_utils

    from m2f_lightning.data import SegmentationDataset

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.jpg")
    poly = [2.3, 3.1, 25.7, 4.4, 14.2, 17.6]
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [poly],
             "area": 150, "bbox": [2, 3, 24, 15]}
        ],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    (tmp_path / "instances.json").write_text(json.dumps(data))
    meta = get_metadata("coco_instance")
    reader = CocoInstanceReader(
        tmp_path / "instances.json", tmp_path, meta, filter_empty=True, keep_polygons=True
    )
    # s = 1: scale = min(64/20, 64/30) → 43 x 64, no crop; flip off
    transform = lsj(size=64, min_scale=1.0, max_scale=1.0, flip_prob=0.0)
    mask = SegmentationDataset(reader, "instance", meta, transform, train=True)[0]["targets"]
    xy = np.array(poly).reshape(-1, 2) * [64 / 30, 43 / 20]
    expected = mask_utils.decode(mask_utils.frPyObjects([xy.reshape(-1).tolist()], 64, 64)[0])
    np.testing.assert_array_equal(mask["masks"][0].numpy(), expected.astype(bool))
    # with the flip: x → 30 − x before the resize
    transform = lsj(size=64, min_scale=1.0, max_scale=1.0, flip_prob=1.0)
    mask = SegmentationDataset(reader, "instance", meta, transform, train=True)[0]["targets"]
    flipped = np.array(poly).reshape(-1, 2)
    flipped[:, 0] = 30 - flipped[:, 0]
    xy = flipped * [64 / 30, 43 / 20]
    expected = mask_utils.decode(mask_utils.frPyObjects([xy.reshape(-1).tolist()], 64, 64)[0])
    np.testing.assert_array_equal(mask["masks"][0].numpy(), expected.astype(bool))
