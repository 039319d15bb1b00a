"""Post-processing of Mask2Former outputs into semantic, panoptic and instance results.

These follow the original implementation (not the HF port's): no fixed intermediate size,
padding cropped before resizing to the original image size, panoptic thresholds 0.8/0.8, and
instance top-100 over queries × classes scored by class probability × mean mask probability.

Memory stays bounded for large images: `postprocess` never holds [queries, H, W] or
[classes, H, W] float scores at the original size. Mask logits are resized a band of rows at a
time (`_RowResizer`, bit-identical to `resize_to_original`), and only what is returned is kept at
full size: the panoptic id map, bool instance masks and, on demand, the semantic class map
(`SemanticScores`).

The package: `settings` (InferenceSettings), `queries` (the three rules on one image's query set),
`resize` (bilinear resizing, whole or by bands of rows), `full_resolution` (results at the
original size in bounded memory), `results` (`postprocess`, `predict_results`), `tiling`
(sliding-window inference and test-time augmentation: `predict_tiled`) and `merging` (one
image's query set from several forwards).
"""

from .full_resolution import QUERY_CHUNK, ResizedScores, SemanticScores
from .merging import QuerySet, merge_query_sets
from .queries import (
    _score_instances,
    _topk_pairs,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from .resize import CHUNK_BYTES, FULL_FRAME_BYTES, _RowResizer, resize_to_original
from .results import postprocess, predict_results
from .settings import InferenceSettings
from .tiling import predict_images, predict_tiled, window_starts

__all__ = [
    "CHUNK_BYTES",
    "FULL_FRAME_BYTES",
    "QUERY_CHUNK",
    "InferenceSettings",
    "QuerySet",
    "ResizedScores",
    "SemanticScores",
    "_RowResizer",
    "_score_instances",
    "_topk_pairs",
    "instance_inference",
    "panoptic_inference",
    "merge_query_sets",
    "postprocess",
    "predict_images",
    "predict_results",
    "predict_tiled",
    "resize_to_original",
    "semantic_inference",
    "window_starts",
]
