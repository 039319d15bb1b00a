"""Label-map resizing per official mapper, against the library detectron2's ResizeTransform hands
the map to: the semantic mapper reads its labels as `double`, so they go through
`torch.nn.functional.interpolate(mode="nearest")`; the panoptic and instance mappers hand uint8
(RGB ids, masks) to PIL's `Image.resize(NEAREST)`."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from m2f_lightning.data import SegmentationDataModule
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.data.transforms import lsj, nearest_indices, resize_labels, semantic_jitter

# (in_h, in_w, out_h, out_w): shrinking, enlarging, mixed, odd ratios, exactly ×2 and ÷2
SIZES = [
    (37, 53, 20, 31),
    (64, 96, 21, 32),
    (29, 41, 70, 97),
    (50, 50, 100, 100),
    (100, 60, 50, 30),
    (17, 83, 61, 19),
    (480, 640, 512, 683),
    (512, 683, 333, 444),
]


def _torch_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """What detectron2's ResizeTransform.apply_segmentation does with a float map."""
    x = torch.from_numpy(labels.astype(np.float64))[None, None]
    return F.interpolate(x, (height, width), mode="nearest")[0, 0].numpy()


def _pil_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """What it does with a uint8 map (here one channel of ids below 256)."""
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))


def _ramp(height: int, width: int, seed: int) -> np.ndarray:
    """A map whose every pixel differs from its neighbours (so any index shift shows)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(height * width).reshape(height, width).astype(np.int32)


@pytest.mark.parametrize(("in_h", "in_w", "out_h", "out_w"), SIZES)
def test_semantic_rule_equals_torch_interpolate_nearest(in_h, in_w, out_h, out_w) -> None:
    labels = _ramp(in_h, in_w, in_h * in_w)
    ours = resize_labels(labels, out_h, out_w, rule="torch")
    np.testing.assert_array_equal(ours, _torch_nearest(labels, out_h, out_w))
    # and the window of a fused resize+crop is the window of the full resize
    y0, x0 = out_h // 3, out_w // 4
    window = resize_labels(labels, out_h, out_w, (y0, x0), (out_h // 2, out_w // 2), rule="torch")
    full = _torch_nearest(labels, out_h, out_w)
    np.testing.assert_array_equal(window, full[y0 : y0 + out_h // 2, x0 : x0 + out_w // 2])


@pytest.mark.parametrize(("in_h", "in_w", "out_h", "out_w"), SIZES)
def test_panoptic_instance_rule_equals_pil_nearest(in_h, in_w, out_h, out_w) -> None:
    labels = np.random.default_rng(in_h).integers(0, 256, (in_h, in_w), dtype=np.uint8)
    np.testing.assert_array_equal(
        resize_labels(labels, out_h, out_w, rule="pil"), _pil_nearest(labels, out_h, out_w)
    )
    np.testing.assert_array_equal(
        resize_labels(labels, out_h, out_w), _pil_nearest(labels, out_h, out_w)
    )


def test_the_two_rules_differ_where_the_issue_says() -> None:
    """Top-left (torch) and centre (PIL) sampling pick other pixels for most ratios: 64 → 21
    rows start at row 0 under torch, row 1 under PIL."""
    assert nearest_indices(21, 64, "torch")[:3].tolist() == [0, 3, 6]
    assert nearest_indices(21, 64, "pil")[:3].tolist() == [1, 4, 7]
    with pytest.raises(ValueError, match="label resize rule 'cv2'"):
        nearest_indices(21, 64, "cv2")  # type: ignore[arg-type]


def _official_semantic_chain(labels: np.ndarray, params: dict, flipped: bool, crop) -> np.ndarray:
    """The semantic mapper: ResizeShortestEdge (double → torch nearest), RandomCrop, RandomFlip,
    then F.pad to the crop size with the ignore label."""
    out = _torch_nearest(labels, params["out_h"], params["out_w"])
    y0, x0, h, w = params["y0"], params["x0"], params["crop_h"], params["crop_w"]
    out = out[y0 : y0 + h, x0 : x0 + w]
    if flipped:
        out = out[:, ::-1]
    padded = np.full(crop, 255.0)
    padded[:h, :w] = out
    return padded


def _semantic_transform_of_datamodule(tmp_path, task: str):
    write_dataset("ade20k", tmp_path, num=1, num_val=1, seed=3)
    dm = SegmentationDataModule(
        "ade20k",
        task,
        root=str(tmp_path),
        num_workers=0,
        train_aug={"recipe": "semantic", "base_size": 48, "crop_size": [48, 48]},
    )
    dm.setup("fit")
    return dm.train_set.transform


def test_semantic_training_pipeline_resizes_labels_as_the_official_semantic_mapper(
    tmp_path,
) -> None:
    """The DataModule's semantic-task pipeline, whole (resize, crop, colour, flip, pad), gives the
    official semantic mapper's label map for every drawn scale, crop and flip."""
    transform = _semantic_transform_of_datamodule(tmp_path, "semantic")
    labels = _ramp(37, 53, 0)
    differs_from_pil = 0
    for seed in range(12):
        transform.set_random_seed(seed)
        out = transform(image=np.zeros((37, 53, 3), np.uint8), mask=labels)
        applied = dict(out["applied_transforms"])
        params = applied["ShortEdgeResizeCrop"]
        expected = _official_semantic_chain(labels, params, "HorizontalFlip" in applied, (48, 48))
        np.testing.assert_array_equal(out["mask"], expected)
        pil = resize_labels(labels, params["out_h"], params["out_w"], rule="pil")
        torch_rule = _torch_nearest(labels, params["out_h"], params["out_w"])
        differs_from_pil += int((pil != torch_rule).any())
    assert differs_from_pil >= 6  # the scales drawn tell the two rules apart


