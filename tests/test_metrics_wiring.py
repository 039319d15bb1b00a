"""SegmentationMetrics' wiring: which metrics each task builds, what a missing field says, the
ignore label, crowd flags, and AP values of 0 (written from the surviving mutants of a
`make mutate MODULE=metrics` run)."""

import numpy as np
import pytest
import torch

from m2f_lightning.metrics import SegmentationMetrics
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
