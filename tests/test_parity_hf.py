"""Parity with the Hugging Face port: same random weights, same outputs (all 10 prediction sets)."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

from m2f_lightning.checkpoints import load_model

CONFIGS = [
    # (num_labels, queries, hidden, window, decoder_layers incl. the query prediction)
    (5, 10, 64, 7, 4),
    (11, 16, 96, 4, 7),
]


def build_hf(num_labels: int, queries: int, hidden: int, window: int, dec_layers: int):
    backbone = SwinConfig(
        embed_dim=32,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        window_size=window,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        drop_path_rate=0.0,
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=num_labels,
        hidden_dim=hidden,
        feature_size=hidden,
        mask_feature_size=hidden,
        encoder_layers=2,
        encoder_feedforward_dim=128,
        decoder_layers=dec_layers,
        dim_feedforward=128,
        num_attention_heads=4,
        num_queries=queries,
    )
    torch.manual_seed(1)
    return Mask2FormerForUniversalSegmentation(config).eval()


def max_abs_differences(ours, hf, images: torch.Tensor) -> list[float]:
    with torch.no_grad():
        out = ours(images)
        pixel_values = (images - ours.pixel_mean) / ours.pixel_std
        ref = hf(pixel_values=pixel_values, output_auxiliary_logits=True)
    pairs = [
        (out["pred_logits"], ref.class_queries_logits),
        (out["pred_masks"], ref.masks_queries_logits),
    ]
    assert len(out["aux_outputs"]) == len(ref.auxiliary_logits)
    for a, b in zip(out["aux_outputs"], ref.auxiliary_logits, strict=True):
        pairs += [
            (a["pred_logits"], b["class_queries_logits"]),
            (a["pred_masks"], b["masks_queries_logits"]),
        ]
    return [(x - y).abs().max().item() for x, y in pairs]


@pytest.mark.parametrize("spec", CONFIGS)
def test_converted_hf_model_gives_the_same_outputs(tmp_path, spec) -> None:
    hf = build_hf(*spec)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    images = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(0)) * 255
    diffs = max_abs_differences(ours, hf, images)
    assert len(diffs) == 2 * spec[4]
    assert max(diffs) <= 1e-4, diffs


def test_both_key_spellings_convert(tmp_path) -> None:
    """save_pretrained writes the legacy hub names; the in-memory v5 names must load as well."""
    hf = build_hf(*CONFIGS[0])
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    on_disk = load_file(str(weights))
    assert any(".attention.self.query." in k for k in on_disk), "expected legacy hub spelling"
    images = torch.rand(1, 3, 64, 96) * 255
    assert max(max_abs_differences(load_model(tmp_path), hf, images)) <= 1e-4
    in_memory = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(".attention.q_proj." in k for k in in_memory)
    save_file(in_memory, str(weights))
    assert max(max_abs_differences(load_model(tmp_path), hf, images)) <= 1e-4


def test_missing_or_unexpected_hf_keys_are_listed(tmp_path) -> None:
    hf = build_hf(*CONFIGS[0])
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    dropped = "model.transformer_module.decoder.layernorm.weight"
    del state[dropped]
    save_file(state, str(weights))
    with pytest.raises(KeyError, match="missing keys.*decoder_norm.weight"):
        load_model(tmp_path)
    state["model.some_new_module.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(KeyError, match="some_new_module"):
        load_model(tmp_path)
