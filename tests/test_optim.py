"""Optimiser groups and schedules of the paper's recipe."""

import pytest
import torch

from m2f_lightning.runs.optim import build_optimizer, build_param_groups, lr_lambda
from tests.helpers import tiny_model


def test_param_groups_follow_the_recipe() -> None:
    model = tiny_model()
    groups = build_param_groups(model, lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    setting = {}
    for group in groups:
        for p in group["params"]:
            setting[id(p)] = (group["lr"], group["weight_decay"])
    names = dict(model.named_parameters())
    assert setting[id(names["backbone.body.layers_0.blocks.0.mlp.fc1.weight"])] == pytest.approx(
        (1e-5, 0.05)
    )
    assert setting[id(names["backbone.body.layers_0.blocks.0.norm1.weight"])] == pytest.approx(
        (1e-5, 0.0)
    )
    assert (
        setting[id(names["backbone.body.layers_0.blocks.0.attn.relative_position_bias_table"])][1]
        == 0.0
    )
    assert setting[id(names["transformer_decoder.query_feat.weight"])] == pytest.approx((1e-4, 0.0))
    assert setting[id(names["transformer_decoder.level_embed.weight"])] == pytest.approx(
        (1e-4, 0.0)
    )
    assert setting[id(names["pixel_decoder.level_embed"])] == pytest.approx(
        (1e-4, 0.05)
    )  # a Parameter
    assert setting[id(names["pixel_decoder.input_proj.0.1.weight"])] == pytest.approx(
        (1e-4, 0.0)
    )  # GN
    assert setting[id(names["transformer_decoder.class_embed.weight"])] == pytest.approx(
        (1e-4, 0.05)
    )
    assert len(setting) == sum(1 for p in model.parameters() if p.requires_grad)
    assert isinstance(build_optimizer(model), torch.optim.AdamW)


def test_poly_and_multistep_schedules() -> None:
    poly = lr_lambda("poly", max_steps=100, power=0.9)
    assert poly(0) == 1.0 and poly(100) == 0.0
    assert poly(50) == pytest.approx(0.5**0.9)
    step = lr_lambda("multistep", max_steps=368750, milestones=(0.889, 0.963), gamma=0.1)
    assert (
        step(327000) == 1.0
        and step(328000) == pytest.approx(0.1)
        and step(356000) == pytest.approx(0.01)
    )
    warm = lr_lambda("poly", max_steps=100, warmup_steps=10, warmup_factor=0.0)
    assert warm(0) == 0.0 and warm(5) == pytest.approx(0.5 * (1 - 0.05) ** 0.9)
    with pytest.raises(ValueError, match="unknown scheduler"):
        lr_lambda("cosine", max_steps=10)
