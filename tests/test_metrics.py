"""Metrics against their definitions: panopticapi's PQ (re-implemented here, plainly), COCO AP
from pycocotools, and mIoU from a numpy confusion matrix."""

from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from m2f_lightning.metrics import PanopticQuality, SegmentationMetrics, SemanticIoU
from m2f_lightning.types import EvalTarget, InstanceSet, SegmentationResult

THINGS, STUFFS, VOID = [1, 2, 3], [7, 8], 0


def reference_pq(gt_pairs, pred_pairs, gt_crowd, things, stuffs):
    """panopticapi pq_compute_single_core + pq_average, per image loops over segments."""
    categories = things + stuffs
    stats = {c: dict(iou=0.0, tp=0, fp=0, fn=0) for c in categories}
    for gt, pred, crowd in zip(gt_pairs, pred_pairs, gt_crowd, strict=True):

        def segments(pairs):
            # as a panoptic PNG holds them: one segment per stuff class
            pairs = pairs.copy()
            pairs[np.isin(pairs[..., 0], stuffs), 1] = 0
            ids = np.zeros(pairs.shape[:2], dtype=np.int64)
            info = {}
            for key in {tuple(p) for p in pairs.reshape(-1, 2)}:
                if key[0] not in categories:
                    continue
                sid = len(info) + 1
                ids[(pairs[..., 0] == key[0]) & (pairs[..., 1] == key[1])] = sid
                info[sid] = {"category_id": key[0]}
            return ids, info

        gt_ids, gt_info = segments(gt)
        pred_ids, pred_info = segments(pred)
        for sid, seg in gt_info.items():
            seg["area"] = int((gt_ids == sid).sum())
            seg["iscrowd"] = int(crowd[gt_ids == sid].any())
        for sid, seg in pred_info.items():
            seg["area"] = int((pred_ids == sid).sum())
        pair_counts = defaultdict(int)
        for g, p in zip(gt_ids.ravel(), pred_ids.ravel(), strict=True):
            pair_counts[(int(g), int(p))] += 1
        gt_matched, pred_matched = set(), set()
        for (g, p), inter in pair_counts.items():
            if g not in gt_info or p not in pred_info:
                continue
            if gt_info[g]["iscrowd"] == 1:
                continue
            if gt_info[g]["category_id"] != pred_info[p]["category_id"]:
                continue
            union = (
                pred_info[p]["area"] + gt_info[g]["area"] - inter - pair_counts.get((VOID, p), 0)
            )
            iou = inter / union
            if iou > 0.5:
                stats[gt_info[g]["category_id"]]["tp"] += 1
                stats[gt_info[g]["category_id"]]["iou"] += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd_by_cat = {}
        for g, info in gt_info.items():
            if info["iscrowd"] == 1:
                crowd_by_cat[info["category_id"]] = g
                continue
            if g not in gt_matched:
                stats[info["category_id"]]["fn"] += 1
        for p, info in pred_info.items():
            if p in pred_matched:
                continue
            inter = pair_counts.get((VOID, p), 0)
            if info["category_id"] in crowd_by_cat:
                inter += pair_counts.get((crowd_by_cat[info["category_id"]], p), 0)
            if inter / info["area"] > 0.5:
                continue
            stats[info["category_id"]]["fp"] += 1

    def average(cats):
        pq = sq = rq = 0.0
        n = 0
        for c in cats:
            s = stats[c]
            if s["tp"] + s["fp"] + s["fn"] == 0:
                continue
            n += 1
            pq += s["iou"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
            sq += s["iou"] / s["tp"] if s["tp"] else 0.0
            rq += s["tp"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
        return (pq / n, sq / n, rq / n) if n else (0.0, 0.0, 0.0)

    return average(categories), average(things), average(stuffs)


def random_scene(rng, h=40, w=48):
    """Random gt/pred pairs with things, stuff, void and one crowd segment per category at most."""
    gt = np.zeros((h, w, 2), dtype=np.int64)
    gt[..., 0] = rng.choice(STUFFS)
    crowd = np.zeros((h, w), dtype=bool)
    for inst in range(1, rng.integers(3, 8)):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        gt[y : y + rng.integers(4, 16), x : x + rng.integers(4, 16)] = (
            rng.choice(THINGS + STUFFS),
            inst,
        )
    gt[rng.random((h, w)) < 0.05] = (VOID, 0)
    crowd_cat = rng.choice(THINGS)
    y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
    gt[y : y + 6, x : x + 6] = (crowd_cat, 99)
    crowd[y : y + 6, x : x + 6] = True
    pred = gt.copy()
    pred[crowd] = (crowd_cat, 50)  # a prediction lying on crowd → ignored, not a FP
    shift = rng.integers(-3, 4, size=2)
    pred = np.roll(pred, tuple(shift), axis=(0, 1))
    for inst in range(200, 200 + rng.integers(1, 4)):
        y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
        pred[y : y + rng.integers(2, 10), x : x + rng.integers(2, 10)] = (
            rng.choice(THINGS + STUFFS),
            inst,
        )
    pred[rng.random((h, w)) < 0.03] = (VOID, 0)
    return gt, pred, crowd


@pytest.mark.parametrize("seed", range(6))
def test_pq_equals_the_panopticapi_algorithm(seed) -> None:
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(3)]
    gts, preds, crowds = map(np.stack, zip(*scenes, strict=True))
    metric = PanopticQuality(THINGS, STUFFS)
    metric.update(torch.from_numpy(preds), torch.from_numpy(gts), torch.from_numpy(crowds))
    got = metric.compute()
    (pq, sq, rq), (pq_th, _, _), (pq_st, _, _) = reference_pq(gts, preds, crowds, THINGS, STUFFS)
    assert 0 < pq < 1
    assert got["pq"].item() == pytest.approx(pq, abs=1e-9)
    assert got["sq"].item() == pytest.approx(sq, abs=1e-9)
    assert got["rq"].item() == pytest.approx(rq, abs=1e-9)
    assert got["pq_things"].item() == pytest.approx(pq_th, abs=1e-9)
    assert got["pq_stuff"].item() == pytest.approx(pq_st, abs=1e-9)


def test_perfect_prediction_scores_one() -> None:
    gt, _, _ = random_scene(np.random.default_rng(0))
    metric = PanopticQuality(THINGS, STUFFS)
    metric.update(torch.from_numpy(gt)[None], torch.from_numpy(gt)[None])
    assert metric.compute()["pq"].item() == pytest.approx(1.0)


def test_no_predicted_segments_counts_every_segment_as_missed() -> None:
    gt, _, crowd = random_scene(np.random.default_rng(1))
    void_pred = np.zeros_like(gt)  # category 0 is void: nothing predicted
    metric = PanopticQuality(THINGS, STUFFS)
    metric.update(
        torch.from_numpy(void_pred)[None], torch.from_numpy(gt)[None], torch.from_numpy(crowd)[None]
    )
    out = metric.compute()
    assert out["pq"].item() == 0.0
    assert metric.false_negatives.sum() > 0 and metric.true_positives.sum() == 0


def test_states_merge_like_two_ranks() -> None:
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng) for _ in range(4)]
    gts, preds, crowds = (torch.from_numpy(a) for a in map(np.stack, zip(*scenes, strict=True)))
    whole, rank0, rank1 = (PanopticQuality(THINGS, STUFFS) for _ in range(3))
    whole.update(preds, gts, crowds)
    rank0.update(preds[:2], gts[:2], crowds[:2])
    rank1.update(preds[2:], gts[2:], crowds[2:])
    # what the DDP "sum" reduction does to the states
    for name in ("iou_sum", "true_positives", "false_positives", "false_negatives"):
        setattr(rank0, name, getattr(rank0, name) + getattr(rank1, name))
    assert rank0.compute()["pq"].item() == pytest.approx(whole.compute()["pq"].item(), abs=1e-12)


