"""Pixel decoder and multi-scale deformable attention: parity with HF, a naive reference,
gradients, autocast and input errors."""

import pytest
import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

from m2f_lightning.modeling.ms_deform_attn import MSDeformAttn
from m2f_lightning.modeling.pixel_decoder import MSDeformAttnPixelDecoder

KEYS = ("res2", "res3", "res4", "res5")


def _hf_to_ours(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF pixel-decoder keys to ours (hf_port.md §1.3)."""
    layer_map = {
        "self_attn_layer_norm": "norm1",
        "fc1": "linear1",
        "fc2": "linear2",
        "final_layer_norm": "norm2",
    }
    out = {}
    for key, value in hf_state.items():
        new = key
        if key.startswith("input_projections."):
            new = "input_proj." + key[len("input_projections.") :]
        elif key.startswith("adapter_1."):
            new = "lateral_convs.0." + key[len("adapter_1.") :]
        elif key.startswith("layer_1."):
            new = "output_convs.0." + key[len("layer_1.") :]
        elif key.startswith("mask_projection."):
            new = "mask_features." + key[len("mask_projection.") :]
        elif key.startswith("encoder.layers."):
            for hf_name, our_name in layer_map.items():
                new = new.replace(f".{hf_name}.", f".{our_name}.")
        out[new] = value
    return out


def _features(channels, sizes, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(batch, c, h, w, generator=gen)
        for k, c, (h, w) in zip(KEYS, channels, sizes, strict=True)
    }


@pytest.mark.parametrize(
    ("channels", "dim", "heads", "layers", "sizes"),
    [
        ([16, 24, 40, 48], 64, 4, 2, [(21, 27), (11, 14), (6, 7), (3, 4)]),
        ([8, 16, 32, 64], 32, 8, 3, [(17, 13), (9, 7), (5, 4), (3, 2)]),
    ],
)
def test_parity_with_hf(channels, dim, heads, layers, sizes):
    torch.manual_seed(0)
    config = Mask2FormerConfig(
        feature_size=dim,
        mask_feature_size=dim,
        encoder_layers=layers,
        encoder_feedforward_dim=2 * dim,
        num_attention_heads=heads,
        dropout=0.0,
    )
    hf = Mask2FormerPixelDecoder(config, feature_channels=channels).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere
        for p in hf.parameters():
            p.normal_(0, 0.2)
    ours = MSDeformAttnPixelDecoder(
        channels,
        conv_dim=dim,
        mask_dim=dim,
        encoder_layers=layers,
        encoder_ffn_dim=2 * dim,
        encoder_heads=heads,
    ).eval()
    mapped = _hf_to_ours(hf.state_dict())
    result = ours.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    feats = _features(channels, sizes)
    with torch.no_grad():
        ref = hf([feats[k] for k in KEYS])
        mask, multi = ours(feats)
    assert mask.shape == (2, dim, *sizes[0])
    assert (mask - ref.mask_features).abs().max() <= 1e-5
    assert len(multi) == 3
    for got, exp, size in zip(multi, ref.multi_scale_features, sizes[:0:-1], strict=True):
        assert got.shape[-2:] == size
        assert (got - exp).abs().max() <= 1e-5


def _bilinear(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """value [D, H, W] at normalised (x, y), align_corners=False, zero outside."""
    _, height, width = value.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(value.shape[0], dtype=value.dtype)
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            if 0 <= xi < width and 0 <= yi < height:
                wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
                out += wgt * value[:, yi, xi]
    return out


@torch.no_grad()
@pytest.mark.parametrize("backend", ["torch", "gather"])
def test_ms_deform_attn_matches_naive_loop(backend):
    torch.manual_seed(1)
    d_model, heads, levels, points = 8, 2, 2, 3
    shapes = [(3, 5), (2, 3)]
    attn = MSDeformAttn(d_model, levels, heads, points, backend=backend)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.5)
    total = sum(h * w for h, w in shapes)
    query = torch.randn(1, 4, d_model)
    ref_points = torch.rand(1, 4, levels, 2)
    value_in = torch.randn(1, total, d_model)
    got = attn(query, ref_points, value_in, shapes)

    head_dim = d_model // heads
    value = attn.value_proj(value_in)[0].view(total, heads, head_dim)
    offsets = attn.sampling_offsets(query)[0].detach().view(4, heads, levels, points, 2)
    weights = attn.attention_weights(query)[0].view(4, heads, levels * points).softmax(-1)
    weights = weights.view(4, heads, levels, points)
    starts = [0, shapes[0][0] * shapes[0][1]]
    expected = torch.zeros(4, d_model)
    for q in range(4):
        for h in range(heads):
            acc = torch.zeros(head_dim)
            for lvl, (hh, ww) in enumerate(shapes):
                v = value[starts[lvl] : starts[lvl] + hh * ww, h].T.reshape(head_dim, hh, ww)
                for p in range(points):
                    x = float(ref_points[0, q, lvl, 0] + offsets[q, h, lvl, p, 0] / ww)
                    y = float(ref_points[0, q, lvl, 1] + offsets[q, h, lvl, p, 1] / hh)
                    acc += weights[q, h, lvl, p] * _bilinear(v, x, y)
            expected[q, h * head_dim : (h + 1) * head_dim] = acc
    expected = attn.output_proj(expected)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)


def _tiny_decoder():
    torch.manual_seed(0)
    return MSDeformAttnPixelDecoder(
        [8, 16, 24, 32],
        conv_dim=32,
        mask_dim=16,
        encoder_layers=1,
        encoder_ffn_dim=32,
        encoder_heads=4,
        norm_groups=8,
    )


def test_gradients_reach_every_parameter():
    model = _tiny_decoder()
    with torch.no_grad():  # the original init zeroes the offset/attention weights, which would
        for p in model.parameters():  # block the level_embed gradient at step 0
            p.add_(0.1 * torch.randn_like(p))
    feats = _features([8, 16, 24, 32], [(13, 11), (7, 6), (4, 3), (2, 2)])
    mask, multi = model(feats)
    (mask.square().mean() + sum(m.square().mean() for m in multi)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_autocast_output_is_fp32_and_finite():
    model = _tiny_decoder()
    feats = {
        k: v.bfloat16()
        for k, v in _features([8, 16, 24, 32], [(9, 9), (5, 5), (3, 3), (2, 2)]).items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask, multi = model(feats)
    for out in (mask, *multi):
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_bad_inputs_raise_clear_errors():
    model = _tiny_decoder()
    feats = _features([8, 16, 24, 32], [(8, 8), (4, 4), (2, 2), (1, 1)])
    with pytest.raises(KeyError, match="res4"):
        model({k: v for k, v in feats.items() if k != "res4"})
    feats["res3"] = torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match="res3 has 5 channels, expected 16"):
        model(feats)
