"""Training losses: Hungarian matching and the set criterion."""

from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .point_sampling import point_sample, uncertain_point_coords_with_randomness

__all__ = [
    "HungarianMatcher",
    "SetCriterion",
    "point_sample",
    "uncertain_point_coords_with_randomness",
]
