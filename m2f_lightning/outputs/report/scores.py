"""Per-image scores of one result against its ground truth, computed here (independently of
`metrics.py`, which only keeps dataset totals): the segment matches of panoptic quality, the
semantic confusion matrix and COCO-style mask AP of one image.

Plain numpy on the image's arrays; nothing here depends on Lightning or on the data code.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# COCO's object-size thresholds (area in pixels of the ground-truth segment)
SIZE_BUCKETS = ("small", "medium", "large")
SMALL_AREA, MEDIUM_AREA = 32**2, 96**2


def size_bucket(area: np.ndarray) -> np.ndarray:
    """0 small (< 32²), 1 medium (< 96²), 2 large, per area."""
    return np.where(area < SMALL_AREA, 0, np.where(area < MEDIUM_AREA, 1, 2))


@dataclass
class PanopticMatch:
    """The segments of one image and how they matched (panopticapi's rules).

    gt_*: one entry per ground-truth segment (crowd ones included, flagged); gt_iou is the IoU of
    its match, 0 when unmatched. pred_*: one entry per predicted segment; pred_fp says whether an
    unmatched prediction counts as a false positive (not when mostly on void or same-class crowd).
    Categories are indices into the metric's category list."""

    gt_category: np.ndarray
    gt_area: np.ndarray
    gt_iou: np.ndarray
    gt_crowd: np.ndarray
    pred_category: np.ndarray
    pred_area: np.ndarray
    pred_fp: np.ndarray


def _segments(pairs: np.ndarray, index: np.ndarray, num_things: int) -> tuple[np.ndarray, ...]:
    """Segment number per pixel (-1 void) and each segment's category index. A stuff class is one
    segment per image (its instance id is ignored)."""
    valid = index >= 0
    instance = np.where(index >= num_things, 0, pairs[:, 1])
    keys = index.astype(np.int64) * (int(instance.max(initial=0)) + 1) + np.maximum(instance, 0)
    segment = np.full(len(index), -1, dtype=np.int64)
    uniq, inverse = np.unique(keys[valid], return_inverse=True)
    segment[valid] = inverse
    categories = np.zeros(len(uniq), dtype=np.int64)
    categories[inverse] = index[valid]
    return segment, categories


def panoptic_match(
    pred: np.ndarray,
    gt: np.ndarray,
    crowd: np.ndarray | None,
    things: Sequence[int],
    stuffs: Sequence[int],
) -> PanopticMatch:
    """Match one image's predicted and ground-truth segments.

    pred, gt: int [H, W, 2] (category, instance); a category outside things ∪ stuffs is void.
    crowd: bool [H, W], pixels of crowd segments. A prediction and a non-crowd ground truth of the
    same category match when IoU > 0.5, the union leaving out the prediction's overlap with
    ground-truth void."""
    categories = [*sorted(set(things)), *sorted(set(stuffs))]
    lookup = np.full(max(categories) + 2, -1, dtype=np.int64)
    lookup[categories] = np.arange(len(categories))

    def index_of(cat: np.ndarray) -> np.ndarray:
        ok = (cat >= 0) & (cat <= max(categories))
        return np.where(ok, lookup[np.clip(cat, 0, max(categories))], -1)

    pred = pred.reshape(-1, 2).astype(np.int64)
    gt = gt.reshape(-1, 2).astype(np.int64)
    num_things = len(set(things))
    gt_seg, gt_cat = _segments(gt, index_of(gt[:, 0]), num_things)
    pred_seg, pred_cat = _segments(pred, index_of(pred[:, 0]), num_things)
    n_gt, n_pred = len(gt_cat), len(pred_cat)
    # intersections with one extra row/column for void (index n_gt / n_pred)
    g = np.where(gt_seg < 0, n_gt, gt_seg)
    p = np.where(pred_seg < 0, n_pred, pred_seg)
    inter = np.bincount(g * (n_pred + 1) + p, minlength=(n_gt + 1) * (n_pred + 1))
    inter = inter.reshape(n_gt + 1, n_pred + 1)
    gt_area = inter[:n_gt].sum(1)
    pred_area = inter[:, :n_pred].sum(0)
    on_void = inter[n_gt, :n_pred]
    gt_crowd = np.zeros(n_gt, dtype=bool)
    if crowd is not None:
        marked = gt_seg[crowd.reshape(-1).astype(bool)]
        gt_crowd[marked[marked >= 0]] = True
    both = inter[:n_gt, :n_pred].astype(np.float64)
    union = gt_area[:, None] + pred_area[None, :] - both - on_void[None, :]
    same = gt_cat[:, None] == pred_cat[None, :]
    iou = np.where(same & ~gt_crowd[:, None], both / np.maximum(union, 1), 0.0)
    matched = iou > 0.5  # at most one per row and column (IoU > 0.5 is unique)
    gt_iou = (iou * matched).sum(1)
    crowd_same = (inter[:n_gt, :n_pred] * (gt_crowd[:, None] & same)).sum(0)
    ignored = (on_void + crowd_same) > 0.5 * pred_area
    pred_fp = ~matched.any(0) & ~ignored
    return PanopticMatch(gt_cat, gt_area, gt_iou, gt_crowd, pred_cat, pred_area, pred_fp)


class PanopticTally:
    """Per-category sums (IoU of matches, TP, FP, FN) per size bucket, over any number of images:
    PQ of one image, of the dataset, or of the segments of one size.

    A true positive or false negative belongs to the size of its ground-truth segment, a false
    positive to the size of the predicted segment."""

    def __init__(self, num_categories: int) -> None:
        shape = (len(SIZE_BUCKETS), num_categories)
        self.iou = np.zeros(shape)
        self.tp = np.zeros(shape, dtype=np.int64)
        self.fp = np.zeros(shape, dtype=np.int64)
        self.fn = np.zeros(shape, dtype=np.int64)

    def add(self, match: PanopticMatch) -> None:
        counted = ~match.gt_crowd
        gt_size = size_bucket(match.gt_area)
        tp = counted & (match.gt_iou > 0)
        fn = counted & ~tp
        np.add.at(self.iou, (gt_size[tp], match.gt_category[tp]), match.gt_iou[tp])
        np.add.at(self.tp, (gt_size[tp], match.gt_category[tp]), 1)
        np.add.at(self.fn, (gt_size[fn], match.gt_category[fn]), 1)
        fp = match.pred_fp
        np.add.at(self.fp, (size_bucket(match.pred_area)[fp], match.pred_category[fp]), 1)

    def merge(self, other: "PanopticTally") -> None:
        for name in ("iou", "tp", "fp", "fn"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def quality(self, bucket: int | None = None) -> dict[str, float]:
        """PQ, SQ, RQ in percent (mean over categories with TP + FP + FN > 0; NaN if none), and
        the counts; over all sizes, or over one size bucket."""
        pick = slice(None) if bucket is None else slice(bucket, bucket + 1)
        iou, tp, fp, fn = (getattr(self, n)[pick].sum(0) for n in ("iou", "tp", "fp", "fn"))
        present = (tp + fp + fn) > 0
        out = {"TP": int(tp.sum()), "FP": int(fp.sum()), "FN": int(fn.sum())}
        if not present.any():
            return {"PQ": float("nan"), "SQ": float("nan"), "RQ": float("nan"), **out}
        denom = (tp + 0.5 * fp + 0.5 * fn)[present]
        sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)[present]
        return {
            "PQ": 100 * float(np.mean(iou[present] / denom)),
            "SQ": 100 * float(np.mean(sq)),
            "RQ": 100 * float(np.mean(tp[present] / denom)),
            **out,
        }


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = 255) -> np.ndarray:
    """[K+1, K+1] pixel counts, rows ground truth, columns prediction; index K is the ignore label
    (row: pixels whose ground truth is ignored; column: a prediction outside 0..K-1)."""
    k = num_classes
    g = gt.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    g = np.where((g == ignore) | (g < 0) | (g >= k), k, g)
    p = np.where((p < 0) | (p >= k), k, p)
    return np.bincount(g * (k + 1) + p, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)


