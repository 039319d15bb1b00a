"""Metrics against their definitions: panopticapi's PQ (re-implemented here, plainly), COCO AP
from pycocotools, and mIoU from a numpy confusion matrix."""

import os
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from m2f_lightning.metrics import PanopticQuality, SegmentationMetrics, SemanticIoU
from m2f_lightning.types import EvalTarget, InstanceSet, Segment, SegmentationResult

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


def _two_rank_inputs():
    """Five images of panoptic, instance and semantic ground truth and predictions."""
    rng = np.random.default_rng(7)
    results, targets = [], []
    for _ in range(5):
        gt, pred, crowd = random_scene(rng)
        gt_masks = np.stack([(gt[..., 0] == c) & (gt[..., 1] == i) for c, i in ((1, 1), (2, 2))])
        pred_masks = np.roll(gt_masks, rng.integers(-4, 5), axis=2)
        sem = np.where(np.isin(gt[..., 0], THINGS + STUFFS), gt[..., 0], 255)
        pred_sem = np.where(rng.random(sem.shape) < 0.8, np.where(sem == 255, 0, sem), 7)
        segment_ids = np.zeros(pred.shape[:2], dtype=np.int32)
        segments = []
        for key in {tuple(k) for k in pred.reshape(-1, 2) if k[0] != VOID}:
            segments.append(Segment(id=len(segments) + 1, category_id=int(key[0]), isthing=False))
            segment_ids[(pred[..., 0] == key[0]) & (pred[..., 1] == key[1])] = len(segments)
        results.append(
            SegmentationResult(
                panoptic_seg=torch.from_numpy(segment_ids),
                segments=segments,
                instances=InstanceSet(
                    masks=torch.from_numpy(pred_masks),
                    scores=torch.from_numpy(rng.random(2)).float(),
                    labels=torch.tensor([1, 2]),
                ),
                sem_seg=torch.nn.functional.one_hot(torch.from_numpy(pred_sem), 9)
                .permute(2, 0, 1)
                .float(),
            )
        )
        targets.append(
            EvalTarget(
                sem_seg=torch.from_numpy(sem),
                panoptic=torch.from_numpy(gt),
                panoptic_crowd=torch.from_numpy(crowd),
                instances=InstanceSet(
                    masks=torch.from_numpy(gt_masks),
                    labels=torch.tensor([1, 2]),
                    iscrowd=torch.zeros(2, dtype=torch.bool),
                ),
            )
        )
    return results, targets


def _metrics() -> SegmentationMetrics:
    return SegmentationMetrics("panoptic", num_classes=9, thing_ids=THINGS, stuff_ids=STUFFS)


def _sync_worker(rank: int, port: str, out) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results, targets = _two_rank_inputs()
    share = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven: 3 images and 2
    metrics = _metrics()
    metrics.update(results[share], targets[share])
    out[rank] = metrics.compute()  # torchmetrics synchronises the states of both ranks here
    dist.destroy_process_group()


def _rank_states(metrics: SegmentationMetrics) -> dict[int, torch.Tensor]:
    """Each tensor state of the PQ and mIoU metrics, by the id of the object."""
    return {
        id(getattr(m, attr)): getattr(m, attr)
        for m in (metrics.pq, metrics.miou)
        for attr in m._reductions
    }


