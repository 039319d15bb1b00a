"""Training and evaluation targets built directly from small hand-made annotations.

Written from the mutants of `m2f_lightning/data/targets.py` that survived the data-pipeline tests
(see SURVIVORS_TARGETS_TRIAGE.md). The expected outputs are worked out by hand, not by calling the
code under test. Checked:

- `semantic_from_panoptic`: class per pixel, crowd keeps its class, void is 255, uint8.
- `train_targets` from an id map: non-crowd segments (things only for instance), segments a crop
  emptied kept only with `keep_empty`, int64 labels and bool masks also when nothing is left.
- `train_targets` from instance masks: crowd, non-thing and (without `keep_empty`) empty masks
  dropped, an empty result shaped (0, H, W), masks / labels / crowd of different lengths refused.
- `train_targets` from a semantic map: one mask per class present, 255 ignored, (0, H, W) when all
  pixels are ignored.
- `eval_targets` per task (panoptic / instance / semantic) for an id-map sample, an instance-mask
  sample (COCO / Cityscapes instance readers) and a semantic-only sample: which fields are set,
  their values and dtypes (int64 sem_seg and (category, id) pairs with void -1, bool crowd map,
  bool masks, int64 labels, bool iscrowd), the ADE20K semantic PNG used for the panoptic task
  only, `eval_instances` used for panoptic AP only, `instance_file` kept for panoptic and
  instance only.
"""

import numpy as np
import pytest
import torch

from m2f_lightning.data.catalog import DatasetMetadata
from m2f_lightning.data.datasets.base import Sample
from m2f_lightning.data.targets import eval_targets, semantic_from_panoptic, train_targets

# 0 person, 1 car: things; 2 sky, 3 road: stuff
META = DatasetMetadata(
    name="tiny",
    class_names=["person", "car", "sky", "road"],
    dataset_ids=[10, 20, 30, 40],
    is_thing=[True, True, False, False],
    colors=[(0, 0, 0)] * 4,
)

# 4x6 id map: 1 and 2 two persons, 3 sky, 4 a crowd of cars, 5 road, 0 void
ID_MAP = np.array(
    [
        [1, 1, 2, 2, 3, 3],
        [1, 1, 2, 2, 3, 3],
        [4, 4, 0, 0, 3, 3],
        [4, 4, 0, 0, 5, 5],
    ],
    dtype=np.int32,
)
SEGMENTS = [
    {"id": 1, "category": 0, "iscrowd": False},
    {"id": 2, "category": 0, "iscrowd": False},
    {"id": 3, "category": 2, "iscrowd": False},
    {"id": 4, "category": 1, "iscrowd": True},
    {"id": 5, "category": 3, "iscrowd": False},
]
SEM = np.array(
    [
        [0, 0, 0, 0, 2, 2],
        [0, 0, 0, 0, 2, 2],
        [1, 1, 255, 255, 2, 2],
        [1, 1, 255, 255, 3, 3],
    ]
)
IMAGE = np.zeros((4, 6, 3), dtype=np.uint8)
TASKS = ("panoptic", "instance", "semantic")


def region(*ids: int) -> np.ndarray:
    return np.isin(ID_MAP, ids)