def test_panoptic_training_pipeline_keeps_pils_nearest(tmp_path) -> None:
    transform = _semantic_transform_of_datamodule(tmp_path, "panoptic")
    labels = _ramp(37, 53, 1)
    for seed in range(6):
        transform.set_random_seed(seed)
        out = transform(image=np.zeros((37, 53, 3), np.uint8), mask=labels)
        applied = dict(out["applied_transforms"])
        p = applied["ShortEdgeResizeCrop"]
        full = resize_labels(labels, p["out_h"], p["out_w"], rule="pil")
        crop = full[p["y0"] : p["y0"] + p["crop_h"], p["x0"] : p["x0"] + p["crop_w"]]
        if "HorizontalFlip" in applied:
            crop = crop[:, ::-1]
        np.testing.assert_array_equal(out["mask"][: p["crop_h"], : p["crop_w"]], crop)


def test_recipes_pass_the_rule_to_every_label_resize() -> None:
    labels = _ramp(30, 40, 2)
    image = np.zeros((30, 40, 3), np.uint8)
    out = lsj(size=64, min_scale=0.7, max_scale=0.7, flip_prob=0.0, label_rule="torch")(
        image=image, mask=labels
    )
    p = dict(out["applied_transforms"])["LargeScaleJitter"]
    expected = _torch_nearest(labels, p["out_h"], p["out_w"])
    np.testing.assert_array_equal(out["mask"][: p["out_h"], : p["out_w"]], expected)
    masks = np.stack([(labels % 7 == k).astype(np.uint8) for k in range(3)])
    out = semantic_jitter(32, (32, 32), color_aug=False, flip_prob=0.0, label_rule="torch")(
        image=image, masks=masks
    )
    p = dict(out["applied_transforms"])["ShortEdgeResizeCrop"]
    for mask, moved in zip(masks, out["masks"], strict=True):
        full = _torch_nearest(mask, p["out_h"], p["out_w"])
        crop = full[p["y0"] : p["y0"] + p["crop_h"], p["x0"] : p["x0"] + p["crop_w"]]
        np.testing.assert_array_equal(moved[: p["crop_h"], : p["crop_w"]], crop)