def test_metric_sync_merges_the_states_of_another_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchmetrics' own synchronisation, in one process: `compute()` of "rank 0" (3 images)
    gathers the states of "rank 1" (2 images) through a stand-in for the collectives, and
    gives the metrics of all 5 images. (The real thing, with processes: the slow test below.)"""
    import torch.distributed as dist

    results, targets = _two_rank_inputs()
    whole = _metrics()
    whole.update(results, targets)
    expected = whole.compute()
    rank0, rank1 = _metrics(), _metrics()
    rank0.update(results[:3], targets[:3])
    rank1.update(results[3:], targets[3:])
    assert rank0.compute()["PQ"] != pytest.approx(expected["PQ"])  # the shares differ
    rank0.reset()
    rank0.update(results[:3], targets[:3])

    pairs = {}
    for (key, mine), theirs in zip(
        _rank_states(rank0).items(), _rank_states(rank1).values(), strict=True
    ):
        pairs[key] = (mine, theirs)
    gathered_calls = []

    def gather_tensors(tensor, group=None):  # what gather_all_tensors returns on 2 ranks
        gathered_calls.append(tensor)
        mine, theirs = pairs[id(tensor)]
        return [mine, theirs]

    other_lists = iter([getattr(rank1.ap, attr) for attr in rank1.ap._defaults])

    def all_gather_object(out, local, group=None):  # for AP's lists of unequal lengths
        out[0], out[1] = local, list(next(other_lists))

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    for metric in (rank0.pq, rank0.ap, rank0.miou):
        metric.distributed_available_fn = lambda: True
        metric.dist_sync_fn = gather_tensors
    assert rank0.compute() == pytest.approx(expected, abs=1e-9)
    assert len(gathered_calls) == len(pairs)


@pytest.mark.slow
def test_metrics_synchronised_over_two_ranks_equal_one_process() -> None:
    """Two gloo processes, 3 and 2 images: every rank computes the metrics of all 5 images
    (torchmetrics' own sync: all-reduced PQ/mIoU states, AP's lists gathered whole)."""
    import torch.multiprocessing as mp

    results, targets = _two_rank_inputs()
    whole = _metrics()
    whole.update(results, targets)
    expected = whole.compute()
    assert all(0 < expected[k] < 100 for k in ("PQ", "AP", "mIoU")), expected
    part = _metrics()
    part.update(results[:3], targets[:3])
    assert part.compute()["PQ"] != pytest.approx(expected["PQ"])  # the shares differ
    out = mp.Manager().dict()
    port = str(20000 + os.getpid() % 20000)
    mp.spawn(_sync_worker, args=(port, out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank] == pytest.approx(expected, abs=1e-9), rank


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
    assert ours == pytest.approx(100 * ev.stats[0], abs=1e-3)


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


@st.composite
def panels(draw):
    """Small random panels: (category, instance) per pixel over things, stuff and void, with at
    most one crowd ground-truth segment per thing category (as COCO panoptic stores them)."""
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    cats = st.sampled_from([VOID, -1, -3, *THINGS, *STUFFS, 99])  # unknown ids are void
    pairs = st.tuples(cats, st.integers(0, 2))

    def panel():
        flat = draw(st.lists(pairs, min_size=h * w, max_size=h * w))
        return np.array(flat, dtype=np.int64).reshape(h, w, 2)

    gts, preds, crowds = [], [], []
    for _ in range(n):
        gt, pred = panel(), panel()
        crowd = np.zeros((h, w), dtype=bool)
        for cat in draw(st.sets(st.sampled_from(THINGS), max_size=2)):
            instance = draw(st.integers(0, 2))
            crowd |= (gt[..., 0] == cat) & (gt[..., 1] == instance)
        gts.append(gt)
        preds.append(pred)
        crowds.append(crowd)
    return np.stack(gts), np.stack(preds), np.stack(crowds)


@settings(max_examples=60, deadline=None)
@given(panels())
def test_pq_equals_the_panopticapi_rules_on_any_small_panel(sample) -> None:
    gts, preds, crowds = sample
    metric = PanopticQuality(THINGS, STUFFS)
    metric.update(torch.from_numpy(preds), torch.from_numpy(gts), torch.from_numpy(crowds))
    got = metric.compute()
    (pq, sq, rq), (pq_th, sq_th, _), (pq_st, _, rq_st) = reference_pq(
        gts, preds, crowds, THINGS, STUFFS
    )
    for key, value in (
        ("pq", pq),
        ("sq", sq),
        ("rq", rq),
        ("pq_things", pq_th),
        ("sq_things", sq_th),
        ("pq_stuff", pq_st),
        ("rq_stuff", rq_st),
    ):
        assert got[key].item() == pytest.approx(value, abs=1e-9), key


def _rle(mask: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode()
    return r


def _pycocotools_stats(results, targets) -> np.ndarray:
    """COCOeval("segm").stats of SegmentationResult instances against EvalTarget instances."""
    images, annotations, detections = [], [], []
    categories = set()
    for image_id, (result, target) in enumerate(zip(results, targets, strict=True), start=1):
        h, w = target.instances.masks.shape[-2:]
        images.append({"id": image_id, "height": int(h), "width": int(w)})
        for m, c, crowd in zip(
            target.instances.masks.numpy(),
            target.instances.labels.tolist(),
            target.instances.iscrowd.tolist(),
            strict=True,
        ):
            categories.add(c)
            rle = _rle(m)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": c,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "iscrowd": int(crowd),
                    "bbox": list(mask_util.toBbox(rle)),
                }
            )
        inst = result.instances
        for m, s, c in zip(
            inst.masks.numpy(), inst.scores.tolist(), inst.labels.tolist(), strict=True
        ):
            categories.add(c)
            detections.append(
                {"image_id": image_id, "category_id": c, "segmentation": _rle(m), "score": s}
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "categories": [{"id": c} for c in sorted(categories)],
        "annotations": annotations,
    }
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(detections), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_segmentation_metrics_of_the_panoptic_task_equal_the_references() -> None:
    """SegmentationMetrics from typed results: PQ/SQ/RQ (all, things, stuff) from the panopticapi
    transcription, mIoU from a numpy confusion matrix, AP/AP50/AP75 from pycocotools."""
    results, targets = _two_rank_inputs()
    metrics = _metrics()
    metrics.update(results, targets)
    got = metrics.compute()
    pred_pairs = []
    for r in results:
        pairs = np.full((*r.panoptic_seg.shape, 2), -1, dtype=np.int64)
        for s in r.segments:
            pairs[r.panoptic_seg.numpy() == s.id] = (s.category_id, s.id)
        pred_pairs.append(pairs)
    gts = np.stack([t.panoptic.numpy() for t in targets])
    crowds = np.stack([t.panoptic_crowd.numpy() for t in targets])
    (pq, sq, rq), (pq_th, sq_th, rq_th), (pq_st, sq_st, rq_st) = reference_pq(
        gts, np.stack(pred_pairs), crowds, THINGS, STUFFS
    )
    expected = {
        "PQ": pq, "SQ": sq, "RQ": rq, "PQ_th": pq_th, "SQ_th": sq_th, "RQ_th": rq_th,
        "PQ_st": pq_st, "SQ_st": sq_st, "RQ_st": rq_st,
    }  # fmt: skip
    for key, value in expected.items():
        assert got[key] == pytest.approx(100 * value, abs=1e-7), key
    conf = np.zeros((9, 9))
    for r, t in zip(results, targets, strict=True):
        gt, pred = t.sem_seg.numpy(), r.sem_seg.argmax(0).numpy()
        valid = gt != 255
        np.add.at(conf, (gt[valid], pred[valid]), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    assert got["mIoU"] == pytest.approx(100 * np.mean(tp[union > 0] / union[union > 0]), abs=1e-7)
    stats = _pycocotools_stats(results, targets)
    for key, index in (("AP", 0), ("AP50", 1), ("AP75", 2)):
        assert got[key] == pytest.approx(100 * stats[index], abs=1e-3), key
    for key, index in (("APs", 3), ("APm", 4), ("APl", 5)):
        if stats[index] < 0:  # no ground truth of that size: undefined, left out
            assert key not in got, key
        else:
            assert got[key] == pytest.approx(100 * stats[index], abs=1e-3), key
    per_class = metrics.per_class()
    assert per_class["IoU"].shape == (9,)
    assert np.nanmean(per_class["IoU"].numpy()) == pytest.approx(got["mIoU"], abs=1e-7)
    assert np.nanmean(per_class["PQ"].numpy()) == pytest.approx(got["PQ"], abs=1e-7)
    metrics.reset()
    metrics.update(results[:1], targets[:1])
    assert metrics.compute()["PQ"] != pytest.approx(got["PQ"])  # reset forgot the 5 images


def test_miou_averages_the_ground_truth_classes_and_is_0_without_any() -> None:
    """detectron2's SemSegEvaluator: classes absent from the ground truth (class 1, predicted
    on one pixel) are left out of the mean."""
    metric = SemanticIoU(3)
    metric.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))  # class 1: union of 1 pixel
    out = metric.compute()
    assert out["miou"].item() == pytest.approx(0.5)
    assert torch.isnan(out["iou_per_class"][1]) and torch.isnan(out["iou_per_class"][2])
    empty = SemanticIoU(3)
    empty.update(torch.tensor([[[0]]]), torch.tensor([[[255]]]))
    assert empty.compute()["miou"].item() == 0.0


def _one_image(gt: np.ndarray, pred: np.ndarray, crowd: np.ndarray | None = None) -> dict:
    crowd = np.zeros(gt.shape[:2], dtype=bool) if crowd is None else crowd
    metric = PanopticQuality(THINGS, STUFFS)
    metric.update(
        torch.from_numpy(pred[None]), torch.from_numpy(gt[None]), torch.from_numpy(crowd[None])
    )
    out = metric.compute()
    reference = reference_pq(gt[None], pred[None], crowd[None], THINGS, STUFFS)[0]
    assert [out[k].item() for k in ("pq", "sq", "rq")] == pytest.approx(reference, abs=1e-12)
    return out


def test_an_iou_of_exactly_one_half_is_not_a_match() -> None:
    """panopticapi matches on IoU > 0.5: a prediction covering half of a segment is a false
    positive and the segment a false negative (PQ 0), one pixel more is a match."""
    thing = THINGS[0]
    gt = np.zeros((2, 4, 2), dtype=np.int64)
    gt[0] = (thing, 1)  # a 4-pixel segment over void
    pred = np.zeros_like(gt)
    pred[0, :2] = (thing, 1)  # IoU = 2 / 4
    out = _one_image(gt, pred)
    assert out["pq"].item() == 0 and out["rq"].item() == 0
    pred[0, 2] = (thing, 1)  # IoU = 3 / 4
    assert _one_image(gt, pred)["pq"].item() == pytest.approx(0.75)


def test_a_prediction_exactly_half_on_void_is_a_false_positive() -> None:
    """An unmatched prediction is ignored only when more than half of it lies on void."""
    thing, stuff = THINGS[0], STUFFS[0]
    gt = np.zeros((2, 6, 2), dtype=np.int64)
    gt[0] = (stuff, 0)  # row 0: stuff; row 1: void
    pred = np.zeros_like(gt)
    pred[0, :4] = (stuff, 0)  # IoU 4 / 6: a match
    pred[0, 4:] = (thing, 5)  # a thing prediction with 2 pixels on the stuff segment ...
    pred[1, :2] = (thing, 5)  # ... and 2 on void: exactly half
    out = _one_image(gt, pred)
    assert out["rq_per_class"][THINGS.index(thing)].item() == 0  # counted: one FP, no TP
    pred[1, 2] = (thing, 5)  # 3 of its 5 pixels on void: ignored, the class not present
    out = _one_image(gt, pred)
    assert torch.isnan(out["pq_per_class"][THINGS.index(thing)])


def test_thing_instances_0_and_1_are_two_segments() -> None:
    """Instance id 0 is an instance like any other (not merged with instance 1)."""
    thing = THINGS[0]
    gt = np.zeros((2, 4, 2), dtype=np.int64)
    gt[:, :2] = (thing, 0)
    gt[:, 2:] = (thing, 1)
    pred = gt.copy()
    pred[...] = (thing, 7)  # one segment over both: IoU 1/2 with each, no match
    out = _one_image(gt, pred)
    assert out["pq"].item() == 0


def test_a_one_pixel_segment_predicted_exactly_has_iou_1() -> None:
    thing = THINGS[0]
    gt = np.zeros((3, 3, 2), dtype=np.int64)
    gt[1, 1] = (thing, 1)
    assert _one_image(gt, gt.copy())["pq"].item() == 1.0


def test_segments_that_overlap_nothing_of_the_other_side() -> None:
    """The last ground-truth and the last predicted segment share no pixel (the pair table
    still has a cell for them)."""
    gt = np.zeros((2, 6, 2), dtype=np.int64)
    gt[:, :3] = (THINGS[0], 1)
    pred = np.zeros_like(gt)
    pred[:, 3:] = (THINGS[1], 1)  # on ground-truth void only: ignored
    out = _one_image(gt, pred)
    assert out["pq"].item() == 0 and out["rq_per_class"][0].item() == 0
