"""Post-processing settings: the one place their defaults live."""

from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceSettings:
    """Post-processing thresholds: the paper's values are the defaults (the one place they live;
    `conf/inference/default.yaml` sets them from the dataset where the recipes differ)."""

    object_mask_threshold: float = 0.8  # panoptic: keep queries whose class score is above
    overlap_threshold: float = 0.8  # panoptic: drop segments mostly hidden by others
    topk: int = 100  # instance: (query, class) pairs kept per image
