"""What `Segmenter` returns for an image: typed views of the post-processed result (class maps,
segments and instances with class names), its overlay and the files `m2f-predict` writes."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.catalog import DatasetMetadata
from ..types import SegmentationResult


@dataclass(frozen=True)
class PredictedSegment:
    """One segment of a panoptic map: its pixels are `id` in `SegmenterResult.panoptic`."""

    id: int
    class_id: int  # contiguous id (index into the model's classes)
    class_name: str
    isthing: bool
    score: float
    area: int  # pixels in the panoptic map


@dataclass(frozen=True)
class PredictedInstances:
    """Instance masks of one image at its size (the top-k pairs of the model, every score)."""

    masks: torch.Tensor  # bool [N, H, W]
    class_ids: torch.Tensor  # int64 [N]
    class_names: list[str]
    scores: torch.Tensor  # float [N]

    def __len__(self) -> int:
        return len(self.class_names)


@dataclass
class SegmenterResult:
    """One image's prediction at the image's size (H, W).

    `semantic`: class id per pixel (panoptic and semantic models); `panoptic` + `segments`:
    segment id per pixel, 0 = void (panoptic); `instances` (instance and panoptic models).
    `raw` is the post-processing's own result, what evaluation scores and predict writes.
    """

    task: str
    file_name: str
    image: np.ndarray = field(repr=False)  # RGB uint8 [H, W, 3], as the model saw it
    raw: SegmentationResult = field(repr=False)
    metadata: DatasetMetadata = field(repr=False)

    @cached_property
    def semantic(self) -> torch.Tensor | None:
        """int64 [H, W] class ids (None for an instance model)."""
        return self.raw.class_map() if self.raw.sem_seg is not None else None

    @property
    def panoptic(self) -> torch.Tensor | None:
        """int32 [H, W] segment ids, 0 = void (panoptic models)."""
        return self.raw.panoptic_seg

    @cached_property
    def segments(self) -> list[PredictedSegment]:
        if self.raw.panoptic_seg is None:
            return []
        ids, counts = torch.unique(self.raw.panoptic_seg, return_counts=True)
        area = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        names = self.metadata.class_names
        return [
            PredictedSegment(
                s.id, s.category_id, names[s.category_id], s.isthing, s.score, area.get(s.id, 0)
            )
            for s in self.raw.segments
        ]

    @cached_property
    def instances(self) -> PredictedInstances | None:
        inst = self.raw.instances
        if inst is None:
            return None
        names = self.metadata.class_names
        return PredictedInstances(
            inst.masks, inst.labels, [names[int(i)] for i in inst.labels], inst.scores
        )

    def overlay(self, score_threshold: float = 0.5) -> Image.Image:
        """The overlay panel m2f-predict writes (the image | the prediction with class names);
        instances below `score_threshold` are not drawn."""
        from ..outputs.prediction_writer import overlay_of

        return Image.fromarray(overlay_of(self.raw, self.image, self.metadata, score_threshold))

    def save(self, folder: str | Path, score_threshold: float = 0.5) -> list[Path]:
        """Write the files m2f-predict writes for this image under `folder`; returns them."""
        return save_results([self], folder, score_threshold)


def save_results(
    results: Sequence[SegmenterResult], folder: str | Path, score_threshold: float = 0.5
) -> list[Path]:
    """The files m2f-predict writes for these images (named by their file stems) under
    `folder`: overlays, the task's maps and its JSON list (panoptic.json or
    instances_results.json) of all of them."""
    from ..outputs.prediction_writer import PredictionWriter

    if not results:
        return []
    first = results[0]
    writer = PredictionWriter(
        first.task, first.metadata, Path(folder), score_threshold=score_threshold
    )
    for result in results:
        writer.write(result.raw, image=result.image)
    return writer.finish()