def test_miou_matches_a_numpy_confusion_matrix_with_ignore() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(3, 20, 20))
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 5, size=target.shape))
    pred[pred == 255] = 0
    metric = SemanticIoU(6)  # class 5 never appears: not averaged
    metric.update(torch.from_numpy(pred[:2]), torch.from_numpy(target[:2]))
    metric.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]))
    valid = target != 255
    conf = np.zeros((6, 6))
    np.add.at(conf, (target[valid], pred[valid]), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    expected = np.mean(tp[union > 0] / union[union > 0])
    assert metric.compute()["miou"].item() == pytest.approx(expected, abs=1e-12)


def test_ap_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    h, w = 32, 32
    gt_masks, gt_labels, preds = [], [], []
    for i in range(4):
        m = np.zeros((h, w), dtype=bool)
        y, x = rng.integers(0, 20, size=2)
        m[y : y + 10, x : x + 10] = True
        gt_masks.append(m)
        gt_labels.append(i % 2)
        p = np.roll(m, rng.integers(-2, 3), axis=1)
        preds.append((p, float(rng.random()), i % 2))
    preds.append((np.ones((h, w), dtype=bool), 0.3, 0))  # a false positive
    metrics = SegmentationMetrics("instance", num_classes=2, thing_ids=[0, 1], stuff_ids=[])
    result = SegmentationResult(
        instances=InstanceSet(
            masks=torch.from_numpy(np.stack([p[0] for p in preds])),
            scores=torch.tensor([p[1] for p in preds]),
            labels=torch.tensor([p[2] for p in preds]),
        )
    )
    target = EvalTarget(
        instances=InstanceSet(
            masks=torch.from_numpy(np.stack(gt_masks)),
            labels=torch.tensor(gt_labels),
            iscrowd=torch.zeros(4, dtype=torch.bool),
        )
    )
    metrics.update([result], [target])
    ours = metrics.compute()["AP"]

    def rle(m):
        r = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        r["counts"] = r["counts"].decode()
        return r

    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "height": h, "width": w}],
        "categories": [{"id": 1}, {"id": 2}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": int(c) + 1,
                "segmentation": rle(m),
                "area": float(m.sum()),
                "iscrowd": 0,
                "bbox": list(mask_util.toBbox(rle(m))),
            }
            for i, (m, c) in enumerate(zip(gt_masks, gt_labels, strict=True))
        ],
    }
    coco.createIndex()
    dets = coco.loadRes(
        [
            {"image_id": 1, "category_id": int(c) + 1, "segmentation": rle(m), "score": s}
            for m, s, c in preds
        ]
    )
    ev = COCOeval(coco, dets, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ours == pytest.approx(100 * ev.stats[0], abs=0.05)


def test_stuff_instance_ids_are_ignored() -> None:
    """Two stuff regions of one class with different instance ids are one segment."""
    gt = torch.zeros(1, 8, 8, 2, dtype=torch.int64)
    gt[..., 0] = 7
    pred = gt.clone()
    pred[0, :, :4, 1] = 1  # split in two instance ids: still one segment matching the gt
    pred[0, :, 4:, 1] = 2
    out = PanopticQuality(THINGS, STUFFS)
    out.update(pred, gt)
    assert out.compute()["pq"].item() == pytest.approx(1.0)
