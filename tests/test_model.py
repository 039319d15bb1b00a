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
    model = tiny_model(backbone=backbone, **kwargs).train()
    out = model(torch.rand(1, 3, 64, 96) * 255)
    loss = out["pred_logits"].sum() + out["pred_masks"].sum()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:10]}"


def test_frozen_bn_is_the_default_for_resnets() -> None:
    frozen = TimmBackbone("resnet18")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    trainable = TimmBackbone("resnet18", frozen_bn=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable.modules())


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
