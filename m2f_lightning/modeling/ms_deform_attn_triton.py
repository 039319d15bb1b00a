"""Multi-scale deformable attention as Triton kernels (forward and backward).

Same arithmetic as the grid_sample path of `ms_deform_attn.ms_deform_attn_core` (bilinear,
align_corners=False, zeros outside the map), but one kernel per pass instead of one grid_sample,
matmul and sum per level. Each program takes a block of queries of one (batch, head) pair and the
whole head dimension (padded to a power of two and masked). Loads are cast to fp32 and everything
accumulates in fp32; the output takes the dtype of `value`. The backward recomputes the bilinear
corners, scatters the value gradient with atomic adds into an fp32 buffer and writes the location
and weight gradients directly (each belongs to exactly one program).

Importing this module needs `triton`. Kernels are decorated at import, so Triton's CPU interpreter
(`TRITON_INTERPRET=1`) must be switched on before this module is first imported.
"""

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

_FWD_BLOCK_Q = 64
_BWD_BLOCK_Q = 32
_INTERPRET_BLOCK_Q = 256  # the interpreter pays per program, not per lane: fewer, wider programs


@triton.jit
def _corner(value_ptr, row_base, xi, yi, width, height, col, valid_q, d_mask, HEADS, HEAD_DIM):
    """Offsets, mask and fp32 values of one bilinear corner: [BLOCK_Q, BLOCK_D]."""
    inside = valid_q & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    pixel = row_base + (yi * width + xi).to(tl.int64)
    offsets = (pixel * HEADS)[:, None] * HEAD_DIM + col
    mask = inside[:, None] & d_mask[None, :]
    values = tl.load(value_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return offsets, mask, values


@triton.jit
def _source_index(loc, size):
    """grid_sample's unnormalisation of a [0, 1] location (align_corners=False): loc*size - 0.5,
    computed through the [-1, 1] grid as grid_sample does so that floor() decisions agree. Clamped
    to [-2, size + 1], where all four corners are outside already, so the int cast cannot
    overflow on far-away locations."""
    grid = 2.0 * loc - 1.0
    index = ((grid + 1.0) * size - 1.0) * 0.5
    return tl.minimum(tl.maximum(index, -2.0), size + 1.0)


@triton.jit
def _sample_point(loc_ptr, attn_ptr, idx, valid_q, wf, hf):
    """One sampling point per query: its attention weight, the fractional offsets (tx, ty) inside
    its bilinear cell and the cell's top-left corner (x0, y0), all fp32 / int32 [BLOCK_Q]."""
    x = tl.load(loc_ptr + 2 * idx, mask=valid_q, other=0.0).to(tl.float32)
    y = tl.load(loc_ptr + 2 * idx + 1, mask=valid_q, other=0.0).to(tl.float32)
    w = tl.load(attn_ptr + idx, mask=valid_q, other=0.0).to(tl.float32)
    ix = _source_index(x, wf)
    iy = _source_index(y, hf)
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    return w, ix - x0f, iy - y0f, x0f.to(tl.int32), y0f.to(tl.int32)


@triton.jit
def _four_corners(
    value_ptr, row_base, x0, y0, width, height, col, valid_q, d_mask, HEADS, HEAD_DIM
):
    """The four bilinear corners of the cells at (x0, y0): offsets, masks and values of each."""
    o00, m00, v00 = _corner(
        value_ptr, row_base, x0, y0, width, height, col, valid_q, d_mask, HEADS, HEAD_DIM
    )
    o01, m01, v01 = _corner(
        value_ptr, row_base, x0 + 1, y0, width, height, col, valid_q, d_mask, HEADS, HEAD_DIM
    )
    o10, m10, v10 = _corner(
        value_ptr, row_base, x0, y0 + 1, width, height, col, valid_q, d_mask, HEADS, HEAD_DIM
    )
    o11, m11, v11 = _corner(
        value_ptr, row_base, x0 + 1, y0 + 1, width, height, col, valid_q, d_mask, HEADS, HEAD_DIM
    )
    return o00, m00, v00, o01, m01, v01, o10, m10, v10, o11, m11, v11


@triton.jit
def _bilinear(tx, ty, v00, v01, v10, v11):
    """The bilinear sample [BLOCK_Q, BLOCK_D] from the corner values and the offsets in the cell."""
    sampled = ((1.0 - tx) * (1.0 - ty))[:, None] * v00
    sampled += (tx * (1.0 - ty))[:, None] * v01
    sampled += ((1.0 - tx) * ty)[:, None] * v10
    sampled += (tx * ty)[:, None] * v11
    return sampled


@triton.jit
def _program_block(num_query, HEADS, HEAD_DIM, LEVELS, POINTS, BLOCK_Q, BLOCK_D):
    """What one program covers: batch b, head dims d, the query and dim masks, the row of each
    query in [B, Lq, heads] (bqh), its first attention weight and its value columns."""
    pid_bh = tl.program_id(0)
    pid_q = tl.program_id(1)
    b = pid_bh // HEADS
    h = pid_bh % HEADS
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    q_mask = q < num_query
    d_mask = d < HEAD_DIM
    bqh = (b * num_query + q).to(tl.int64) * HEADS + h
    attn_base = bqh * (LEVELS * POINTS)
    col = h * HEAD_DIM + d[None, :]
    return b, d, q_mask, d_mask, bqh, attn_base, col


@triton.jit
def _level_geometry(shapes_ptr, starts_ptr, level, b, num_value):
    """Height and width of a level (int and fp32) and the first value row of its map."""
    height = tl.load(shapes_ptr + 2 * level)
    width = tl.load(shapes_ptr + 2 * level + 1)
    row_base = b.to(tl.int64) * num_value + tl.load(starts_ptr + level)
    return height, width, height.to(tl.float32), width.to(tl.float32), row_base


@triton.jit
def _ms_deform_attn_fwd(
    value_ptr,
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    attn_ptr,
    out_ptr,
    num_value,
    num_query,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    LEVELS: tl.constexpr,
    POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b, d, q_mask, d_mask, bqh, attn_base, col = _program_block(
        num_query, HEADS, HEAD_DIM, LEVELS, POINTS, BLOCK_Q, BLOCK_D
    )
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for level in tl.static_range(LEVELS):
        height, width, hf, wf, row_base = _level_geometry(
            shapes_ptr, starts_ptr, level, b, num_value
        )
        for point in tl.static_range(POINTS):
            idx = attn_base + level * POINTS + point
            w, tx, ty, x0, y0 = _sample_point(loc_ptr, attn_ptr, idx, q_mask, wf, hf)
            _, _, v00, _, _, v01, _, _, v10, _, _, v11 = _four_corners(
                value_ptr, row_base, x0, y0, width, height, col, q_mask, d_mask, HEADS, HEAD_DIM
            )
            sampled = _bilinear(tx, ty, v00, v01, v10, v11)
            acc += w[:, None] * sampled
    out_offsets = bqh[:, None] * HEAD_DIM + d[None, :]
    out_mask = q_mask[:, None] & d_mask[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _ms_deform_attn_bwd(
    value_ptr,
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    attn_ptr,
    grad_out_ptr,
    grad_value_ptr,
    grad_loc_ptr,
    grad_attn_ptr,
    num_value,
    num_query,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    LEVELS: tl.constexpr,
    POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b, d, q_mask, d_mask, bqh, attn_base, col = _program_block(
        num_query, HEADS, HEAD_DIM, LEVELS, POINTS, BLOCK_Q, BLOCK_D
    )
    grad_out = tl.load(
        grad_out_ptr + bqh[:, None] * HEAD_DIM + d[None, :],
        mask=q_mask[:, None] & d_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    for level in tl.static_range(LEVELS):
        height, width, hf, wf, row_base = _level_geometry(
            shapes_ptr, starts_ptr, level, b, num_value
        )
        for point in tl.static_range(POINTS):
            idx = attn_base + level * POINTS + point
            w, tx, ty, x0, y0 = _sample_point(loc_ptr, attn_ptr, idx, q_mask, wf, hf)
            # d(value sample)/d(corner value), scattered into grad_value, is w * bilinear weight
            weighted = w[:, None] * grad_out
            o00, m00, v00, o01, m01, v01, o10, m10, v10, o11, m11, v11 = _four_corners(
                value_ptr, row_base, x0, y0, width, height, col, q_mask, d_mask, HEADS, HEAD_DIM
            )
            tl.atomic_add(
                grad_value_ptr + o00,
                ((1.0 - tx) * (1.0 - ty))[:, None] * weighted,
                mask=m00,
                sem="relaxed",
            )
            tl.atomic_add(
                grad_value_ptr + o01, (tx * (1.0 - ty))[:, None] * weighted, mask=m01, sem="relaxed"
            )
            tl.atomic_add(
                grad_value_ptr + o10, ((1.0 - tx) * ty)[:, None] * weighted, mask=m10, sem="relaxed"
            )
            tl.atomic_add(
                grad_value_ptr + o11, (tx * ty)[:, None] * weighted, mask=m11, sem="relaxed"
            )
            sampled = _bilinear(tx, ty, v00, v01, v10, v11)
            tl.store(
                grad_attn_ptr + idx,
                tl.sum(grad_out * sampled, axis=1).to(grad_attn_ptr.dtype.element_ty),
                mask=q_mask,
            )
            # derivatives of the sample along the source index, then d(index)/d(location) = size
            d_ix = (1.0 - ty)[:, None] * (v01 - v00) + ty[:, None] * (v11 - v10)
            d_iy = (1.0 - tx)[:, None] * (v10 - v00) + tx[:, None] * (v11 - v01)
            grad_x = w * wf * tl.sum(grad_out * d_ix, axis=1)
            grad_y = w * hf * tl.sum(grad_out * d_iy, axis=1)
            loc_ty = grad_loc_ptr.dtype.element_ty
            tl.store(grad_loc_ptr + 2 * idx, grad_x.to(loc_ty), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * idx + 1, grad_y.to(loc_ty), mask=q_mask)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _block_q(num_query: int, gpu_block: int) -> int:
    if _interpreting():
        return min(_INTERPRET_BLOCK_Q, triton.next_power_of_2(max(num_query, 1)))
    return gpu_block


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Launch on the tensors' GPU, not the current one (a no-op on CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _geometry(
    spatial_shapes: list[tuple[int, int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = [int(h) * int(w) for h, w in spatial_shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    shapes = torch.tensor(
        [[int(h), int(w)] for h, w in spatial_shapes], dtype=torch.int32, device=device
    )
    return shapes, torch.tensor(starts, dtype=torch.int64, device=device)


class _MSDeformAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, shapes, starts, sampling_locations, attention_weights):
        batch, num_value, heads, head_dim = value.shape
        _, num_query, _, levels, points, _ = sampling_locations.shape
        out = torch.empty(batch, num_query, heads, head_dim, dtype=value.dtype, device=value.device)
        block_q = _block_q(num_query, _FWD_BLOCK_Q)
        grid = (batch * heads, triton.cdiv(num_query, block_q))
        _ms_deform_attn_fwd[grid](
            value,
            shapes,
            starts,
            sampling_locations,
            attention_weights,
            out,
            num_value,
            num_query,
            HEADS=heads,
            HEAD_DIM=head_dim,
            LEVELS=levels,
            POINTS=points,
            BLOCK_Q=block_q,
            BLOCK_D=triton.next_power_of_2(head_dim),
        )
        ctx.save_for_backward(value, shapes, starts, sampling_locations, attention_weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        value, shapes, starts, sampling_locations, attention_weights = ctx.saved_tensors
        batch, num_value, heads, head_dim = value.shape
        _, num_query, _, levels, points, _ = sampling_locations.shape
        grad_out = grad_out.contiguous()
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        grad_loc = torch.empty_like(sampling_locations)
        grad_attn = torch.empty_like(attention_weights)
        block_q = _block_q(num_query, _BWD_BLOCK_Q)
        grid = (batch * heads, triton.cdiv(num_query, block_q))
        _ms_deform_attn_bwd[grid](
            value,
            shapes,
            starts,
            sampling_locations,
            attention_weights,
            grad_out,
            grad_value,
            grad_loc,
            grad_attn,
            num_value,
            num_query,
            HEADS=heads,
            HEAD_DIM=head_dim,
            LEVELS=levels,
            POINTS=points,
            BLOCK_Q=block_q,
            BLOCK_D=triton.next_power_of_2(head_dim),
        )
        return grad_value.to(value.dtype), None, None, grad_loc, grad_attn


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The Triton twin of `ms_deform_attn_core(..., backend="torch")`: same shapes, same result."""
    if value.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            "the triton deformable attention needs CUDA tensors "
            f"(got {value.device.type}; TRITON_INTERPRET=1 runs it on CPU, slowly)"
        )
    batch, _, heads, head_dim = value.shape
    num_query = sampling_locations.shape[1]
    shapes, starts = _geometry(spatial_shapes, value.device)
    with _on_device(value.device):
        out = _MSDeformAttnFunction.apply(
            value.contiguous(),
            shapes,
            starts,
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
        )
    return out.view(batch, num_query, heads * head_dim)