def box(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[rows, cols] = 1
    return mask


def assert_tensor(actual: torch.Tensor, expected, dtype: torch.dtype) -> None:
    assert isinstance(actual, torch.Tensor)
    assert actual.dtype == dtype
    expected = np.asarray(expected)
    assert tuple(actual.shape) == expected.shape
    assert np.array_equal(actual.numpy(), expected)


def panoptic_sample(**extra) -> Sample:
    return Sample(
        image=IMAGE, file_name="a.png", image_id=1, id_map=ID_MAP, segments=SEGMENTS, **extra
    )


# semantic_from_panoptic


def test_semantic_from_panoptic_is_uint8_with_crowd_classes_and_255_void() -> None:
    sem = semantic_from_panoptic(ID_MAP, SEGMENTS)
    assert sem.dtype == np.uint8
    assert np.array_equal(sem, SEM)


# train_targets from an id map


def test_train_targets_from_an_id_map_per_task() -> None:
    pan = train_targets("panoptic", META, id_map=ID_MAP, segments=SEGMENTS)
    assert_tensor(pan["labels"], [0, 0, 2, 3], torch.int64)
    assert_tensor(pan["masks"], [region(1), region(2), region(3), region(5)], torch.bool)
    ins = train_targets("instance", META, id_map=ID_MAP, segments=SEGMENTS)
    assert_tensor(ins["labels"], [0, 0], torch.int64)
    assert_tensor(ins["masks"], [region(1), region(2)], torch.bool)
    sem = train_targets("semantic", META, id_map=ID_MAP, segments=SEGMENTS)
    assert_tensor(sem["labels"], [0, 1, 2, 3], torch.int64)
    assert_tensor(sem["masks"], [np.equal(SEM, c) for c in range(4)], torch.bool)


@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_train_targets_keep_the_segments_a_crop_emptied_only_with_keep_empty(task: str) -> None:
    cropped_away = {"id": 7, "category": 1, "iscrowd": False}
    segments = [*SEGMENTS[:4], cropped_away, SEGMENTS[4]]
    empty = np.zeros((4, 6), dtype=bool)
    kept = train_targets(task, META, id_map=ID_MAP, segments=segments, keep_empty=True)
    dropped = train_targets(task, META, id_map=ID_MAP, segments=segments, keep_empty=False)
    if task == "panoptic":
        assert_tensor(kept["labels"], [0, 0, 2, 1, 3], torch.int64)
        assert_tensor(
            kept["masks"], [region(1), region(2), region(3), empty, region(5)], torch.bool
        )
        assert_tensor(dropped["labels"], [0, 0, 2, 3], torch.int64)
        assert_tensor(dropped["masks"], [region(1), region(2), region(3), region(5)], torch.bool)
    else:
        assert_tensor(kept["labels"], [0, 0, 1], torch.int64)
        assert_tensor(kept["masks"], [region(1), region(2), empty], torch.bool)
        assert_tensor(dropped["labels"], [0, 0], torch.int64)
        assert_tensor(dropped["masks"], [region(1), region(2)], torch.bool)


@pytest.mark.parametrize("keep_empty", [False, True])
def test_train_targets_with_no_segment_left_are_int64_and_bool(keep_empty: bool) -> None:
    """Only stuff and a crowd of things: no instance target, still int64 labels, bool masks."""
    out = train_targets(
        "instance", META, id_map=ID_MAP, segments=SEGMENTS[2:], keep_empty=keep_empty
    )
    assert_tensor(out["labels"], np.zeros(0, dtype=np.int64), torch.int64)
    assert_tensor(out["masks"], np.zeros((0, 4, 6), dtype=bool), torch.bool)


# train_targets from instance masks (COCO / Cityscapes instance readers)

MASKS = np.stack(
    [
        box(slice(0, 2), slice(0, 2)),  # person
        box(slice(2, 4), slice(0, 2)),  # crowd of cars
        box(slice(0, 1), slice(0, 6)),  # a non-thing label
        np.zeros((4, 6), dtype=np.uint8),  # a car the crop emptied
        box(slice(3, 4), slice(4, 6)),  # car
    ]
)
LABELS = np.array([0, 1, 2, 1, 1], dtype=np.int64)
CROWD = np.array([False, True, False, False, False])


def test_train_targets_from_instance_masks_drop_crowd_non_things_and_empty() -> None:
    out = train_targets("instance", META, masks=MASKS, labels=LABELS, crowd=CROWD)
    assert_tensor(out["labels"], [0, 1], torch.int64)
    assert_tensor(out["masks"], MASKS[[0, 4]].astype(bool), torch.bool)


def test_train_targets_from_instance_masks_keep_empty() -> None:
    out = train_targets("instance", META, masks=MASKS, labels=LABELS, crowd=CROWD, keep_empty=True)
    assert_tensor(out["labels"], [0, 1, 1], torch.int64)
    assert_tensor(out["masks"], MASKS[[0, 3, 4]].astype(bool), torch.bool)


@pytest.mark.parametrize("which", ["all crowd", "none"])
def test_train_targets_from_instance_masks_with_none_left_are_0_by_h_by_w(which: str) -> None:
    if which == "all crowd":
        masks, labels, crowd = MASKS[:2], LABELS[:2], np.array([True, True])
    else:  # what torch_datasets passes for an image without annotations
        masks, labels, crowd = np.zeros((0, 4, 6), dtype=np.uint8), [], []
    out = train_targets("instance", META, masks=masks, labels=labels, crowd=crowd)
    assert_tensor(out["labels"], np.zeros(0, dtype=np.int64), torch.int64)
    assert_tensor(out["masks"], np.zeros((0, 4, 6), dtype=bool), torch.bool)


def test_train_targets_refuse_masks_labels_and_crowd_of_different_lengths() -> None:
    with pytest.raises(ValueError):
        train_targets("instance", META, masks=MASKS, labels=LABELS[:4], crowd=CROWD)
    with pytest.raises(ValueError):
        train_targets("instance", META, masks=MASKS[:4], labels=LABELS, crowd=CROWD)


# train_targets from a semantic map


def test_train_targets_from_a_semantic_map() -> None:
    sem_seg = np.full((4, 6), 255, dtype=np.uint8)
    sem_seg[:, :2] = 3
    sem_seg[0, 5] = 0
    out = train_targets("semantic", META, sem_seg=sem_seg)
    assert_tensor(out["labels"], [0, 3], torch.int64)
    assert_tensor(out["masks"], [sem_seg == 0, sem_seg == 3], torch.bool)


def test_train_targets_from_an_all_ignored_semantic_map() -> None:
    out = train_targets("semantic", META, sem_seg=np.full((4, 6), 255, dtype=np.uint8))
    assert_tensor(out["labels"], np.zeros(0, dtype=np.int64), torch.int64)
    assert_tensor(out["masks"], np.zeros((0, 4, 6), dtype=bool), torch.bool)


# eval_targets from an id map

# (category, segment id) per pixel, (-1, -1) on void
PAIRS_BY_HAND = np.array(
    [
        [[0, 1], [0, 1], [0, 2], [0, 2], [2, 3], [2, 3]],
        [[0, 1], [0, 1], [0, 2], [0, 2], [2, 3], [2, 3]],
        [[1, 4], [1, 4], [-1, -1], [-1, -1], [2, 3], [2, 3]],
        [[1, 4], [1, 4], [-1, -1], [-1, -1], [3, 5], [3, 5]],
    ]
)


def test_eval_targets_panoptic_from_an_id_map() -> None:
    out = eval_targets("panoptic", META, panoptic_sample(instance_file="x_instanceIds.png"))
    assert_tensor(out.sem_seg, SEM, torch.int64)
    assert_tensor(out.panoptic, PAIRS_BY_HAND, torch.int64)
    assert_tensor(out.panoptic_crowd, region(4), torch.bool)
    assert_tensor(out.instances.masks, [region(1), region(2), region(4)], torch.bool)
    assert_tensor(out.instances.labels, [0, 0, 1], torch.int64)
    assert_tensor(out.instances.iscrowd, [False, False, True], torch.bool)
    assert out.instances.scores is None
    assert out.instance_file == "x_instanceIds.png"


def test_eval_targets_panoptic_without_crowd_has_an_all_false_bool_crowd_map() -> None:
    segments = [s for s in SEGMENTS if not s["iscrowd"]]
    sample = Sample(image=IMAGE, file_name="a.png", image_id=1, id_map=ID_MAP, segments=segments)
    out = eval_targets("panoptic", META, sample)
    assert_tensor(out.panoptic_crowd, np.zeros((4, 6), dtype=bool), torch.bool)
    pairs = PAIRS_BY_HAND.copy()
    pairs[region(4)] = -1
    assert_tensor(out.panoptic, pairs, torch.int64)
    assert out.instance_file is None


def test_eval_targets_instance_from_an_id_map() -> None:
    out = eval_targets("instance", META, panoptic_sample(instance_file="x_instanceIds.png"))
    assert out.sem_seg is None and out.panoptic is None and out.panoptic_crowd is None
    assert_tensor(out.instances.masks, [region(1), region(2), region(4)], torch.bool)
    assert_tensor(out.instances.labels, [0, 0, 1], torch.int64)
    assert_tensor(out.instances.iscrowd, [False, False, True], torch.bool)
    assert out.instance_file == "x_instanceIds.png"


def test_eval_targets_semantic_from_an_id_map() -> None:
    out = eval_targets("semantic", META, panoptic_sample(instance_file="x_instanceIds.png"))
    assert_tensor(out.sem_seg, SEM, torch.int64)
    assert out.panoptic is None and out.panoptic_crowd is None and out.instances is None
    assert out.instance_file is None  # only the instance evaluators read it


def test_eval_targets_instance_without_things_are_empty_with_their_dtypes() -> None:
    sample = Sample(
        image=IMAGE,
        file_name="a.png",
        image_id=1,
        id_map=ID_MAP,
        segments=[SEGMENTS[2], SEGMENTS[4]],
    )
    for task in ("panoptic", "instance"):
        instances = eval_targets(task, META, sample).instances
        assert_tensor(instances.masks, np.zeros((0, 4, 6), dtype=bool), torch.bool)
        assert_tensor(instances.labels, np.zeros(0, dtype=np.int64), torch.int64)
        assert_tensor(instances.iscrowd, np.zeros(0, dtype=bool), torch.bool)


def test_eval_targets_use_the_datasets_semantic_png_for_the_panoptic_task_only() -> None:
    """ADE20K: the reader puts the semantic PNG beside the panoptic one (mIoU of a panoptic
    model, as the official evaluator); a semantic run derives it from the panoptic PNG."""
    ade_sem = np.full((4, 6), 3, dtype=np.uint8)
    ade_sem[0, 0] = 255
    sample = panoptic_sample(sem_seg=ade_sem)
    assert_tensor(eval_targets("panoptic", META, sample).sem_seg, ade_sem, torch.int64)
    assert_tensor(eval_targets("semantic", META, sample).sem_seg, SEM, torch.int64)
    assert eval_targets("instance", META, sample).sem_seg is None


def test_eval_targets_use_the_instance_json_for_panoptic_ap_only() -> None:
    """`eval_instances` (instance JSON of the same image) replaces the thing segments for the
    panoptic task's AP; an instance run scores the segments of the id map."""
    masks = np.stack([box(slice(0, 4), slice(3, 5)), box(slice(1, 3), slice(0, 1))])
    sample = panoptic_sample(
        eval_instances=(
            masks,
            np.array([1, 0], dtype=np.int64),
            np.array([False, True]),
            np.array([7.0, 2.5]),  # the JSON's areas, not the masks' pixel counts
        )
    )
    pan = eval_targets("panoptic", META, sample).instances
    assert_tensor(pan.masks, masks.astype(bool), torch.bool)
    assert_tensor(pan.labels, [1, 0], torch.int64)
    assert_tensor(pan.iscrowd, [False, True], torch.bool)
    assert pan.areas.tolist() == [7.0, 2.5]
    ins = eval_targets("instance", META, sample).instances
    assert_tensor(ins.masks, [region(1), region(2), region(4)], torch.bool)
    assert_tensor(ins.labels, [0, 0, 1], torch.int64)
    assert_tensor(ins.iscrowd, [False, False, True], torch.bool)
    assert eval_targets("semantic", META, sample).instances is None


# eval_targets from instance masks (COCO instance, Cityscapes instance readers)


def instance_sample() -> Sample:
    return Sample(
        image=IMAGE,
        file_name="a.png",
        image_id="a",
        masks=MASKS[[0, 2, 1]],
        labels=np.array([0, 2, 1], dtype=np.int64),
        crowd=np.array([False, False, True]),
        instance_file="a_gtFine_instanceIds.png",
    )


@pytest.mark.parametrize("task", TASKS)
def test_eval_targets_from_instance_masks_keep_the_things(task: str) -> None:
    out = eval_targets(task, META, instance_sample())
    assert out.sem_seg is None and out.panoptic is None and out.panoptic_crowd is None
    assert_tensor(out.instances.masks, MASKS[[0, 1]].astype(bool), torch.bool)
    assert_tensor(out.instances.labels, [0, 1], torch.int64)
    assert_tensor(out.instances.iscrowd, [False, True], torch.bool)
    expected_file = None if task == "semantic" else "a_gtFine_instanceIds.png"
    assert out.instance_file == expected_file


def test_eval_targets_from_no_instance_masks() -> None:
    sample = Sample(
        image=IMAGE,
        file_name="a.png",
        image_id="a",
        masks=np.zeros((0, 4, 6), dtype=np.uint8),
        labels=np.zeros(0, dtype=np.int64),
        crowd=np.zeros(0, dtype=bool),
    )
    out = eval_targets("instance", META, sample)
    assert_tensor(out.instances.masks, np.zeros((0, 4, 6), dtype=bool), torch.bool)
    assert_tensor(out.instances.labels, np.zeros(0, dtype=np.int64), torch.int64)
    assert_tensor(out.instances.iscrowd, np.zeros(0, dtype=bool), torch.bool)
    assert out.instance_file is None


# eval_targets from a semantic map only


@pytest.mark.parametrize("task", TASKS)
def test_eval_targets_from_a_semantic_map(task: str) -> None:
    sem_seg = SEM.astype(np.uint8)
    sample = Sample(image=IMAGE, file_name="a.png", image_id=1, sem_seg=sem_seg)
    out = eval_targets(task, META, sample)
    assert_tensor(out.sem_seg, SEM, torch.int64)
    assert out.panoptic is None and out.panoptic_crowd is None and out.instances is None
    assert out.instance_file is None
