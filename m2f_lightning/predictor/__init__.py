"""A trained model as a Python function: `Segmenter` (image(s) in, typed results out) and its
result types. See `segmenter.py`."""

from .results import PredictedInstances, PredictedSegment, SegmenterResult, save_results
from .segmenter import Segmenter

__all__ = [
    "PredictedInstances",
    "PredictedSegment",
    "Segmenter",
    "SegmenterResult",
    "save_results",
]
