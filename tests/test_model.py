"""The model: sizes, the outputs contract, gradients, autocast, bad input."""

import pytest
import torch

from m2f_lightning.modeling import Mask2Former, TimmBackbone
from tests.helpers import tiny_model


def count(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_parameter_counts_match_the_paper() -> None:
    # Paper (Table 1 / model zoo): R50 44M, Swin-L 216M (200 queries), COCO panoptic 133 classes.
    with torch.device("meta"):
        r50 = Mask2Former(num_classes=133, backbone="r50")
        swin_l = Mask2Former(num_classes=133, backbone="swin_l", num_queries=200)
    assert count(r50) == pytest.approx(44.0, abs=0.5)
    assert count(swin_l) == pytest.approx(216.0, abs=1.0)


def test_outputs_follow_the_contract_and_pad_to_32() -> None:
    model = tiny_model(num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 70, 100) * 255)
    assert out["pred_logits"].shape == (2, 8, 8)
    assert out["image_size"] == (70, 100)
    assert out["padded_size"] == (96, 128)
    assert out["pred_masks"].shape == (2, 8, 24, 32)
    assert len(out["aux_outputs"]) == 3
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == out["pred_logits"].shape
        assert aux["pred_masks"].shape == out["pred_masks"].shape


@pytest.mark.parametrize(
    "backbone,kwargs",
    [
        ("swin_t", {}),
        ("resnet18", {}),
        ("resnet18", {"backbone_kwargs": {"frozen_bn": False}}),
    ],
)
def test_gradients_reach_every_trainable_parameter(backbone: str, kwargs: dict) -> None:
    """Every trainable tensor gets a non-zero gradient from a loss on the outputs (a detached
    or multiplied-by-zero branch would give None or zeros). The weights are first moved off
    their initialisation, whose zeros block some paths on purpose until the first update
    (zero-initialised deformable-attention offset/weight projections stop the gradient to the
    encoder queries and `level_embed`; timm zero-initialises each residual branch's last BN)."""
    model = tiny_model(backbone=backbone, **kwargs).train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():  # frozen BN keeps its affine in buffers: as pretrained ones
            if type(m).__name__ == "FrozenBatchNorm2d":
                m.weight.uniform_(0.5, 1.5, generator=g)
    out = model(torch.rand(1, 3, 64, 96) * 255)
    outputs = [out, *out["aux_outputs"]]
    # random weights: a plain sum can cancel exactly through softmax / normalisation layers
    loss = sum(
        (o[k] * torch.randn(o[k].shape, generator=g)).sum()
        for o in outputs
        for k in ("pred_logits", "pred_masks")
    )
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient for {missing[:10]}"
    zero = [n for n, p in params if not p.grad.abs().sum() > 0]
    assert not zero, f"zero gradient for {zero[:10]}"


def test_frozen_bn_is_the_default_for_resnets() -> None:
    """By default a ResNet's batch norms are frozen: in training mode they normalise with the
    stored statistics and affine (the output of an eval-mode BatchNorm network with the same
    values), never update them, and hold no trainable parameter."""
    torch.manual_seed(0)
    trainable = TimmBackbone("resnet18", frozen_bn=False)
    bns = [m for m in trainable.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:  # statistics and affine far from the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    frozen = TimmBackbone("resnet18")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    result = frozen.load_state_dict(trainable.state_dict(), strict=False)
    assert not result.missing_keys
    assert all(k.endswith("num_batches_tracked") for k in result.unexpected_keys)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    images = torch.rand(2, 3, 64, 64)
    frozen.train()
    trainable.eval()
    with torch.no_grad():
        got, want = frozen(images), trainable(images)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
    after = frozen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing updated
    trainable_names = {n for n, p in frozen.named_parameters() if p.requires_grad}
    bn_names = {n.rsplit(".", 1)[0] for n in trainable.state_dict() if "running_mean" in n}
    assert not any(n.rsplit(".", 1)[0] in bn_names for n in trainable_names)
    # and training mode matters for the unfrozen one: it normalises with the batch statistics
    trainable.train()
    with torch.no_grad():
        batch_stats = trainable(images)
    assert not torch.allclose(batch_stats["res5"], want["res5"], atol=1e-3)


def test_swin_accepts_sizes_that_are_not_window_multiples() -> None:
    backbone = TimmBackbone("swin_t", embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2))
    feats = backbone(torch.randn(1, 3, 96, 160))  # stage maps 24x40 ... 3x5, window 7
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(24, 40), (12, 20), (6, 10), (3, 5)]
    assert [f.shape[1] for f in feats.values()] == [16, 32, 64, 128]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_is_finite(dtype: torch.dtype) -> None:
    model = tiny_model().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = model(torch.rand(1, 3, 64, 64) * 255)
    assert torch.isfinite(out["pred_logits"].float()).all()
    assert torch.isfinite(out["pred_masks"].float()).all()


def test_bad_input_gives_clear_errors() -> None:
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        model(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="\\[B, 3, H, W\\]"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="float or uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.int64))


def test_padding_outside_image_sizes_does_not_change_the_output() -> None:
    """A batch padded by the caller with any value gives the outputs of the unpadded image:
    the model zeroes what lies outside `image_sizes` after normalising (detectron2's padding)."""
    model = tiny_model().eval()
    image = torch.randint(0, 256, (1, 3, 50, 70), dtype=torch.uint8)
    padded = torch.full((1, 3, 64, 96), 200, dtype=torch.uint8)
    padded[:, :, :50, :70] = image
    with torch.no_grad():
        alone = model(image.float())
        batched = model(padded, image_sizes=[(50, 70)])
        unmasked = model(padded)
    torch.testing.assert_close(batched["pred_logits"], alone["pred_logits"])
    torch.testing.assert_close(batched["pred_masks"], alone["pred_masks"])
    assert not torch.allclose(unmasked["pred_logits"], alone["pred_logits"])


def test_config_round_trip_rebuilds_the_same_architecture() -> None:
    model = tiny_model(num_classes=3)
    clone = Mask2Former.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config