def semantic_scores(matrix: np.ndarray) -> dict[str, float]:
    """mIoU (over the classes present in the ground truth, as `SemanticIoU`) and pixel accuracy,
    in percent, of a [K+1, K+1] confusion matrix (the ignore row and column left out)."""
    m = matrix[:-1, :-1].astype(np.float64)
    tp = np.diag(m)
    pos_gt = matrix[:-1].sum(1).astype(np.float64)  # a prediction outside 0..K-1 is wrong
    pos_pred = m.sum(0)
    present = pos_gt > 0
    if not present.any():
        return {"mIoU": float("nan"), "pixel_acc": float("nan")}
    iou = tp / np.maximum(pos_gt + pos_pred - tp, 1)
    return {
        "mIoU": 100 * float(iou[present].mean()),
        "pixel_acc": 100 * float(tp.sum() / pos_gt.sum()),
    }


IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def mask_ap(
    pred_masks: np.ndarray,
    pred_scores: np.ndarray,
    pred_labels: np.ndarray,
    gt_masks: np.ndarray,
    gt_labels: np.ndarray,
    gt_crowd: np.ndarray | None = None,
    max_dets: int = 100,
    chunk: int = 1 << 16,
) -> dict[str, float]:
    """COCO mask AP (area range "all", up to `max_dets` detections per class) of one image, as
    COCOeval computes it on that image alone: AP over IoU 0.50:0.95 and AP50, in percent,
    averaged over the classes with non-crowd ground truth (NaN if none)."""
    n_pred, n_gt = len(pred_labels), len(gt_labels)
    crowd = np.zeros(n_gt, bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
    pixels = int(np.prod(gt_masks.shape[1:] if n_gt else pred_masks.shape[1:]))
    p = pred_masks.reshape(n_pred, pixels)
    g = gt_masks.reshape(n_gt, pixels)
    inter = np.zeros((n_pred, n_gt), dtype=np.float64)
    for start in range(0, pixels, chunk):  # float copies of a band of pixels at a time
        band = slice(start, start + chunk)
        inter += p[:, band].astype(np.float32) @ g[:, band].astype(np.float32).T
    p_area = p.sum(1, dtype=np.float64)
    g_area = g.sum(1, dtype=np.float64)
    union = np.where(crowd[None, :], p_area[:, None], p_area[:, None] + g_area[None, :] - inter)
    ious = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    per_class = []  # [T] precision-averaged AP of each class with non-crowd ground truth
    for c in sorted(set(gt_labels.tolist()) | set(pred_labels.tolist())):
        gi = np.flatnonzero(gt_labels == c)
        gi = gi[np.argsort(crowd[gi], kind="stable")]  # non-crowd first, as COCOeval
        num_gt = int((~crowd[gi]).sum())
        if num_gt == 0:
            continue
        di = np.flatnonzero(pred_labels == c)
        di = di[np.argsort(-pred_scores[di], kind="mergesort")][:max_dets]
        ignored_gt = crowd[gi]
        ap = np.zeros(len(IOU_THRESHOLDS))
        for t, threshold in enumerate(IOU_THRESHOLDS):
            gt_used = np.zeros(len(gi), bool)
            tp, fp = [], []
            for d in di:
                best, m = min(threshold, 1 - 1e-10), -1
                for j, gj in enumerate(gi):
                    if gt_used[j] and not ignored_gt[j]:
                        continue
                    if m > -1 and not ignored_gt[m] and ignored_gt[j]:
                        break
                    if ious[d, gj] < best:
                        continue
                    best, m = ious[d, gj], j
                if m == -1:
                    tp.append(False)
                    fp.append(True)
                    continue
                gt_used[m] = True
                if ignored_gt[m]:  # matched a crowd region: neither TP nor FP
                    continue
                tp.append(True)
                fp.append(False)
            ap[t] = _interpolated_ap(np.array(tp, bool), np.array(fp, bool), num_gt)
        per_class.append(ap)
    if not per_class:
        return {"AP": float("nan"), "AP50": float("nan")}
    table = np.stack(per_class)
    return {"AP": 100 * float(table.mean()), "AP50": 100 * float(table[:, 0].mean())}


def _interpolated_ap(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated precision of one class at one IoU threshold."""
    if len(tp) == 0:
        return 0.0
    tp_sum, fp_sum = np.cumsum(tp).astype(float), np.cumsum(fp).astype(float)
    recall = tp_sum / num_gt
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    q = np.zeros(len(RECALL_THRESHOLDS))
    ok = idx < len(precision)
    q[ok] = precision[idx[ok]]
    return float(q.mean())
