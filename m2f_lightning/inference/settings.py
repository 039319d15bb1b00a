"""Post-processing settings: the one place their defaults live."""

from collections.abc import Sequence
from dataclasses import dataclass

from ..resizing import shortest_edge_size

MODES = ("whole", "sliding")


def _positive_int(value: object, name: str) -> int:
    """A positive whole number of pixels (not a bool, not 512.5)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"inference.{name} must be positive whole numbers of pixels: {value!r}")
    return value


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int or [height, width] → (height, width)."""
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"inference.{name} must be a positive int or [height, width]: {value}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class InferenceSettings:
    """Post-processing thresholds: the paper's values are the defaults (the one place they live;
    `conf/inference/default.yaml` sets them from the dataset where the recipes differ); and how
    the network sees the image (`inference.tiling`): whole, or in overlapping windows, once or
    under test-time augmentation.

    Window and stride are in pixels of the network's input (the image after the test-time
    resize): the window a multiple of 32, the stride a multiple of 4 and at most the window.
    """

    object_mask_threshold: float = 0.8  # panoptic: keep queries whose class score is above
    overlap_threshold: float = 0.8  # panoptic: drop segments mostly hidden by others
    topk: int = 100  # instance: (query, class) pairs kept per image
    mode: str = "whole"  # whole | sliding: one forward per image, or one per window
    window: int | tuple[int, int] = 512  # sliding: window (height, width), or one int for both
    stride: int | tuple[int, int] = 384  # sliding: step between windows (< window: they overlap)
    merge_iou: float = 0.5  # sliding/TTA: two windows' (or views') queries of one class are one
    # object when their binary masks' IoU on the region both see is at least this
    tta: bool = False  # test-time augmentation: one view per scale (× flip), merged
    tta_scales: tuple[float, ...] = (1.0,)  # TTA: image scales (of the test-time size)
    tta_flip: bool = True  # TTA: each scale also horizontally flipped
    # TTA, the official mode (SemanticSegmentorWithTTA): absolute short sides of the views
    # (TEST.AUG.MIN_SIZES), the long side capped at tta_max_size (TEST.AUG.MAX_SIZE; 4000 is
    # detectron2's default); empty: the relative tta_scales
    tta_min_sizes: tuple[int, ...] = ()
    tta_max_size: int = 4000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"inference.mode must be whole or sliding; got {self.mode!r}")
        window, stride = _pair(self.window, "window"), _pair(self.stride, "stride")
        if any(w % 32 for w in window):
            raise ValueError(f"inference.window must be a multiple of 32: {self.window}")
        if any(s % 4 or s > w for s, w in zip(stride, window, strict=True)):
            raise ValueError(
                f"inference.stride must be a multiple of 4, at most the window: {self.stride}"
            )
        scales = tuple(float(s) for s in self.tta_scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"inference.tta_scales must be positive numbers: {self.tta_scales}")
        min_sizes = tuple(_positive_int(v, "tta_min_sizes") for v in self.tta_min_sizes)
        _positive_int(self.tta_max_size, "tta_max_size")
        if min_sizes and scales != (1.0,):
            raise ValueError(
                "inference.tta_min_sizes (absolute short sides, the official TTA) and "
                f"inference.tta_scales (relative scales) both size the views: set one "
                f"(tta_min_sizes={list(min_sizes)}, tta_scales={list(scales)})"
            )
        if not 0 < self.merge_iou <= 1:
            raise ValueError(f"inference.merge_iou must be in (0, 1]: {self.merge_iou}")
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "tta_scales", scales)
        object.__setattr__(self, "tta_min_sizes", min_sizes)

    @property
    def official_tta(self) -> bool:
        """TTA with absolute short sides (`tta_min_sizes`), as the official
        SemanticSegmentorWithTTA: see `inference/official_tta.py`."""
        return self.tta and bool(self.tta_min_sizes)

    def official_view_sizes(self, height: int, width: int) -> list[tuple[tuple[int, int], bool]]:
        """((height, width), flipped) of each view of an input of (height, width) in the official
        mode: detectron2's ResizeShortestEdge(min_size, tta_max_size) of that input, each size
        unflipped then flipped (DatasetMapperTTA's order)."""
        flips = (False, True) if self.tta_flip else (False,)
        return [
            (shortest_edge_size(height, width, size, self.tta_max_size), flip)
            for size in self.tta_min_sizes
            for flip in flips
        ]

    @property
    def views(self) -> list[tuple[float, bool]]:
        """(scale, flipped) of each view of the image the network sees."""
        if not self.tta:
            return [(1.0, False)]
        flips = (False, True) if self.tta_flip else (False,)
        return [(scale, flip) for scale in self.tta_scales for flip in flips]

    @property
    def plain(self) -> bool:
        """One forward of the whole image: `predict_results` of the model's outputs."""
        return self.mode == "whole" and not self.official_tta and self.views == [(1.0, False)]
