"""Mask AP against pycocotools' `COCOeval` itself, the evaluator of detectron2's COCOEvaluator
that the official Mask2Former reports AP with: scenes whose IoUs and recalls sit exactly on
COCOeval's thresholds, tied scores within and across images, crowd regions, objects of all three
sizes, an image without ground truth; and the ground truth's JSON `area` deciding APs/APm/APl."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from m2f_lightning.data import build_reader
from m2f_lightning.data.catalog import get_metadata
from m2f_lightning.data.datasets.instance import CocoInstanceReader
from m2f_lightning.data.io import DataError
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.data.targets import eval_targets
from m2f_lightning.metrics import SegmentationMetrics
from m2f_lightning.types import EvalTarget, InstanceSet, SegmentationResult

H = W = 160
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCOeval's IoU thresholds; a prediction made of the first t·A pixels of a ground truth of A
# pixels has an IoU of exactly t
ON_THRESHOLD = [0.5 + 0.05 * k for k in range(10)]
# rectangles below 32², between 32² and 96², above 96² pixels: all with areas divisible by 20
SIZES = [(10, 20), (8, 40), (40, 50), (20, 100), (110, 100), (100, 120)]


def _scene(rng: np.random.Generator) -> tuple[list, list, list, list]:
    """(gt masks, gt labels, gt crowd flags, [(mask, score, label)] predictions) of one image."""
    gts, labels, crowd, preds = [], [], [], []
    for _ in range(rng.integers(2, 6)):
        gh, gw = SIZES[rng.integers(len(SIZES))]
        if rng.random() < 0.5:
            gh, gw = gw, gh
        y, x = rng.integers(0, H - gh + 1), rng.integers(0, W - gw + 1)
        mask = np.zeros((H, W), bool)
        mask[y : y + gh, x : x + gw] = True
        label = int(rng.integers(2))
        gts.append(mask)
        labels.append(label)
        crowd.append(bool(rng.random() < 0.15))
        pixels = np.flatnonzero(mask.ravel())
        for _ in range(rng.integers(0, 3)):
            iou = ON_THRESHOLD[rng.integers(10)] if rng.random() < 0.8 else rng.random()
            pred = np.zeros(H * W, bool)
            pred[pixels[: round(iou * len(pixels))]] = True
            score = float(rng.choice([0.25, 0.5, 0.75, 1.0]))  # ties within and across images
            preds.append((pred.reshape(H, W), score, label if rng.random() < 0.9 else 1 - label))
    for _ in range(rng.integers(0, 2)):  # a false positive
        pred = np.zeros((H, W), bool)
        y, x = rng.integers(0, H - 20, size=2)
        pred[y : y + 20, x : x + 20] = True
        preds.append((pred, float(rng.choice([0.25, 0.5, 0.75])), int(rng.integers(2))))
    return gts, labels, crowd, preds


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _cocoeval(scenes, image_ids, iou_thresholds=None, rec_thresholds=None) -> np.ndarray:
    """COCOeval("segm").stats[:6] in percent, the areas the masks' pixel counts."""
    images, annotations, detections = [], [], []
    for image_id, (gts, labels, crowd, preds) in zip(image_ids, scenes, strict=True):
        images.append({"id": image_id, "height": H, "width": W})
        for mask, label, is_crowd in zip(gts, labels, crowd, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "segmentation": _rle(mask),
                    "area": float(mask.sum()),
                    "iscrowd": int(is_crowd),
                }
            )
        detections += [
            {"image_id": image_id, "category_id": c, "segmentation": _rle(m), "score": s}
            for m, s, c in preds
        ]
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 0}, {"id": 1}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), "segm")
        if iou_thresholds is not None:
            evaluator.params.iouThrs = iou_thresholds
            evaluator.params.recThrs = rec_thresholds
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return 100 * evaluator.stats[:6]


def _ours(scenes, image_ids, order) -> dict[str, float]:
    metrics = SegmentationMetrics("instance", 2, [0, 1], [])
    for i in order:  # the order images arrive in (a DDP split gathers them rank by rank)
        gts, labels, crowd, preds = scenes[i]
        result = SegmentationResult(
            instances=InstanceSet(
                masks=torch.from_numpy(_stack([p[0] for p in preds])),
                scores=torch.tensor([p[1] for p in preds], dtype=torch.float32),
                labels=torch.tensor([p[2] for p in preds], dtype=torch.int64),
            ),
            image_id=image_ids[i],
        )
        target = EvalTarget(
            instances=InstanceSet(
                masks=torch.from_numpy(_stack(gts)),
                labels=torch.tensor(labels, dtype=torch.int64),
                iscrowd=torch.tensor(crowd, dtype=torch.bool),
            )
        )
        metrics.update([result], [target])
    return metrics.compute()


