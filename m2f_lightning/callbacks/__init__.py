"""Callbacks of the training and evaluation commands."""

from .prediction_saver import PredictionSaver
from .progress import HEADLINE_METRICS, TextProgress
from .wandb_media import WandbMedia

__all__ = ["HEADLINE_METRICS", "PredictionSaver", "TextProgress", "WandbMedia"]
