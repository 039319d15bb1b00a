"""The "gather" deformable attention (one embedding_bag over a zero-padded value table) against
the grid_sample path ("torch", the original's arithmetic): forward and the three gradients, with
samples inside, on the border of and far outside the feature maps."""

import pytest
import torch

from m2f_lightning.modeling import ms_deform_attn, set_ms_deform_attn_backend
from m2f_lightning.modeling.ms_deform_attn import ms_deform_attn_core
from tests.helpers import tiny_model

SHAPES = [(5, 7), (3, 3), (2, 1), (1, 4)]


def inputs(batch=2, heads=3, head_dim=4, points=3, queries=11, spread=(-0.6, 1.6), seed=0):
    g = torch.Generator().manual_seed(seed)
    length = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, length, heads, head_dim, generator=g)
    low, high = spread
    locations = low + (high - low) * torch.rand(
        batch, queries, heads, len(SHAPES), points, 2, generator=g
    )
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g)
    return value, locations, weights


def run(backend, value, locations, weights):
    return ms_deform_attn_core(value, SHAPES, locations, weights, backend=backend)


@pytest.mark.parametrize("spread", [(0.0, 1.0), (-0.6, 1.6), (-5.0, 6.0)])
def test_forward_matches_grid_sample(spread):
    value, locations, weights = inputs(spread=spread)
    want = run("torch", value, locations, weights)
    got = run("gather", value, locations, weights)
    assert got.shape == want.shape == (2, 11, 3 * 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if spread == (-5.0, 6.0):  # most samples read nothing: zeros must come out, not clamped rows
        assert (want == 0).float().mean() > 0.3


def test_samples_on_pixel_centres_edges_and_just_outside():
    """Exact positions where floor() and the zero padding decide: pixel centres, the maps'
    edges (0 and 1), half a pixel and one pixel outside, on every level."""
    value, _, _ = inputs(queries=1)
    ticks = []
    for h, w in SHAPES:
        for size in (h, w):
            ticks += [0.0, 1.0, 0.5 / size, 1 - 0.5 / size, -0.5 / size, 1 + 0.5 / size]
            ticks += [-1.0 / size, 1 + 1.0 / size, -1.5 / size, 1 + 1.5 / size]
    ticks = torch.tensor(sorted(set(ticks)))
    xs, ys = torch.meshgrid(ticks, ticks, indexing="ij")
    grid = torch.stack((xs.flatten(), ys.flatten()), -1)  # [N, 2]
    n = grid.shape[0]
    locations = grid.view(1, n, 1, 1, 1, 2).expand(2, n, 3, len(SHAPES), 1, 2).contiguous()
    weights = torch.ones(2, n, 3, len(SHAPES), 1)
    want = run("torch", value, locations, weights)
    torch.testing.assert_close(run("gather", value, locations, weights), want, rtol=1e-5, atol=1e-6)


def test_gradients_match_grid_sample():
    value, locations, weights = inputs(spread=(-0.3, 1.3), seed=1)
    grad_out = torch.randn(2, 11, 12, generator=torch.Generator().manual_seed(2))
    grads = {}
    for backend in ("torch", "gather"):
        leaves = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
        out = run(backend, *leaves)
        grads[backend] = torch.autograd.grad(out, leaves, grad_out)
    for got, want in zip(grads["gather"], grads["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(g.abs().sum() > 0 for g in grads["torch"])  # not vacuous


def test_int64_indices_give_the_same_result(monkeypatch):
    """Tables beyond int32's reach switch to int64 indices (here forced by a zero limit)."""
    value, locations, weights = inputs()
    int32 = run("gather", value, locations, weights)
    monkeypatch.setattr(ms_deform_attn, "INT32_ROWS", 0)
    assert torch.equal(run("gather", value, locations, weights), int32)


def test_model_inference_gathers_and_equals_grid_sample(monkeypatch):
    """A model in eval under no_grad picks "gather" on CPU ("auto") and predicts what the
    grid_sample path predicts."""
    model = tiny_model().eval()
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3)) * 255
    calls = []
    gather = ms_deform_attn._ms_deform_attn_gather
    monkeypatch.setattr(
        ms_deform_attn, "_ms_deform_attn_gather", lambda *a: calls.append(1) or gather(*a)
    )
    with torch.no_grad():
        auto = model(images)
        set_ms_deform_attn_backend(model, "torch")
        reference = model(images)
    assert len(calls) == 1, "auto did not use the gather backend under no_grad on CPU"
    torch.testing.assert_close(auto["pred_masks"], reference["pred_masks"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(auto["pred_logits"], reference["pred_logits"], rtol=1e-4, atol=1e-4)
