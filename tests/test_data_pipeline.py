"""Augmentation statistics, targets per task, padding, and the DataModule end to end."""

import numpy as np
import pytest
import torch
from scipy import stats

from m2f_lightning.data import SegmentationDataModule, collate
from m2f_lightning.data.catalog import get_metadata
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.data.targets import train_targets
from m2f_lightning.data.transforms import ColorAugSSD, lsj, semantic_jitter


def test_lsj_scales_follow_the_paper_distribution() -> None:
    """s ~ U(0.1, 2.0): the resized long side of a 640x480 image is 1024·s (KS test)."""
    transform = lsj(size=1024)
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    id_map = np.zeros((480, 640), dtype=np.int32)
    jitters, long_sides = [], []
    for seed in range(400):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=id_map)
        params = dict(out["applied_transforms"])["LargeScaleJitter"]
        jitters.append(params["jitter"])
        long_sides.append(params["out_w"])
        assert out["image"].shape == (1024, 1024, 3)
    jitters = np.array(jitters)
    assert stats.kstest(jitters, stats.uniform(loc=0.1, scale=1.9).cdf).pvalue > 0.01
    assert np.allclose(np.array(long_sides), np.round(1024 * jitters), atol=1)


def test_lsj_pads_bottom_right_with_128_and_void() -> None:
    transform = lsj(size=256, min_scale=0.5, max_scale=0.5, flip_prob=0.0)
    image = np.full((100, 200, 3), 7, dtype=np.uint8)
    out = transform(image=image, mask=np.ones((100, 200), dtype=np.int32))
    assert out["image"].shape == (256, 256, 3)
    assert (out["image"][:64, :128] == 7).all() and (out["image"][64:] == 128).all()
    assert (out["mask"][:64, :128] == 1).all() and (out["mask"][:, 128:] == 0).all()


def test_semantic_jitter_sizes_and_ignore_padding() -> None:
    transform = semantic_jitter(base_size=64, crop_size=(64, 64))
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    for seed in range(20):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=np.zeros((40, 60), dtype=np.uint8))
        assert out["image"].shape == (64, 64, 3)
        short = dict(out["applied_transforms"])["ShortEdgeResizeCrop"]["out_h"]
        assert 32 <= short <= 128
        if short < 64:
            assert (out["mask"][short:] == 255).all()


def test_targets_per_task_from_one_panoptic_annotation() -> None:
    meta = get_metadata("synthetic")  # 0 sky, 1 ground stuff; 2.. things
    id_map = np.array([[1, 1, 3, 3], [2, 2, 4, 0]], dtype=np.int32)
    segments = [
        {"id": 1, "category": 0, "iscrowd": False},
        {"id": 2, "category": 1, "iscrowd": False},
        {"id": 3, "category": 2, "iscrowd": False},
        {"id": 4, "category": 2, "iscrowd": True},
        {"id": 9, "category": 3, "iscrowd": False},  # cropped away: dropped
    ]
    pan = train_targets("panoptic", meta, id_map=id_map, segments=segments)
    assert pan["labels"].tolist() == [0, 1, 2]
    ins = train_targets("instance", meta, id_map=id_map, segments=segments)
    assert ins["labels"].tolist() == [2]
    sem = train_targets("semantic", meta, id_map=id_map, segments=segments)
    assert sem["labels"].tolist() == [0, 1, 2]
    assert sem["masks"][2].tolist() == [[False, False, True, True], [False, False, True, False]]


