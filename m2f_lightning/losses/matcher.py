"""Hungarian matching of predicted queries to ground-truth segments."""

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .point_sampling import RandFn, full_mask_logits, mask_logits_at_points, point_sample

Match = tuple[torch.Tensor, torch.Tensor]

# What a non-finite (NaN or ±inf) cost becomes before the Hungarian solver sees it, and the
# ceiling of every finite cost. Real costs lie within a few tens (2·class + 5·BCE + 5·dice), so a
# pair with a broken cost is matched only when no finite alternative remains; 1e8 keeps float64
# sums of such costs exact to ~1e-8, where float32's max would drown the finite costs. SciPy
# raises "matrix contains invalid numeric entries" on NaN/-inf and "cost matrix is infeasible"
# on rows of +inf: neither can happen after this.
NONFINITE_COST = 1e8


def sanitize_cost(cost: torch.Tensor) -> torch.Tensor:
    """`cost` with NaN, +inf and -inf replaced by `NONFINITE_COST` and finite values clamped
    to ±`NONFINITE_COST`."""
    finite = torch.isfinite(cost)
    return torch.where(finite, cost.clamp(-NONFINITE_COST, NONFINITE_COST), NONFINITE_COST)


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over points of every (prediction, target) pair: [B, Q, P] × [B, N, P] → [B, Q, N].

    BCE(x, t) = softplus(x) − x·t for t ∈ {0, 1}, so the mean over points is
    mean(softplus(x)) − (x @ tᵀ) / P: one softplus and one matmul on the [B, Q, P] logits.
    """
    num_points = logits.shape[-1]
    return (
        F.softplus(logits).sum(-1, keepdim=True) - logits @ targets.transpose(1, 2)
    ) / num_points


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothing) of every pair: [B, Q, P] × [B, N, P] → [B, Q, N]."""
    probs = logits.sigmoid()
    numerator = 2 * (probs @ targets.transpose(1, 2))
    denominator = probs.sum(-1)[:, :, None] + targets.sum(-1)[:, None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(torch.nn.Module):
    """One-to-one assignment minimising 2·class + 5·mask BCE + 5·dice (the paper's weights).

    Mask costs are computed on `num_points` uniform points per image, shared by all predictions
    and targets of that image, or on full masks when `point_sampled=False`. All cost matrices of a
    batch — of every prediction set with `match_sets` — are built on the device at once and moved
    to the host in a single transfer.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        point_sampled: bool = True,
    ) -> None:
        super().__init__()
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.point_sampled = point_sampled
        self.rand: RandFn = torch.rand

    def _sample(
        self,
        prediction: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        num_max: int,
        float_masks: list[torch.Tensor] | None = None,
        rands: list[RandFn] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction [B, Q, P] and padded target [B, Nmax, P] mask values at shared points.
        `prediction` holds `pred_masks` or their factors (`mask_embed`, `mask_features`).
        `float_masks`: the targets' masks already as float [N, H, W] (shared by the callers).
        `rands`: each image's point stream (losses/point_seeds.py); None: `self.rand` for all."""
        batch, device = prediction["pred_logits"].shape[0], prediction["pred_logits"].device
        if self.point_sampled:
            rands = rands or [self.rand] * batch
            coords = torch.cat([rand(1, self.num_points, 2, device=device) for rand in rands])
            pred = mask_logits_at_points(prediction, coords)
            target = pred.new_zeros(batch, num_max, self.num_points)
            for i, t in enumerate(targets):
                if len(t["masks"]):
                    masks = t["masks"] if float_masks is None else float_masks[i]
                    # the masks as channels of one image: one set of bilinear weights for all
                    sampled = point_sample(masks[None].to(pred.dtype), coords[i : i + 1])
                    target[i, : len(masks)] = sampled[0]
            return pred, target
        size = targets[0]["masks"].shape[-2:]
        pred_masks = full_mask_logits(prediction).float()
        pred = F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False).flatten(2)
        target = pred.new_zeros(batch, num_max, pred.shape[-1])
        for i, t in enumerate(targets):
            target[i, : len(t["masks"])] = t["masks"].flatten(1).to(pred.dtype)
        return pred, target

    @torch.no_grad()
    def costs(
        self,
        outputs: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        float_masks: list[torch.Tensor] | None = None,
        rands: list[RandFn] | None = None,
    ) -> torch.Tensor:
        """The (sanitised) cost of every (prediction, target) pair, on the outputs' device:
        [B, Q, Nmax] (targets padded to the batch's largest count)."""
        logits = outputs["pred_logits"].float()
        device_type = logits.device.type
        counts = [len(t["labels"]) for t in targets]
        num_max = max(counts, default=0)
        batch, num_queries = logits.shape[:2]
        if num_max == 0:
            return logits.new_zeros(batch, num_queries, 0)
        with torch.autocast(device_type=device_type, enabled=False):
            probs = logits.softmax(-1)
            labels = torch.zeros(batch, num_max, dtype=torch.int64, device=logits.device)
            for i, t in enumerate(targets):
                labels[i, : counts[i]] = t["labels"]
            cost_class = -torch.gather(probs, 2, labels[:, None, :].expand(-1, num_queries, -1))
            pred, target = self._sample(outputs, targets, num_max, float_masks, rands)
            cost = (
                self.cost_mask * pairwise_sigmoid_bce(pred, target)
                + self.cost_class * cost_class
                + self.cost_dice * pairwise_dice(pred, target)
            )
            return sanitize_cost(cost)

    @torch.no_grad()
    def match_sets(
        self,
        sets: list[dict[str, torch.Tensor]],
        targets: list[dict[str, torch.Tensor]],
        float_masks: list[torch.Tensor] | None = None,
        rands: list[RandFn] | None = None,
    ) -> list[list[Match]]:
        """Matches of several prediction sets (the final one and the auxiliary ones) to the same
        targets: all their cost matrices are built on the device and copied to the host in one
        transfer (the step's only device-to-host copy), then solved on the CPU. `rands`: each
        image's point stream, drawn from set after set."""
        counts = [len(t["labels"]) for t in targets]
        if max(counts, default=0) == 0:  # nothing to match: no transfer at all
            empty = torch.empty(0, dtype=torch.int64)
            return [[(empty, empty) for _ in targets] for _ in sets]
        costs = torch.stack([self.costs(outputs, targets, float_masks, rands) for outputs in sets])
        cost_host = costs.cpu().double().numpy()  # one transfer for every set and image
        matches = []
        for set_costs in cost_host:
            per_image = []
            for i, n in enumerate(counts):
                rows, cols = linear_sum_assignment(set_costs[i, :, :n])
                per_image.append(
                    (
                        torch.as_tensor(rows, dtype=torch.int64),
                        torch.as_tensor(cols, dtype=torch.int64),
                    )
                )
            matches.append(per_image)
        return matches

    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        float_masks: list[torch.Tensor] | None = None,
    ) -> list[Match]:
        """Returns, per image, (prediction indices, target indices), sorted by prediction, on
        the host. `float_masks` (optional): each image's target masks as float [N, H, W], when
        the caller has them already."""
        return self.match_sets([outputs], targets, float_masks)[0]
