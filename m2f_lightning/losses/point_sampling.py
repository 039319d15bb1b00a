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


# --- mask logits where they are read -------------------------------------------------------------
# A prediction set carries either its full mask logits (`pred_masks` [B, Q, h, w]) or the two
# factors they are made of: `mask_embed` [B, Q, C] and the shared `mask_features` [B, C, h, w]
# (logits = Σ_c embed·features). Bilinear sampling is linear, so sampling the features and then
# projecting gives the logits at those points without the full [B, Q, h, w] product (the FLOPs
# per case are in docs/performance.md).


def full_mask_logits(prediction: dict[str, torch.Tensor]) -> torch.Tensor:
    """The set's mask logits [B, Q, h, w]: `pred_masks`, or the product of its factors."""
    if "pred_masks" in prediction:
        return prediction["pred_masks"]
    features = prediction["mask_features"]
    return torch.einsum("bqc,bchw->bqhw", prediction["mask_embed"].to(features.dtype), features)


def mask_logits_at_points(
    prediction: dict[str, torch.Tensor], coords: torch.Tensor
) -> torch.Tensor:
    """fp32 mask logits [B, Q, P] of every query at `coords` [B, P, 2] (shared by the queries
    of an image). From factors: the features sampled at the points, then projected, where that
    takes fewer products than the full logits (P < h·w)."""
    if "pred_masks" in prediction:
        return point_sample(prediction["pred_masks"].float(), coords)
    embed, features = prediction["mask_embed"].float(), prediction["mask_features"].float()
    if coords.shape[1] >= features.shape[-2] * features.shape[-1]:
        return point_sample(torch.einsum("bqc,bchw->bqhw", embed, features), coords)
    return torch.einsum("bqc,bcp->bqp", embed, point_sample(features, coords))


def selected_mask_logits(
    prediction: dict[str, torch.Tensor], queries: list[torch.Tensor]
) -> torch.Tensor:
    """Full-resolution mask logits [M, h, w] of the queries `queries[b]` of each image b,
    concatenated image after image; from factors: only those M products, not B·Q."""
    if "pred_masks" in prediction:
        masks = prediction["pred_masks"]
        batch_idx = torch.cat([torch.full_like(q, b) for b, q in enumerate(queries)])
        return masks[batch_idx.to(masks.device), torch.cat(queries).to(masks.device)]
    features = prediction["mask_features"]
    embed = prediction["mask_embed"].to(features.dtype)  # the decoder's product dtype
    return torch.cat(
        [
            torch.einsum("mc,chw->mhw", embed[b, q.to(embed.device)], features[b])
            for b, q in enumerate(queries)
        ]
    )
