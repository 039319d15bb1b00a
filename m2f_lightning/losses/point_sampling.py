"""Point sampling of mask logits (PointRend), used by the matcher and the mask losses."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

RandFn = Callable[..., torch.Tensor]


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample `inputs` [N, C, H, W] at `coords` [N, P, 2] ((x, y) in [0, 1]) → [N, C, P]."""
    grid = 2.0 * coords.unsqueeze(2) - 1.0
    return F.grid_sample(inputs, grid.to(inputs.dtype), align_corners=False).squeeze(3)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of a mask logit: high near the decision boundary (−|logit|)."""
    return -logits.abs()


def uncertain_point_coords_with_randomness(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    rand: RandFn = torch.rand,
) -> torch.Tensor:
    """Coordinates [N, num_points, 2] biased towards uncertain regions of `logits` [N, 1, H, W].

    Draw `num_points * oversample_ratio` uniform points, keep the `importance_sample_ratio` most
    uncertain of them, and fill the rest with fresh uniform points.
    """
    num_masks = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = rand(num_masks, num_sampled, 2, device=logits.device)
    point_uncertainty = uncertainty(point_sample(logits, coords))  # [N, 1, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    # the set of the most uncertain points; their order does not matter (losses are means)
    idx = torch.topk(point_uncertainty[:, 0, :], k=num_uncertain, dim=1, sorted=False)[1]
    coords = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, rand(num_masks, num_random, 2, device=logits.device)], dim=1)
    return coords
