"""Callbacks of the training and evaluation commands."""

from .prediction_saver import PredictionSaver
from .progress import HEADLINE_METRICS, StepProgressBar, TextProgress
from .report_writer import ReportWriter
from .wandb_media import ValidationMedia, WandbMedia

__all__ = [
    "HEADLINE_METRICS",
    "PredictionSaver",
    "ReportWriter",
    "StepProgressBar",
    "TextProgress",
    "ValidationMedia",
    "WandbMedia",
]
