"""Sliding-window inference and test-time augmentation (`InferenceSettings.mode`, `.tta`).

Per image, each view (a scale of the test-time size, maybe flipped left-right) is run whole or
in overlapping windows (one forward each, so the network's memory is that of a window), and all
that the forwards predict is gathered at the mask logits' resolution of the image (1/4 of its
size padded to 32, the "canvas"):

- semantic scores: each forward's softmax(class) ⊗ sigmoid(mask) scores [K, h/4, w/4] (as
  `semantic_inference`), averaged over the windows that cover a cell (as mmseg's slide
  inference), then over views; resized to the original size on demand (`ResizedScores`);
- panoptic and instance: each forward's queries that the post-processing can keep (panoptic:
  above `object_mask_threshold`; instance: in the top-k pairs) are merged into one query set
  (`merging.merge_query_sets`: a thing cut by a window border, seen by two windows, is one query),
  first across a view's windows, then across views; the ordinary post-processing runs on it.

Views are scales of the test-time input (`tta_scales`, resized here on the float image), or in
the official mode (`tta_min_sizes`) absolute short sides as the official TTA makes them, whose
semantic scores are averaged at the original size instead (`official_tta.py`).

Memory: the forwards' activations are bounded by the window; what is held for the image is at
1/4 resolution (K class scores and the kept queries' mask logits per canvas cell), and at the
original size only what the plain post-processing returns (id map, bool masks, class map).
"""

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..types import ModelOutput, SegmentationResult
from .full_resolution import ResizedScores, _instances_full_resolution, _panoptic_full_resolution
from .merging import QuerySet, merge_query_sets, to_canvas
from .official_tta import official_view, view_scores_at_original
from .queries import _topk_pairs, semantic_inference
from .results import _as_result, predict_results
from .settings import InferenceSettings

Model = Callable[..., ModelOutput]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start of each window along an axis of `size` pixels: every `stride`, the last one flush
    with the end (one window when the image is no larger than it)."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


def _kept(mask_cls: torch.Tensor, task: str, thing_ids: list[int], s: InferenceSettings):
    """Indices of the queries the post-processing can keep (the rest cannot win a pixel nor be
    among the image's top-k pairs)."""
    num_classes = mask_cls.shape[-1] - 1
    keep = torch.zeros(len(mask_cls), dtype=torch.bool, device=mask_cls.device)
    if task == "panoptic":
        scores, labels = F.softmax(mask_cls.float(), dim=-1).max(-1)
        keep |= labels.ne(num_classes) & (scores > s.object_mask_threshold)
    keep[_topk_pairs(mask_cls, s.topk, thing_ids if task == "panoptic" else None)[2]] = True
    return keep.nonzero()[:, 0]