def _stack(masks: list[np.ndarray]) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, H, W), bool)


def _assert_equal(ours: dict[str, float], expected: np.ndarray) -> None:
    for key, value in zip(KEYS, expected, strict=True):
        if value < 0:  # no ground truth of that size: undefined, left out
            assert key not in ours, key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-3), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_ap_equals_cocoeval_with_ties_crowds_and_all_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scenes = [_scene(rng) for _ in range(6)]
    scenes.append(([], [], [], _scene(rng)[3]))  # detections only: all false positives
    image_ids = [int(i) for i in rng.choice(1000, size=len(scenes), replace=False)]
    expected = _cocoeval(scenes, image_ids)
    assert min(expected[3:]) >= 0  # every size bucket has ground truth
    # the scenes put IoUs and recalls on the thresholds: thresholds built as torchmetrics
    # builds them (float32) give other numbers
    float32 = _cocoeval(
        scenes,
        image_ids,
        np.array(torch.linspace(0.5, 0.95, 10).tolist()),
        np.array(torch.linspace(0.0, 1.0, 101).tolist()),
    )
    assert np.abs(float32 - expected).max() > 0.01
    _assert_equal(_ours(scenes, image_ids, range(len(scenes))), expected)
    # images arriving in another order (ranks, shuffled loaders): COCOeval orders them by id
    _assert_equal(_ours(scenes, image_ids, rng.permutation(len(scenes))), expected)


PERSON = 1  # COCO category id of the first thing class