def test_collate_pads_to_32_and_reports_the_image_sizes() -> None:
    items = [
        {
            "image": torch.zeros(3, 40, 50, dtype=torch.uint8),
            "targets": {
                "labels": torch.tensor([1]),
                "masks": torch.ones(1, 40, 50, dtype=torch.bool),
            },
            "image_size": (40, 50),
            "orig_size": (80, 100),
            "file_name": "a.jpg",
            "image_id": 1,
        },
        {
            "image": torch.zeros(3, 70, 20, dtype=torch.uint8),
            "targets": {
                "labels": torch.tensor([], dtype=torch.int64),
                "masks": torch.zeros(0, 70, 20, dtype=torch.bool),
            },
            "image_size": (70, 20),
            "orig_size": (70, 20),
            "file_name": "b.jpg",
            "image_id": 2,
        },
    ]
    items[0]["image"][:] = 7
    batch = collate(items)
    assert batch.images.shape == (2, 3, 96, 64) and batch.images.dtype == torch.uint8
    assert batch.images[0, :, :40, :50].eq(7).all() and batch.images[0, :, 40:].eq(0).all()
    assert batch.targets[0]["masks"].shape == (1, 96, 64)
    assert batch.targets[0]["masks"][:, :40, :50].all() and batch.targets[0]["masks"].sum() == 2000
    assert batch.targets[1]["masks"].shape == (0, 96, 64)
    assert batch.image_sizes == [(40, 50), (70, 20)] and batch.orig_sizes == [(80, 100), (70, 20)]
    assert batch.file_names == ["a.jpg", "b.jpg"] and batch.image_ids == [1, 2]
    assert batch.eval_targets is None and len(batch) == 2


@pytest.mark.parametrize(
    "fmt,dataset,task,aug",
    [
        ("coco_panoptic", "coco", "panoptic", {"recipe": "lsj", "size": 128}),
        ("coco_instance", "coco", "instance", {"recipe": "lsj", "size": 128}),
        (
            "ade20k",
            "ade20k",
            "semantic",
            {"recipe": "semantic", "base_size": 96, "crop_size": [96, 96]},
        ),
        (
            "cityscapes",
            "cityscapes",
            "instance",
            {"recipe": "semantic", "base_size": 128, "crop_size": [64, 128]},
        ),
        (
            "mapillary",
            "mapillary_vistas",
            "panoptic",
            {"recipe": "semantic", "base_size": 96, "crop_size": [96, 96]},
        ),
    ],
)
def test_datamodule_serves_training_and_eval_batches(tmp_path, fmt, dataset, task, aug) -> None:
    write_dataset(fmt, tmp_path, num=2, num_val=2, seed=5)
    dm = SegmentationDataModule(
        dataset,
        task,
        root=str(tmp_path),
        batch_size=2,
        num_workers=0,
        train_aug=aug,
        test_min_size=96,
        test_max_size=256,
    )
    assert dm.metadata.num_classes > 0  # known before setup (the model needs it)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch.images.shape[0] == 2 and batch.images.shape[-1] % 32 == 0
    # each sample's point seed is its (seed, epoch, index) augmentation seed
    assert batch.point_seeds == [key.aug_seed for key in list(loader.sampler)[:2]]
    for target in batch.targets:
        assert target["masks"].shape[-2:] == batch.images.shape[-2:]
        assert target["labels"].max() < dm.metadata.num_classes if len(target["labels"]) else True
    val = next(iter(dm.val_dataloader()))
    key = {"panoptic": "panoptic", "instance": "instances", "semantic": "sem_seg"}[task]
    (target,) = val.eval_targets
    assert val.point_seeds is None
    assert getattr(target, key) is not None and len(val.orig_sizes) == 1


def test_colour_jitter_saturates_after_each_step_and_rotates_hue() -> None:
    """SSD colour jitter: brightness then contrast clip to 0..255 in between; hue is OpenCV's
    0..180 circle (red + 60 = green)."""
    jitter = ColorAugSSD()
    pixels = np.array([[[240, 100, 0]]], dtype=np.uint8)
    out = jitter.apply(pixels, brightness=30, contrast=1.5, contrast_first=True)
    assert out.tolist() == [[[255, 195, 45]]]
    red = np.array([[[255, 0, 0]]], dtype=np.uint8)
    assert jitter.apply(red, hue=60).tolist() == [[[0, 255, 0]]]
    assert jitter.apply(red).tolist() == red.tolist()
