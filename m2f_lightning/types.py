"""The contracts between the stages: what data yields, what the model returns, what
post-processing produces and what metrics score.

Only torch and the standard library are imported here, so every layer (data, modeling, losses,
inference, metrics) can depend on this module without depending on each other.

Shapes use: B batch, Q queries, K classes (contiguous ids 0..K-1; K is "no object"), N segments,
H x W the image on disk, h x w the image after resizing/augmentation, Hp x Wp the padded batch.
"""

from dataclasses import dataclass, field
from typing import NotRequired, Protocol, TypedDict

import torch

TASKS = ("panoptic", "instance", "semantic")


class TrainTarget(TypedDict):
    """One training image's ground truth, at the padded batch size (padding is False)."""

    labels: torch.Tensor  # int64 [N], contiguous class ids
    masks: torch.Tensor  # bool [N, Hp, Wp]


class Prediction(TypedDict):
    """One decoder layer's prediction. The mask logits are `pred_masks` = Σ_c mask_embed ·
    mask_features; training leaves `pred_masks` out and the criterion makes the logits only
    where it reads them (at sampled points, for matched queries)."""

    pred_logits: torch.Tensor  # [B, Q, K+1] class logits (last = no object)
    pred_masks: NotRequired[torch.Tensor]  # [B, Q, Hp/4, Wp/4] mask logits
    mask_embed: NotRequired[torch.Tensor]  # [B, Q, C] the queries' mask embeddings
    mask_features: NotRequired[torch.Tensor]  # [B, C, Hp/4, Wp/4] shared by every set


class ModelOutput(TypedDict):
    """What `Mask2Former.forward` returns (and `SetCriterion` reads)."""

    pred_logits: torch.Tensor  # [B, Q, K+1] of the last decoder layer
    pred_masks: NotRequired[torch.Tensor]  # [B, Q, Hp/4, Wp/4] of the last decoder layer
    mask_embed: NotRequired[torch.Tensor]  # [B, Q, C] of the last decoder layer
    mask_features: NotRequired[torch.Tensor]  # [B, C, Hp/4, Wp/4]
    aux_outputs: list[Prediction]  # the earlier layers' predictions, index 0 = learned queries
    image_size: tuple[int, int]  # input size before the model's padding
    padded_size: tuple[int, int]  # (Hp, Wp): input size after padding to the divisibility


@dataclass
class InstanceSet:
    """Instance masks of one image at its original size: predictions or ground truth."""

    masks: torch.Tensor  # bool [N, H, W]
    labels: torch.Tensor  # int64 [N], contiguous class ids
    scores: torch.Tensor | None = None  # float [N] (predictions)
    iscrowd: torch.Tensor | None = None  # bool [N] (ground truth)
    # float64 [N] (ground truth): the annotation JSON's `area`, which COCOeval's size buckets
    # (APs/APm/APl) use; None or NaN where there is none: the mask's pixel count
    areas: torch.Tensor | None = None


@dataclass
class Segment:
    """One segment of a panoptic result."""

    id: int  # value of the segment's pixels in the id map (> 0)
    category_id: int  # contiguous class id
    isthing: bool
    score: float = 1.0


class ClassScores(Protocol):
    """Per-class scores [K, H, W]: a tensor, or `inference.SemanticScores`, which keeps them at
    the network's resolution and computes the full-size argmax on demand (bounded memory)."""

    @property
    def shape(self) -> torch.Size: ...

    def argmax(self, dim: int) -> torch.Tensor: ...


@dataclass
class SegmentationResult:
    """One image's post-processed prediction at its original size (H, W).

    panoptic → `panoptic_seg` + `segments` (+ `instances` and `sem_seg`: the paper reports PQ,
    AP and mIoU from one panoptic model); instance → `instances`; semantic → `sem_seg`.
    """

    sem_seg: ClassScores | None = None  # [K, H, W] class scores
    panoptic_seg: torch.Tensor | None = None  # int32 [H, W] segment ids, 0 = void
    segments: list[Segment] = field(default_factory=list)
    instances: InstanceSet | None = None
    file_name: str = ""
    image_id: int | str = ""

    def class_map(self) -> torch.Tensor:
        """Semantic class per pixel, int64 [H, W]: argmax of `sem_seg`."""
        if self.sem_seg is None:
            raise ValueError("this result has no semantic scores")
        return self.sem_seg.argmax(0)


@dataclass
class EvalTarget:
    """One image's ground truth at its original size, for whichever metrics the task has."""

    sem_seg: torch.Tensor | None = None  # int64 [H, W], 255 = ignore
    panoptic: torch.Tensor | None = None  # int64 [H, W, 2] (category, instance id); void < 0
    panoptic_crowd: torch.Tensor | None = None  # bool [H, W], pixels of crowd segments
    instances: InstanceSet | None = None  # masks / labels / iscrowd of the thing segments
    # the annotation file an external evaluator reads: Cityscapes' gtFine instanceIds PNG,
    # scored with cityscapesScripts' instance evaluation (the paper's Cityscapes AP)
    instance_file: str | None = None


@dataclass
class Batch:
    """What the datamodule yields for one step.

    `images` are RGB 0..255 (uint8 or float) padded bottom/right to a common size with any
    value: the model normalises and zeroes everything outside `image_sizes`.
    """

    images: torch.Tensor  # [B, 3, Hp, Wp]
    image_sizes: list[tuple[int, int]]  # (h, w) of each image inside the padded batch
    orig_sizes: list[tuple[int, int]]  # (H, W) of each file on disk
    file_names: list[str]
    image_ids: list[int | str]
    targets: list[TrainTarget] | None = None  # training
    eval_targets: list[EvalTarget] | None = None  # evaluation (validation / test)
    # evaluation: False for an image a rank repeats only to fill its last batch (never scored)
    scored: list[bool] | None = None
    # prediction: (input, reason) of the inputs of this batch that could not be read; they hold
    # no image in the batch (which may then be empty)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    # training: each image's seed of its sampled loss points (its `(seed, epoch, index)` seed,
    # data/sampling.py), so they do not depend on the rank or the batch; None: global generator
    point_seeds: list[int] | None = None

    def __len__(self) -> int:
        return len(self.file_names)