def _square(x: int, y: int, side: int) -> list[list[float]]:
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def test_size_buckets_use_the_annotation_area_of_the_json(tmp_path: Path) -> None:
    """Each ground truth's JSON `area` puts it in another size bucket than its pixel count (as
    an area measured on the polygon, or before a resize, can): COCOeval buckets by the JSON, and
    so do we, through reader → EvalTarget → metric."""
    size = 200
    squares = [  # (x, y, side, JSON area): pixels small/medium/large, JSON medium/small/medium
        (2, 2, 20, 2000.0),
        (40, 2, 40, 500.0),
        (2, 90, 104, 9000.0),
        (120, 120, 25, 700.5),  # small both ways
    ]
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": size, "width": size}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 7,
                "category_id": PERSON,
                "segmentation": _square(x, y, side),
                "area": area,
                "iscrowd": 0,
            }
            for k, (x, y, side, area) in enumerate(squares)
        ],
        "categories": [{"id": PERSON, "name": "person"}],
    }
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(data))
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(tmp_path / "a.png")
    meta = get_metadata("coco_instance")
    sample = CocoInstanceReader(json_file, tmp_path, meta)[0]
    target = eval_targets("instance", meta, sample)

    # predictions: the first 62 % / 87 % / 100 % / 0 % of each square's pixels, and a stray one
    gt_masks = target.instances.masks.numpy()
    preds = []
    for mask, share, score in zip(
        gt_masks, (0.62, 0.87, 1.0, 0.0), (0.9, 0.8, 0.7, 0.6), strict=True
    ):
        pixels = np.flatnonzero(mask.ravel())
        pred = np.zeros(mask.size, bool)
        pred[pixels[: round(share * len(pixels))]] = True
        preds.append((pred.reshape(mask.shape), score))
    stray = np.zeros((size, size), bool)
    stray[150:190, 20:60] = True
    preds.append((stray, 0.95))
    result = SegmentationResult(
        instances=InstanceSet(
            masks=torch.from_numpy(np.stack([p[0] for p in preds])),
            scores=torch.tensor([p[1] for p in preds], dtype=torch.float32),
            labels=torch.zeros(len(preds), dtype=torch.int64),
        ),
        image_id=7,
    )
    metrics = SegmentationMetrics("instance", 80, list(range(80)), [])
    metrics.update([result], [target])
    ours = metrics.compute()

    coco = COCO(str(json_file))
    detections = [
        {"image_id": 7, "category_id": PERSON, "segmentation": _rle(m), "score": s}
        for m, s in preds
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(detections), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = 100 * evaluator.stats[:6]
    _assert_equal(ours, expected)
    assert target.instances.areas.tolist() == [s[3] for s in squares]
    # by pixel count the buckets (and their APs) would be others
    target.instances.areas = None
    metrics.reset()
    metrics.update([result], [target])
    by_pixels = metrics.compute()
    sizes = ("APs", "APm", "APl")
    assert [by_pixels.get(k) for k in sizes] != [ours.get(k) for k in sizes]


def test_class_metrics_give_cocoevals_ap_of_each_category() -> None:
    rng = np.random.default_rng(5)
    scenes = [_scene(rng) for _ in range(4)]
    image_ids = [3, 1, 4, 2]
    metrics = SegmentationMetrics("instance", 2, [0, 1], [], class_metrics=True)
    for (gts, labels, crowd, preds), image_id in zip(scenes, image_ids, strict=True):
        metrics.update(
            [
                SegmentationResult(
                    instances=InstanceSet(
                        masks=torch.from_numpy(_stack([p[0] for p in preds])),
                        scores=torch.tensor([p[1] for p in preds], dtype=torch.float32),
                        labels=torch.tensor([p[2] for p in preds], dtype=torch.int64),
                    ),
                    image_id=image_id,
                )
            ],
            [
                EvalTarget(
                    instances=InstanceSet(
                        masks=torch.from_numpy(_stack(gts)),
                        labels=torch.tensor(labels, dtype=torch.int64),
                        iscrowd=torch.tensor(crowd, dtype=torch.bool),
                    )
                )
            ],
        )
    values = metrics.ap.compute()
    assert values["classes"].tolist() == [0, 1]
    for category in (0, 1):  # COCOeval restricted to one category
        scenes_of = [
            (
                [m for m, c in zip(g, lab, strict=True) if c == category],
                [c for c in lab if c == category],
                [k for k, c in zip(cr, lab, strict=True) if c == category],
                [p for p in preds if p[2] == category],
            )
            for g, lab, cr, preds in scenes
        ]
        expected = _cocoeval(scenes_of, image_ids)[0]
        assert 100 * float(values["map_per_class"][category]) == pytest.approx(expected, abs=1e-3)


def test_panoptic_segments_carry_their_json_area(tmp_path: Path) -> None:
    """Without the instances JSON, a panoptic dataset's AP is scored against its thing segments,
    bucketed by `segments_info[].area` of the panoptic JSON."""
    write_dataset("coco_panoptic", tmp_path, num=1, num_val=2, seed=4, size=(48, 64))
    json_file = tmp_path / "coco" / "annotations" / "panoptic_val2017.json"
    data = json.loads(json_file.read_text())
    for ann in data["annotations"]:
        for k, segment in enumerate(ann["segments_info"]):
            segment["area"] = 1000.5 * (k + 1)  # not the pixel count
    json_file.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="instances_val2017"):
        reader = build_reader("coco", "panoptic", "val", tmp_path)
    sample = reader[0]
    target = eval_targets("panoptic", reader.metadata, sample)
    things = set(reader.metadata.thing_ids)
    info = next(a for a in data["annotations"] if a["image_id"] == sample.image_id)
    categories = [reader.metadata.contiguous_id(s["category_id"]) for s in info["segments_info"]]
    expected = [
        s["area"] for s, c in zip(info["segments_info"], categories, strict=True) if c in things
    ]
    assert len(expected) > 0
    assert target.instances.areas.tolist() == expected


@pytest.mark.parametrize("area", ["12", -1, None, float("nan"), True])
def test_an_area_that_is_not_a_number_names_the_file_and_annotation(tmp_path, area) -> None:
    ann = {"id": 5, "image_id": 1, "category_id": PERSON, "segmentation": _square(1, 1, 4)}
    if area is not None:
        ann["area"] = area
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [ann],
        "categories": [{"id": PERSON, "name": "person"}],
    }
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(data))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    reader = CocoInstanceReader(json_file, tmp_path, get_metadata("coco_instance"))
    if area is None:  # no area: the metric counts the mask's pixels
        assert np.isnan(reader[0].areas).all()
        return
    with pytest.raises(DataError, match=r"instances\.json \(image id 1\): annotation id 5: area"):
        reader[0]
