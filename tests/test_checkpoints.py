"""Our checkpoints, Lightning-style checkpoints and model-zoo .pkl files."""

import pickle
import re

import numpy as np
import pytest
import torch

from m2f_lightning.checkpoints import init_from_weights, load_model, read_d2_pickle, save_model
from m2f_lightning.checkpoints.io import CLASS_HEAD
from tests.helpers import tiny_model


def same_outputs(a, b) -> bool:
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        return torch.allclose(a(images)["pred_masks"], b(images)["pred_masks"], atol=1e-6)


def test_save_and_load_our_checkpoint(tmp_path) -> None:
    model = tiny_model(num_classes=4).eval()
    path = save_model(model, tmp_path / "m.pt", class_names=["a", "b", "c", "d"])
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.class_names == ["a", "b", "c", "d"]
    assert same_outputs(model, loaded)


def test_lightning_checkpoint_loads(tmp_path) -> None:
    model = tiny_model(num_classes=4).eval()
    ckpt = {
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model_config": model.config, "class_names": list("abcd")},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    assert same_outputs(model, load_model(tmp_path / "last.ckpt"))


def to_d2_key(key: str) -> str:
    """Our key → the original detectron2 name (the inverse of the converter, written here)."""
    rules = [
        (
            r"^backbone\.body\.layers_(\d+)\.downsample\.",
            lambda m: f"backbone.layers.{int(m[1]) - 1}.downsample.",
        ),
        (r"^backbone\.body\.layers_(\d+)\.blocks\.", lambda m: f"backbone.layers.{m[1]}.blocks."),
        (r"^backbone\.body\.patch_embed\.", lambda m: "backbone.patch_embed."),
        (r"^backbone\.out_norms\.(\d)\.", lambda m: f"backbone.norm{m[1]}."),
        (
            r"^pixel_decoder\.lateral_convs\.0\.0\.",
            lambda m: "sem_seg_head.pixel_decoder.adapter_1.",
        ),
        (
            r"^pixel_decoder\.lateral_convs\.0\.1\.",
            lambda m: "sem_seg_head.pixel_decoder.adapter_1.norm.",
        ),
        (r"^pixel_decoder\.output_convs\.0\.0\.", lambda m: "sem_seg_head.pixel_decoder.layer_1."),
        (
            r"^pixel_decoder\.output_convs\.0\.1\.",
            lambda m: "sem_seg_head.pixel_decoder.layer_1.norm.",
        ),
        (
            r"^pixel_decoder\.(level_embed|encoder\.)",
            lambda m: f"sem_seg_head.pixel_decoder.transformer.{m[1]}",
        ),
        (r"^pixel_decoder\.", lambda m: "sem_seg_head.pixel_decoder."),
        (
            r"^transformer_decoder\.self_attn_layers\.(\d+)\.attn\.",
            lambda m: f"sem_seg_head.predictor.transformer_self_attention_layers.{m[1]}.self_attn.",
        ),
        (
            r"^transformer_decoder\.self_attn_layers\.(\d+)\.norm\.",
            lambda m: f"sem_seg_head.predictor.transformer_self_attention_layers.{m[1]}.norm.",
        ),
        (
            r"^transformer_decoder\.cross_attn_layers\.(\d+)\.attn\.",
            lambda m: (
                f"sem_seg_head.predictor.transformer_cross_attention_layers.{m[1]}.multihead_attn."
            ),
        ),
        (
            r"^transformer_decoder\.cross_attn_layers\.(\d+)\.norm\.",
            lambda m: f"sem_seg_head.predictor.transformer_cross_attention_layers.{m[1]}.norm.",
        ),
        (
            r"^transformer_decoder\.ffn_layers\.",
            lambda m: "sem_seg_head.predictor.transformer_ffn_layers.",
        ),
        (r"^transformer_decoder\.", lambda m: "sem_seg_head.predictor."),
    ]
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key, count=1)
        if n:
            return new
    raise AssertionError(f"no d2 name for {key}")


def test_model_zoo_pkl_converts(tmp_path) -> None:
    model = tiny_model(num_classes=4).eval()
    weights = {to_d2_key(k): v.numpy() for k, v in model.state_dict().items()}
    weights["criterion.empty_weight"] = np.ones(5, dtype=np.float32)
    with (tmp_path / "model_final.pkl").open("wb") as f:
        pickle.dump({"model": weights, "__author__": "test"}, f)
    loaded = load_model(tmp_path / "model_final.pkl", **{k: v for k, v in model.config.items()})
    assert same_outputs(model, loaded)
    with pytest.raises(ValueError, match="num_classes"):
        load_model(tmp_path / "model_final.pkl")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pkl_with_arbitrary_objects_is_refused(tmp_path) -> None:
    with (tmp_path / "evil.pkl").open("wb") as f:
        pickle.dump({"model": {"x": Evil()}}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle builtins.print"):
        read_d2_pickle(tmp_path / "evil.pkl")


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nope.pt")


def _write_model_zoo_pkl(model, path) -> None:
    weights = {to_d2_key(k): v.numpy() for k, v in model.state_dict().items()}
    with path.open("wb") as f:
        pickle.dump({"model": weights}, f)


@pytest.mark.parametrize("source", ["ours", "pkl"])
def test_init_from_weights_with_another_class_count_keeps_a_fresh_class_head(
    tmp_path, source: str
) -> None:
    """Fine-tuning: COCO-like weights (7 classes) into a 3-class model. Everything but the class
    head is copied; the class head keeps the target model's own initialisation."""
    pretrained = tiny_model(num_classes=7)
    if source == "ours":
        path = save_model(pretrained, tmp_path / "pretrained.pt")
    else:
        path = tmp_path / "model_final.pkl"
        _write_model_zoo_pkl(pretrained, path)
    torch.manual_seed(1)
    model = tiny_model(num_classes=3)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if "class_embed" in k}
    report = init_from_weights(model, path)
    assert report == {"matched": [], "fresh": ["0", "1", "2"]}
    state, source_state = model.state_dict(), pretrained.state_dict()
    for key, value in state.items():
        if key in CLASS_HEAD:
            assert torch.equal(value, fresh_head[key])
        else:
            assert torch.equal(value, source_state[key]), key


def test_init_from_weights_with_the_same_classes_copies_everything(tmp_path) -> None:
    pretrained = tiny_model(num_classes=3)
    path = save_model(pretrained, tmp_path / "pretrained.pt")
    torch.manual_seed(1)
    model = tiny_model(num_classes=3)
    assert init_from_weights(model, path)["fresh"] == []
    assert same_outputs(pretrained.eval(), model.eval())


def test_init_from_weights_of_another_architecture_names_the_tensors(tmp_path) -> None:
    path = save_model(tiny_model(num_classes=3, num_queries=4), tmp_path / "pretrained.pt")
    with pytest.raises(ValueError, match=r"query_feat.weight: \(4, 32\) in the file, \(8, 32\)"):
        init_from_weights(tiny_model(num_classes=3), path)
