"""Test-time augmentation as the official `SemanticSegmentorWithTTA` (Mask2Former's
test_time_augmentation.py with detectron2's `DatasetMapperTTA`): `InferenceSettings.official_tta`.

For each short side in `tta_min_sizes` (and, with `tta_flip`, again flipped left-right), the
test-time input (the image after the dataset's test resize, uint8) is resized by detectron2's
ResizeShortestEdge(min_size, tta_max_size) (PIL bilinear on uint8, as ResizeTransform), flipped,
and run whole; the view's semantic scores at the ORIGINAL image size (the model's `sem_seg`: for
a semantic-only model softmax × sigmoid at the padded view size, cropped and resized bilinear; for
a panoptic model the mask logits resized first) are flipped back and averaged over the views.
The class map is the argmax of that mean. The mean is held at the original size (K × H × W
float32), as the official code holds it.

Panoptic segments and instances have no official TTA (the official one returns `sem_seg` only);
here they come from the views' queries merged as `tiling` merges them (`merging.py`).
"""

from collections.abc import Sequence

import numpy as np
import torch

from ..resizing import resize_image
from ..types import ModelOutput
from .full_resolution import ResizedScores, SemanticScores, _semantic_padded_then_resized


def official_view(image: torch.Tensor, size: Sequence[int], flipped: bool) -> torch.Tensor:
    """The input [3, h, w] (0..255) as DatasetMapperTTA makes a view: resized to `size` by PIL
    bilinear on uint8 (detectron2's ResizeTransform on a uint8 image), then flipped left-right;
    float32 [3, *size] on the input's device."""
    pixels = image.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    resized = resize_image(pixels, int(size[0]), int(size[1]))
    if flipped:
        resized = resized[:, ::-1]
    view = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1)  # writable, contiguous
    return view.to(image.device, torch.float32)


def view_scores_at_original(
    task: str,
    view_size: Sequence[int],
    original_size: Sequence[int],
    outputs: ModelOutput | None,
    canvas_scores: torch.Tensor | None,
    canvas_cells: Sequence[int],
) -> torch.Tensor:
    """One view's class scores [K, H, W] at the original size, as the model's `sem_seg`. From a
    whole forward's `outputs` in the official order of the task; from a sliding pass's window-
    averaged scores at 1/4 of the padded view (`canvas_scores`) resized as `ResizedScores` does
    (sliding windows have no official counterpart)."""
    if outputs is not None:
        mask_cls, mask_logits = outputs["pred_logits"][0], outputs["pred_masks"][0]
        sizes = (tuple(view_size), tuple(outputs["padded_size"]), tuple(original_size))
        if task == "semantic":
            return _semantic_padded_then_resized(mask_cls, mask_logits, *sizes).full()
        return SemanticScores(mask_cls, mask_logits, *sizes).full()
    if canvas_scores is None:
        raise ValueError("a view without outputs needs its canvas scores")
    padded = (canvas_cells[0] * 4, canvas_cells[1] * 4)
    return ResizedScores(canvas_scores, view_size, padded, original_size).full()
