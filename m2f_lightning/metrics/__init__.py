"""Evaluation metrics: panoptic quality (ours, panopticapi semantics), mask AP and mIoU.

All are torchmetrics `Metric`s with sum-reduced states, so they synchronise across DDP ranks;
`SegmentationMetrics` picks a task's metrics and scores `SegmentationResult`s against
`EvalTarget`s.
"""

import logging

from .instance import CityscapesInstanceAP, GatheredMeanAveragePrecision
from .panoptic import PanopticQuality, panoptic_to_pairs
from .segmentation import SegmentationMetrics
from .semantic import SemanticIoU

# faster-coco-eval prints its whole summary at INFO level on every compute
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

__all__ = [
    "CityscapesInstanceAP",
    "GatheredMeanAveragePrecision",
    "PanopticQuality",
    "SegmentationMetrics",
    "SemanticIoU",
    "panoptic_to_pairs",
]