def _run_view(
    model: Model, image: torch.Tensor, task: str, thing_ids: list[int], s: InferenceSettings
) -> tuple[torch.Tensor | None, list[QuerySet], tuple[int, int], ModelOutput | None]:
    """One view [3, h, w]: its semantic scores [K, *cells] (task semantic or panoptic), its
    windows' query sets, its canvas `cells` (1/4 of (h, w) padded to 32), and the model's
    outputs when one forward saw the whole view (mode whole)."""
    h, w = image.shape[-2:]
    padded = (math.ceil(h / 32) * 32, math.ceil(w / 32) * 32)
    cells = (padded[0] // 4, padded[1] // 4)
    image = F.pad(image, (0, padded[1] - w, 0, padded[0] - h))
    if s.mode == "whole":
        window = padded
        starts = ([0], [0])
    else:
        window = (min(s.window[0], padded[0]), min(s.window[1], padded[1]))
        starts = tuple(window_starts(padded[i], window[i], s.stride[i]) for i in range(2))
    score_sum, count, sets, out = None, torch.zeros(cells, device=image.device), [], None
    for y in starts[0]:
        for x in starts[1]:
            crop = image[None, :, y : y + window[0], x : x + window[1]]
            valid = (max(0, min(window[0], h - y)), max(0, min(window[1], w - x)))
            out = model(crop, [valid])
            mask_cls, mask_logits = out["pred_logits"][0], out["pred_masks"][0]
            rect = (y // 4, x // 4, (y + window[0]) // 4, (x + window[1]) // 4)
            mask_logits = mask_logits[:, : rect[2] - rect[0], : rect[3] - rect[1]]
            if task != "instance":
                scores = semantic_inference(mask_cls, mask_logits)
                if score_sum is None:
                    score_sum = scores.new_zeros((len(scores), *cells))
                score_sum[:, rect[0] : rect[2], rect[1] : rect[3]] += scores
                count[rect[0] : rect[2], rect[1] : rect[3]] += 1
            if task != "semantic":
                keep = _kept(mask_cls, task, thing_ids, s)
                sets.append(QuerySet(mask_cls[keep].float(), mask_logits[keep].float(), rect))
    whole = out if s.mode == "whole" else None
    return None if score_sum is None else score_sum / count, sets, cells, whole


def _views(image: torch.Tensor, s: InferenceSettings):
    """(view [3, h', w'] float, flipped) of the input [3, h, w], one at a time: the relative
    scales, or the official mode's absolute short sides (PIL on uint8, as the official)."""
    if s.official_tta:
        for size, flipped in s.official_view_sizes(*image.shape[-2:]):
            yield official_view(image, size, flipped), flipped
        return
    for scale, flipped in s.views:
        yield _view(image, scale, flipped), flipped


def _view(image: torch.Tensor, scale: float, flipped: bool) -> torch.Tensor:
    """The image [3, h, w] resized by `scale` (bilinear; antialiased when shrinking), flipped."""
    if scale != 1.0:
        size = [max(1, round(d * scale)) for d in image.shape[-2:]]
        image = F.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1
        )[0]
    return image.flip(-1) if flipped else image


def predict_tiled(
    model: Model,
    images: torch.Tensor,
    image_sizes: Sequence[Sequence[int]],
    original_sizes: Sequence[Sequence[int]],
    task: str,
    thing_ids: Iterable[int] = (),
    settings: InferenceSettings | None = None,
) -> list[SegmentationResult]:
    """`predict_results` of images [B, 3, Hp, Wp] (0..255, each valid over its image size) seen
    as the settings say (windows, views): one `SegmentationResult` per image. Settings that
    make one forward of the whole image (`settings.plain`: mode whole, no TTA or TTA of one
    view at scale 1 unflipped) give exactly `predict_results` of that forward."""
    s = settings or InferenceSettings()
    if task not in ("panoptic", "instance", "semantic"):
        raise ValueError(f"unknown task '{task}': choose panoptic, instance or semantic")
    thing_ids = list(thing_ids)
    if s.plain:  # one forward of the whole image: the plain post-processing of its outputs
        outputs = model(images, image_sizes)
        return predict_results(outputs, image_sizes, original_sizes, task, thing_ids, s)
    results = []
    for image, image_size, original_size in zip(images, image_sizes, original_sizes, strict=True):
        h, w = (int(v) for v in image_size)
        image = image[:, :h, :w].float()
        cells = (math.ceil(h / 32) * 8, math.ceil(w / 32) * 8)
        scores, views, num_views = None, [], 0
        for view, flipped in _views(image, s):
            num_views += 1
            view_scores, sets, view_cells, outputs = _run_view(model, view, task, thing_ids, s)
            size = tuple(view.shape[-2:])
            if s.official_tta and task != "instance":  # averaged at the original size
                full = view_scores_at_original(
                    task, size, original_size, outputs, view_scores, view_cells
                )
                full = full.flip(-1) if flipped else full
                scores = full if scores is None else scores + full
            elif view_scores is not None:
                view_scores = to_canvas(view_scores, size, (h, w), cells, flipped)
                scores = view_scores if scores is None else scores + view_scores
            if sets:
                mask_cls, masks = merge_query_sets(sets, view_cells, s.merge_iou)
                masks = to_canvas(masks, size, (h, w), cells, flipped)
                views.append(QuerySet(mask_cls, masks, (0, 0, *cells)))
        sizes = ((h, w), (cells[0] * 4, cells[1] * 4), tuple(original_size))
        raw = {}
        if scores is not None and s.official_tta:
            raw["sem_seg"] = scores / num_views
        elif scores is not None:
            raw["sem_seg"] = ResizedScores(scores / num_views, *sizes)
        if views:
            mask_cls, masks = merge_query_sets(views, cells, s.merge_iou)
            if task == "panoptic":
                raw["panoptic_seg"], raw["segments_info"] = _panoptic_full_resolution(
                    mask_cls, masks, *sizes, thing_ids, s.object_mask_threshold,
                    s.overlap_threshold,
                )  # fmt: skip
            raw["instances"] = _instances_full_resolution(
                mask_cls, masks, *sizes, s.topk, thing_ids if task == "panoptic" else None
            )
        results.append(_as_result(raw))
    return results


def predict_images(
    model: Model,
    images: torch.Tensor,
    image_sizes: Sequence[Sequence[int]],
    original_sizes: Sequence[Sequence[int]],
    task: str,
    thing_ids: Iterable[int],
    settings: InferenceSettings,
) -> list[SegmentationResult]:
    """Results of a padded batch at each image's original size: one forward and
    `predict_results` (`settings.plain`), else `predict_tiled`. What evaluate, predict and the
    Python `Segmenter` all run, so their results are the same."""
    args = (image_sizes, original_sizes, task, thing_ids)
    if settings.plain:
        return predict_results(model(images, image_sizes), *args, settings)
    return predict_tiled(model, images, *args, settings)
