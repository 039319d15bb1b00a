"""Augmentation pipelines (albumentations) of the paper's recipes, value for value with
detectron2's transforms as the official Mask2Former mappers use them.

- `lsj`: COCO's large-scale jitter: flip, resize so the image fits size·s with s ~ U(0.1, 2.0)
  (aspect kept, sizes rounded), crop size² at an offset drawn from one fraction shared by both
  axes (detectron2's FixedSizeCrop), pad bottom/right (image 128). No colour aug.
- `semantic`: ADE20K / Cityscapes / Mapillary: short side drawn from int(x·0.1·base) for
  x = 5..20 (long side ≤ 4 × base), random crop (offsets drawn per axis), SSD-style colour jitter,
  flip, and only then pad bottom/right to the crop size (image 128, labels the ignore/void value),
  so padding is never jittered nor flipped.
- eval: resize the short side to the test size (long side capped); annotations stay at the
  original size, where the metrics are computed.

Resizing is detectron2's ResizeTransform's: images PIL bilinear, antialiased when shrinking;
label and id maps nearest, by the rule the official mapper's dtype selects (computed here as an
index gather, identical to the library's output): the semantic task's class map as the semantic
mapper's `double` map, torch's `interpolate(mode="nearest")` (top-left sample); panoptic id maps
and instance masks as uint8, PIL's nearest (pixel centre). Resize and crop are fused: only what
survives the crop is resized (images: PIL resizes that source box, with the same sample positions and filter as
resize-then-crop, within 2 grey levels where PIL's 8-bit passes round differently).

Panoptic and instance ground truth travels as one int32 id map (nearest, pad 0 = void);
semantic maps pad with 255 (ignore).

Modules: `resize` (PIL-equivalent resizing), `geometric` (resize/crop/flip/pad transforms),
`color` (SSD colour jitter), `recipes` (the pipelines).
"""

from ...resizing import (
    LABEL_RULES,
    Box,
    LabelRule,
    nearest_indices,
    resize_image,
    resize_labels,
    shortest_edge_size,
)
from .color import ColorAugSSD
from .geometric import (
    LargeScaleJitter,
    PadBottomRight,
    ResizeShortestEdge,
    ShortEdgeResizeCrop,
    lsj_polygon_masks,
)
from .recipes import (
    build_train_transform,
    eval_resize,
    label_rule_for,
    lsj,
    semantic_jitter,
    short_edge_sizes,
)

__all__ = [
    "LABEL_RULES",
    "Box",
    "LabelRule",
    "ColorAugSSD",
    "LargeScaleJitter",
    "PadBottomRight",
    "ResizeShortestEdge",
    "ShortEdgeResizeCrop",
    "build_train_transform",
    "eval_resize",
    "label_rule_for",
    "lsj",
    "lsj_polygon_masks",
    "nearest_indices",
    "resize_image",
    "resize_labels",
    "semantic_jitter",
    "short_edge_sizes",
    "shortest_edge_size",
]
