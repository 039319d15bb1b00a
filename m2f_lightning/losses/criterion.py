"""The set criterion: CE on classes, BCE + dice on point-sampled masks, deep supervision."""

import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .matcher import HungarianMatcher, Match
from .point_sampling import (
    RandFn,
    point_sample,
    selected_mask_logits,
    uncertain_point_coords_with_randomness,
)
from .point_seeds import LOSS_STREAM, MATCHER_STREAM, image_rands, rows_rand


def global_num_masks(targets: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Number of target masks averaged over DDP ranks (all-reduce), at least 1."""
    # made on the device (no host-to-device copy): the count is known from the shapes
    num = torch.full((), float(sum(len(t["labels"]) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        num = num / dist.get_world_size()
    return num.clamp(min=1.0)


def matches_to_device(sets: list[list[Match]], device: torch.device) -> list[list[Match]]:
    """The host index pairs of every set and image moved to `device` in one copy (from pinned
    memory, without waiting, on CUDA), then split there: no per-index blocking copies."""
    flat = [index for matches in sets for pair in matches for index in pair]
    if not flat:
        return sets
    host = torch.cat(flat)
    if device.type == "cuda":
        host = host.pin_memory()
    parts = iter(host.to(device, non_blocking=True).split([len(index) for index in flat]))
    return [[(next(parts), next(parts)) for _ in matches] for matches in sets]


def sigmoid_bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_masks: torch.Tensor
) -> torch.Tensor:
    """BCE averaged over points, summed over masks, divided by the number of masks."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: torch.Tensor) -> torch.Tensor:
    """1 − (2·Σpt + 1)/(Σp + Σt + 1), summed over masks, divided by the number of masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class SetCriterion(nn.Module):
    """Mask2Former's training loss.

    Every prediction set (the last layer's and, with deep supervision, the 9 earlier ones) is
    matched to the targets on its own, then scored with a weighted cross-entropy (no-object
    weight 0.1) and, for matched queries, BCE + dice on `num_points` importance-sampled points
    (a different set per pair), or on full masks when `point_sampled=False` (the memory
    baseline of the paper). `forward` returns every weighted term and their sum under `loss`.

    The points are drawn from `rand` (the matcher's from `matcher.rand`): torch's global
    generator unless replaced. Given `point_seeds` (one per image), each image's points come
    from generators of its own seed instead (losses/point_seeds.py), so that they do not
    depend on the rank or the batch the image is in.
    """

    def __init__(
        self,
        num_classes: int,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        point_sampled: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.point_sampled = point_sampled
        self.matcher = HungarianMatcher(
            class_weight, mask_weight, dice_weight, num_points, point_sampled=point_sampled
        )
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)
        self.rand = torch.rand

    def loss_labels(
        self, logits: torch.Tensor, targets: list[dict[str, torch.Tensor]], matches: list[Match]
    ) -> torch.Tensor:
        logits = logits.float()
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        for i, (src, tgt) in enumerate(matches):
            target_classes[i, src.to(logits.device)] = targets[i]["labels"][tgt.to(logits.device)]
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)

    def loss_masks(
        self,
        prediction: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        matches: list[Match],
        num_masks: torch.Tensor,
        float_masks: list[torch.Tensor] | None = None,
        rands: list[RandFn] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BCE + dice of the matched queries' masks; `prediction` holds `pred_masks` or their
        factors (`mask_embed`, `mask_features`: then only the matched queries' logits are made).
        `rands`: each image's point stream, which draws its matched masks' points; None: all
        masks' points in one draw of `self.rand`."""
        device = prediction["pred_logits"].device
        if float_masks is None:
            float_masks = [t["masks"] for t in targets]
        if sum(len(src) for src, _ in matches) == 0:
            factors = (
                ["pred_masks"] if "pred_masks" in prediction else ["mask_embed", "mask_features"]
            )
            zero = sum(prediction[k].sum() for k in factors) * 0.0
            return zero, zero
        preds = selected_mask_logits(prediction, [src for src, _ in matches])[:, None].float()
        masks = torch.cat(
            [m[tgt.to(device)] for m, (_, tgt) in zip(float_masks, matches, strict=True)]
        )[:, None].to(preds.dtype)
        if self.point_sampled:
            rand = self.rand if rands is None else rows_rand(rands, [len(s) for s, _ in matches])
            with torch.no_grad():
                coords = uncertain_point_coords_with_randomness(
                    preds,
                    self.num_points,
                    self.oversample_ratio,
                    self.importance_sample_ratio,
                    rand=rand,
                )
                labels = point_sample(masks, coords)[:, 0]
            logits = point_sample(preds, coords)[:, 0]
        else:
            logits = F.interpolate(
                preds, size=masks.shape[-2:], mode="bilinear", align_corners=False
            ).flatten(1)
            labels = masks.flatten(1)
        return sigmoid_bce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    def _set_losses(
        self,
        outputs: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        num_masks: torch.Tensor,
        float_masks: list[torch.Tensor] | None,
        matches: list[Match],
        rands: list[RandFn] | None = None,
    ) -> dict[str, torch.Tensor]:
        loss_mask, loss_dice = self.loss_masks(
            outputs, targets, matches, num_masks, float_masks, rands
        )
        loss_ce = self.loss_labels(outputs["pred_logits"], targets, matches)
        return {"loss_mask": loss_mask, "loss_dice": loss_dice, "loss_ce": loss_ce}

    def forward(
        self,
        outputs: dict[str, object],
        targets: list[dict[str, torch.Tensor]],
        point_seeds: list[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """`point_seeds`: one seed per image for its sampled points (see the class docstring);
        None: the `rand` hooks (torch's global generator)."""
        batch = outputs["pred_logits"].shape[0]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch} images")
        if point_seeds is not None and len(point_seeds) != batch:
            raise ValueError(f"{len(point_seeds)} point seeds for a batch of {batch} images")
        device = outputs["pred_logits"].device
        match_rands = loss_rands = None
        if point_seeds is not None and self.point_sampled:
            match_rands = image_rands(point_seeds, MATCHER_STREAM, device)
            loss_rands = image_rands(point_seeds, LOSS_STREAM, device)
        device_type = device.type
        with torch.autocast(device_type=device_type, enabled=False):
            num_masks = global_num_masks(targets, device)
            # the targets as float once, for the matcher and the losses of every prediction set
            float_masks = [t["masks"].float() for t in targets] if self.point_sampled else None
            aux_sets = list(outputs.get("aux_outputs", [])) if self.deep_supervision else []
            # every set matched at once: one device-to-host copy of all cost matrices, and one
            # (non-blocking) copy of all their matches back to the device
            matches = matches_to_device(
                self.matcher.match_sets([outputs, *aux_sets], targets, float_masks, match_rands),
                device,
            )
            raw = self._set_losses(outputs, targets, num_masks, float_masks, matches[0], loss_rands)
            for i, aux in enumerate(aux_sets):
                for name, value in self._set_losses(
                    aux, targets, num_masks, float_masks, matches[i + 1], loss_rands
                ).items():
                    raw[f"{name}_{i}"] = value
        losses = {
            name: value * self.weights[re.sub(r"_\d+$", "", name)] for name, value in raw.items()
        }
        losses["loss"] = sum(losses.values())
        return losses
