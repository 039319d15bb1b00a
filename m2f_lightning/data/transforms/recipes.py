"""The paper's augmentation recipes as albumentations pipelines: `lsj`, `semantic_jitter`, the
test-time resize, and `build_train_transform` that picks one by name.
"""

from collections.abc import Sequence
from typing import Any

import albumentations as A

from ...resizing import LabelRule
from .color import ColorAugSSD
from .geometric import LargeScaleJitter, PadBottomRight, ResizeShortestEdge, ShortEdgeResizeCrop


def lsj(
    size: int = 1024,
    min_scale: float = 0.1,
    max_scale: float = 2.0,
    image_pad: int = 128,
    mask_pad: int = 0,
    flip_prob: float = 0.5,
    label_rule: LabelRule = "pil",
) -> A.Compose:
    """COCO's large-scale jitter (flip before the resize, as the paper's mapper does); label maps
    resized under `label_rule` (`resize.nearest_indices`)."""
    return A.Compose(
        [
            LargeScaleJitter(min_scale, max_scale, size, flip_prob, label_rule=label_rule),
            PadBottomRight(size, size, fill=image_pad, fill_mask=mask_pad),
        ],
        save_applied_params=True,
    )


def short_edge_sizes(base_size: int, min_ratio: float = 0.5, max_ratio: float = 2.0) -> list[int]:
    """The official MIN_SIZE_TRAIN list: int(x·0.1·base) for x = 5..20 (truncated, not rounded:
    base 512 gives 256, 307, 358, ...)."""
    first, last = int(round(min_ratio * 10)), int(round(max_ratio * 10))
    return [int(x * 0.1 * base_size) for x in range(first, last + 1)]


def semantic_jitter(
    base_size: int,
    crop_size: Sequence[int],
    min_ratio: float = 0.5,
    max_ratio: float = 2.0,
    color_aug: bool = True,
    image_pad: int = 128,
    mask_pad: int = 255,
    flip_prob: float = 0.5,
    label_rule: LabelRule = "pil",
) -> A.Compose:
    """Short-side jitter + random crop + SSD colour + flip, then pad bottom/right to the crop size
    (ADE20K, Cityscapes, Mapillary: the mappers pad to SIZE_DIVISIBILITY, which is the crop size
    for ADE20K and Mapillary; Cityscapes crops always fit, so there is nothing to pad). Label maps
    are resized under `label_rule`: "torch" as the semantic mapper (its labels are `double`),
    "pil" as the panoptic and instance mappers (uint8)."""
    crop_h, crop_w = (int(c) for c in crop_size)
    transforms: list[A.BasicTransform] = [
        ShortEdgeResizeCrop(
            short_edge_sizes(base_size, min_ratio, max_ratio),
            4 * base_size,
            (crop_h, crop_w),
            label_rule=label_rule,
        )
    ]
    if color_aug:
        transforms.append(ColorAugSSD())
    transforms.append(A.HorizontalFlip(p=flip_prob))
    transforms.append(PadBottomRight(crop_h, crop_w, fill=image_pad, fill_mask=mask_pad))
    return A.Compose(transforms, save_applied_params=True)


def eval_resize(min_size: int, max_size: int) -> A.Compose:
    """Test-time resize of the image (short side `min_size`, long side ≤ `max_size`)."""
    return A.Compose([ResizeShortestEdge([min_size], max_size)])


def label_rule_for(task: str) -> LabelRule:
    """How the official mapper of `task` resizes its label map: the semantic mapper reads the label
    PNG as `double`, so detectron2 resizes it with torch's nearest ("torch"); the panoptic and
    instance mappers hand it uint8 (RGB ids, masks), resized by PIL's nearest ("pil")."""
    return "torch" if task == "semantic" else "pil"


def build_train_transform(
    recipe: str, mask_pad: int, label_rule: LabelRule = "pil", **kwargs: Any
) -> A.Compose:
    """`recipe` is `lsj` or `semantic` (see the module docstring); kwargs are the recipe's sizes;
    `label_rule` how label maps are resized (`label_rule_for(task)`)."""
    if recipe == "lsj":
        return lsj(mask_pad=mask_pad, label_rule=label_rule, **kwargs)
    if recipe == "semantic":
        return semantic_jitter(mask_pad=mask_pad, label_rule=label_rule, **kwargs)
    if recipe == "none":
        return A.Compose([])
    raise ValueError(f"unknown augmentation recipe '{recipe}': choose lsj, semantic or none")
