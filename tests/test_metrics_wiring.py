"""SegmentationMetrics' wiring: which metrics each task builds, what a missing field says, the
ignore label, crowd flags, and AP values of 0 (written from the surviving mutants of a
`make mutate MODULE=metrics` run)."""

import numpy as np
import pytest
import torch

from m2f_lightning.metrics import PanopticQuality, SegmentationMetrics, SemanticIoU
from m2f_lightning.metrics.segmentation import _crowd_flags
from m2f_lightning.types import EvalTarget, InstanceSet, Segment, SegmentationResult

THINGS, STUFFS = [0, 1], [2]


@pytest.mark.parametrize(
    "task,built",
    [
        ("panoptic", {"pq", "ap", "miou"}),
        ("instance", {"ap"}),
        ("semantic", {"miou"}),
    ],
)
def test_each_task_builds_its_metrics(task: str, built: set) -> None:
    metrics = SegmentationMetrics(task, 3, THINGS, STUFFS)
    assert metrics.task == task
    assert {name for name in ("pq", "ap", "miou") if getattr(metrics, name) is not None} == built
    if metrics.ap is not None:  # the COCO AP of the paper's tables, through faster-coco-eval
        assert metrics.ap.iou_type == ("segm",)
        assert metrics.ap._coco_backend.backend == "faster_coco_eval"
        assert metrics.ap.class_metrics is False  # per-class AP costs time: only when asked


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_the_cityscapes_evaluator_comes_with_dataset_ids_for_tasks_with_instances(task) -> None:
    with_ids = SegmentationMetrics(task, 3, THINGS, STUFFS, dataset_ids=[24, 25, 23])
    assert (with_ids.cityscapes is not None) == (task in ("panoptic", "instance"))
    assert SegmentationMetrics(task, 3, THINGS, STUFFS).cityscapes is None


def test_an_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown task 'semantics'"):
        SegmentationMetrics("semantics", 3, THINGS, STUFFS)


class _Scores:
    """Class scores whose argmax is a given class map (the ClassScores protocol)."""

    def __init__(self, class_map: torch.Tensor) -> None:
        self.class_map = class_map

    def argmax(self, dim: int = 0) -> torch.Tensor:
        return self.class_map


def test_the_ignore_label_is_the_one_given() -> None:
    """Pixels labelled with the given ignore label (here 7, not 255) are left out of mIoU."""
    gt = torch.tensor([[0, 0, 7, 7]])
    pred = torch.tensor([[0, 0, 1, 1]])
    metrics = SegmentationMetrics("semantic", 3, THINGS, STUFFS, ignore_label=7)
    metrics.update([SegmentationResult(sem_seg=_Scores(pred))], [EvalTarget(sem_seg=gt)])
    assert metrics.compute()["mIoU"] == pytest.approx(100.0)  # class 0 perfect, 7 ignored


def _panoptic_pair(with_crowd: bool) -> tuple[SegmentationResult, EvalTarget]:
    ids = torch.tensor([[1, 1, 2, 2]], dtype=torch.int32)
    result = SegmentationResult(
        sem_seg=_Scores(torch.tensor([[0, 0, 2, 2]])),
        panoptic_seg=ids,
        segments=[Segment(1, 0, True), Segment(2, 2, False)],
        instances=InstanceSet(
            masks=torch.tensor([[[True, True, False, False]]]),
            labels=torch.tensor([0]),
            scores=torch.tensor([0.9]),
        ),
    )
    pairs = torch.tensor([[[0, 1], [0, 1], [2, 0], [2, 0]]])
    target = EvalTarget(
        sem_seg=torch.tensor([[0, 0, 2, 2]]),
        panoptic=pairs,
        panoptic_crowd=torch.zeros(1, 4, dtype=torch.bool) if with_crowd else None,
        instances=InstanceSet(
            masks=torch.tensor([[[True, True, False, False]]]), labels=torch.tensor([0])
        ),
    )
    return result, target


@pytest.mark.parametrize("with_crowd", [True, False])
def test_a_perfect_panoptic_prediction_scores_100_with_or_without_a_crowd_map(with_crowd) -> None:
    result, target = _panoptic_pair(with_crowd)
    metrics = SegmentationMetrics("panoptic", 3, THINGS, STUFFS)
    metrics.update([result], [target])
    scores = metrics.compute()
    assert scores["PQ"] == pytest.approx(100.0) and scores["mIoU"] == pytest.approx(100.0)
    assert scores["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "side,field,name",
    [
        ("result", "panoptic_seg", "panoptic_seg"),
        ("target", "panoptic", "panoptic target"),
        ("result", "instances", "instances"),
        ("target", "instances", "instances target"),
        ("result", "sem_seg", "sem_seg"),
        ("target", "sem_seg", "sem_seg target"),
    ],
)
def test_a_missing_field_is_named(side: str, field: str, name: str) -> None:
    result, target = _panoptic_pair(with_crowd=True)
    setattr(result if side == "result" else target, field, None)
    metrics = SegmentationMetrics("panoptic", 3, THINGS, STUFFS)
    with pytest.raises(ValueError, match=f"need {name}, which is missing"):
        metrics.update([result], [target])


