"""Multi-scale deformable attention (Deformable DETR).

Two interchangeable implementations behind `ms_deform_attn_core(..., backend=...)`:
- "torch": one bilinear `grid_sample` per feature level with all heads folded into the batch,
  the same arithmetic as the CUDA kernel of the original; runs anywhere.
- "triton": fused forward and backward kernels (`ms_deform_attn_triton`), CUDA only (or CPU under
  Triton's interpreter, `TRITON_INTERPRET=1`). Triton is optional: imported only when used.
- "auto" (default): triton for CUDA tensors when triton imports, torch otherwise.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    """Whether the `triton` package imports (it is optional)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown deformable attention backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    return backend


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend that `backend` means for tensors on `device`: "auto" becomes "triton" on CUDA
    when triton is installed, "torch" otherwise."""
    check_backend(backend)
    if backend != "auto":
        return backend
    return "triton" if torch.device(device).type == "cuda" and triton_available() else "torch"


def set_ms_deform_attn_backend(model: nn.Module, backend: str) -> int:
    """Switch every MSDeformAttn inside `model` to `backend`; returns how many were switched."""
    check_backend(backend)
    modules = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    for module in modules:
        module.backend = backend
    return len(modules)


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Sample `value` at the given locations and mix the samples with the attention weights.

    value [B, S, heads, head_dim]; sampling_locations [B, Lq, heads, levels, points, 2] in [0, 1]
    as (x, y); attention_weights [B, Lq, heads, levels, points]. Returns [B, Lq, heads * head_dim].
    Locations outside [0, 1] read zeros (grid_sample's padding_mode="zeros", align_corners=False).
    `backend`: "torch", "triton" or "auto" (see the module docstring).
    """
    if resolve_backend(backend, value.device) == "triton":
        from .ms_deform_attn_triton import ms_deform_attn_triton

        return ms_deform_attn_triton(value, spatial_shapes, sampling_locations, attention_weights)
    return _ms_deform_attn_torch(value, spatial_shapes, sampling_locations, attention_weights)


def _ms_deform_attn_torch(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    # [B, Lq, heads, levels, P] -> [B*heads, Lq, levels, P]
    weights = attention_weights.transpose(1, 2).flatten(0, 1)
    output = None
    for level, (height, width) in enumerate(spatial_shapes):
        # [B, HW, heads, D] -> [B*heads, D, H, W]
        value_l = (
            value_per_level[level]
            .permute(0, 2, 3, 1)
            .reshape(batch * heads, head_dim, height, width)
        )
        # [B, Lq, heads, P, 2] -> [B*heads, Lq, P, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(
            value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [B*heads, D, Lq, P]
        # weighted sum over points as a batched matmul: [B*h, Lq, D, P] @ [B*h, Lq, P, 1]
        # (no stacked [B*h, D, Lq, levels*P] tensor; about 30% faster forward+backward on CPU)
        mixed = torch.matmul(sampled.permute(0, 2, 1, 3), weights[:, :, level, :, None])
        output = mixed if output is None else output + mixed
    # [B*heads, Lq, D, 1] -> [B, Lq, heads*D]
    output = output.view(batch, heads, num_queries, head_dim).transpose(1, 2)
    return output.reshape(batch, num_queries, heads * head_dim)


class MSDeformAttn(nn.Module):
    """Deformable attention over `n_levels` feature maps, `n_points` samples per head and level.

    `backend` picks the sampling implementation ("auto", "torch" or "triton"; see
    `ms_deform_attn_core`). It is a plain attribute, not state: the state dict is the same for all
    backends, and `module.backend = "torch"` switches an existing model.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
        backend: str = "auto",
    ):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.backend = check_backend(backend)
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original initialisation: offsets start on a ring of directions, one per head."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query [B, Lq, C]; reference_points [B, Lq, levels, 2] in [0, 1]; value_input [B, S, C]."""
        batch, num_queries, _ = query.shape
        if sum(h * w for h, w in spatial_shapes) != value_input.shape[1]:
            raise ValueError("spatial_shapes do not add up to the length of value_input")
        value = self.value_proj(value_input).view(
            batch, -1, self.n_heads, self.d_model // self.n_heads
        )
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = weights.softmax(-1).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points
        )
        # offsets are in pixels of each level: normalise by (W, H)
        # made on the host and copied without waiting for the device queue
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype).to(
            query.device, non_blocking=True
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        output = ms_deform_attn_core(value, spatial_shapes, locations, weights, self.backend)
        return self.output_proj(output)