def test_missing_instance_scores_are_named() -> None:
    result, target = _panoptic_pair(with_crowd=True)
    result.instances.scores = None
    with pytest.raises(ValueError, match="need instance scores, which is missing"):
        SegmentationMetrics("instance", 3, THINGS, STUFFS).update([result], [target])


def test_crowd_flags_are_the_targets_or_none() -> None:
    masks = torch.zeros(2, 2, 2, dtype=torch.bool)
    crowd = torch.tensor([True, False])
    flags = _crowd_flags(InstanceSet(masks=masks, labels=torch.tensor([0, 1]), iscrowd=crowd))
    assert flags.tolist() == [True, False]
    none = _crowd_flags(InstanceSet(masks=masks, labels=torch.tensor([0, 1])))
    assert none.dtype == torch.bool and none.tolist() == [False, False]


def test_an_ap_of_zero_is_reported_as_zero() -> None:
    """AP values of 0 are real scores (a wrong prediction); only torchmetrics' -1 (no ground truth
    of that size) is left out."""
    result, target = _panoptic_pair(with_crowd=True)
    result.instances = InstanceSet(  # the thing predicted where the stuff is
        masks=torch.tensor([[[False, False, True, True]]]),
        labels=torch.tensor([0]),
        scores=torch.tensor([0.9]),
    )
    metrics = SegmentationMetrics("instance", 3, THINGS, STUFFS)
    metrics.update([result], [target])
    scores = metrics.compute()
    assert scores["AP"] == 0.0 and scores["AP50"] == 0.0
    assert "APm" not in scores and "APl" not in scores  # no ground truth of those sizes
    assert np.isfinite(scores["APs"])


@pytest.mark.parametrize("shape", [(1, 4, 4, 3), (4, 4, 2)])
def test_pq_refuses_inputs_that_are_not_category_instance_pairs(shape) -> None:
    """[B, H, W, 2] only: three values per pixel, or no batch dimension, are refused even when
    preds and target agree."""
    pairs = torch.zeros(shape, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"must both be \[B, H, W, 2\]"):
        PanopticQuality(THINGS, STUFFS).update(pairs, pairs)


def test_metric_lookup_tables_are_not_saved_with_the_model() -> None:
    """A checkpoint holds no metric state: a model whose dataset has other categories loads it."""
    assert PanopticQuality(THINGS, STUFFS).state_dict() == {}
    assert SegmentationMetrics("panoptic", 3, THINGS, STUFFS).state_dict() == {}


def test_pq_per_class_values_in_category_order() -> None:
    """Class 0: one match of IoU 3/4 (PQ = SQ = 3/4, RQ 1); class 1: a missed segment (0); class
    2 (stuff): predicted where class 1 is (a false positive, 0)."""
    gt = torch.zeros(1, 2, 4, 2, dtype=torch.int64)
    gt[..., 0] = -1  # void
    gt[0, 0] = torch.tensor([0, 1])  # class 0, 4 pixels
    gt[0, 1, :3] = torch.tensor([1, 1])  # class 1, 3 pixels
    pred = torch.full_like(gt, -1)
    pred[0, 0, :3] = torch.tensor([0, 1])
    pred[0, 1, :3] = torch.tensor([2, 0])
    metric = PanopticQuality(THINGS, STUFFS)
    metric.update(pred, gt)
    out = metric.compute()
    assert out["categories"].tolist() == [0, 1, 2]
    assert out["pq_per_class"].tolist() == pytest.approx([0.75, 0.0, 0.0])
    assert out["sq_per_class"].tolist() == pytest.approx([0.75, 0.0, 0.0])
    assert out["rq_per_class"].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_class_metrics_reach_the_ap_metric() -> None:
    metrics = SegmentationMetrics("instance", 3, THINGS, STUFFS, class_metrics=True)
    assert metrics.ap.class_metrics is True


def test_an_unmatched_crowd_instance_costs_no_ap() -> None:
    """COCO ignores crowd ground truth: a crowd region nobody predicts leaves AP at 100 (were the
    flag lost, it would be a missed object: recall 1/2)."""
    result, target = _panoptic_pair(with_crowd=True)
    target.instances = InstanceSet(
        masks=torch.tensor([[[True, True, False, False]], [[False, False, True, True]]]),
        labels=torch.tensor([0, 1]),
        iscrowd=torch.tensor([False, True]),
    )
    metrics = SegmentationMetrics("instance", 3, THINGS, STUFFS)
    metrics.update([result], [target])
    assert metrics.compute()["AP"] == pytest.approx(100.0)
    target.instances.iscrowd = None  # the same object, not crowd: missed
    metrics = SegmentationMetrics("instance", 3, THINGS, STUFFS)
    metrics.update([result], [target])
    assert metrics.compute()["AP"] < 100.0


def test_an_instance_file_without_the_cityscapes_evaluator_is_left_alone(tmp_path) -> None:
    """Targets naming an instanceIds PNG are scored by the COCO AP only when no Cityscapes label
    ids were given (no evaluator built)."""
    result, target = _panoptic_pair(with_crowd=False)
    target.instance_file = str(tmp_path / "missing_instanceIds.png")
    metrics = SegmentationMetrics("instance", 3, THINGS, STUFFS)
    metrics.update([result], [target])
    scores = metrics.compute()
    assert scores["AP"] == pytest.approx(100.0) and "AP_coco" not in scores


def test_miou_counts_a_class_of_one_pixel() -> None:
    """A class with one ground-truth pixel is in the mean; a union of one pixel gives IoU 1."""
    metric = SemanticIoU(3)
    metric.update(torch.tensor([[[0, 0, 1, 1]]]), torch.tensor([[[0, 0, 0, 1]]]))
    out = metric.compute()
    assert out["iou_per_class"][:2].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert out["miou"].item() == pytest.approx((2 / 3 + 1 / 2) / 2)
    metric = SemanticIoU(3)
    metric.update(torch.tensor([[[0, 0, 1]]]), torch.tensor([[[0, 0, 1]]]))
    assert metric.compute()["iou_per_class"][1].item() == 1.0


def test_semantic_iou_passes_torchmetrics_options_on() -> None:
    assert SemanticIoU(3, sync_on_compute=False).sync_on_compute is False
    assert SemanticIoU(3).sync_on_compute is True


def test_with_cityscapes_ap_only_the_coco_ap_keys_are_renamed(monkeypatch) -> None:
    """Panoptic task with the Cityscapes evaluator: its AP takes the AP keys, COCO's AP moves to
    AP_coco, and PQ / mIoU keep their names."""
    metrics = SegmentationMetrics("panoptic", 3, THINGS, STUFFS, dataset_ids=[24, 25, 23])
    monkeypatch.setattr(metrics.cityscapes, "compute", lambda: {"AP": 40.0, "AP50": 60.0})
    result, target = _panoptic_pair(with_crowd=False)
    metrics.update([result], [target])
    scores = metrics.compute()
    assert scores["AP"] == 40.0 and scores["AP50"] == 60.0
    assert scores["AP_coco"] == pytest.approx(100.0)
    assert scores["PQ"] == pytest.approx(100.0) and "PQ_coco" not in scores
    assert "mIoU" in scores


def test_the_cityscapes_writer_names_missing_scores_and_mismatched_lengths(tmp_path) -> None:
    from m2f_lightning.metrics.instance import CityscapesInstanceAP

    evaluator = CityscapesInstanceAP([24, 25, 23])
    masks = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="instance scores"):
        evaluator.update(InstanceSet(masks, torch.tensor([0, 1])), str(tmp_path / "a.png"))
    with pytest.raises(ValueError):
        bad = InstanceSet(masks, torch.tensor([0]), scores=torch.tensor([0.9, 0.8]))
        evaluator.update(bad, str(tmp_path / "b.png"))


def test_cityscapes_ap_of_a_class_whose_predictions_all_lie_on_ignored_pixels_is_zero(
    tmp_path,
) -> None:
    """cityscapesScripts' evaluator stops with an IndexError (an empty cumsum) when a class has
    ground truth and predictions but every prediction is ignored (on void pixels) and no ground
    truth is matched; a model early in training makes that case. The class then gets AP 0, the
    value the evaluator itself gives a class with ground truth and nothing predicted."""
    from PIL import Image

    from m2f_lightning.metrics.instance import CityscapesInstanceAP

    ids = np.full((200, 200), 7, np.uint16)  # road (gtFine instanceIds PNGs are 16-bit)
    ids[:50] = 24001  # one person (label 24), 10,000 pixels
    ids[150:] = 0  # unlabeled: ignored in evaluation
    gt = tmp_path / "frankfurt_000000_000000_gtFine_instanceIds.png"
    Image.fromarray(ids).save(gt)
    on_void = torch.zeros(1, 200, 200, dtype=torch.bool)
    on_void[0, 150:] = True
    evaluator = CityscapesInstanceAP([24, 25, 23])  # contiguous 0 = person
    evaluator.update(InstanceSet(on_void, torch.tensor([0]), scores=torch.tensor([0.9])), str(gt))
    assert evaluator.compute() == {"AP": 0.0, "AP50": 0.0}
    hit = torch.zeros(1, 200, 200, dtype=torch.bool)
    hit[0, :50] = True  # the same evaluator scores a found person 100
    evaluator.reset()
    evaluator.update(InstanceSet(hit, torch.tensor([0]), scores=torch.tensor([0.9])), str(gt))
    assert evaluator.compute() == {"AP": 100.0, "AP50": 100.0}
