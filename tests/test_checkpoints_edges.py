"""Checkpoint reading and writing details that a user meets and the round-trip tests missed
(found by mutation testing, docs/testing.md): what `save_model` stores by default, older
Lightning hyper-parameter spellings, model-zoo files with the buffers and statistics the
official ones carry, HF directories saved as `pytorch_model.bin`, files that are not weights."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from m2f_lightning.checkpoints import load_model, save_model
from m2f_lightning.checkpoints.io import read_weights_and_classes
from m2f_lightning.errors import CheckpointMismatchError, RefusedPickleError
from tests.helpers import tiny_model
from tests.test_checkpoints import same_outputs, to_d2_key

NAMES = ["a", "b", "c", "d"]


def test_save_model_stores_the_models_names_and_flags_by_default(tmp_path: Path) -> None:
    model = tiny_model(num_classes=4)
    model.class_names, model.is_thing = NAMES, [1, 0, 1, 0]
    path = save_model(model, tmp_path / "new" / "nested" / "m.pt")  # folders made
    stored = torch.load(path, weights_only=True)
    assert stored["format"] == "m2f_lightning" and stored["format_version"] == 1
    assert stored["class_names"] == NAMES
    assert stored["is_thing"] == [True, False, True, False]
    assert all(type(t) is bool for t in stored["is_thing"])
    loaded = load_model(path)
    assert (loaded.class_names, loaded.is_thing) == (NAMES, [True, False, True, False])
    other = save_model(model, tmp_path / "other.pt", class_names=list("wxyz"), is_thing=[0] * 4)
    assert torch.load(other, weights_only=True)["is_thing"] == [False] * 4


def test_a_config_saved_before_backbone_weights_loads(tmp_path: Path) -> None:
    model = tiny_model(num_classes=4).eval()
    path = save_model(model, tmp_path / "m.pt")
    stored = torch.load(path, weights_only=True)
    stored["model_config"]["backbone_pretrained"] = True  # the older spelling
    torch.save(stored, path)
    assert same_outputs(model, load_model(path))


def test_lightning_checkpoint_of_older_runs_and_its_thing_flags(tmp_path: Path) -> None:
    model = tiny_model(num_classes=4).eval()
    ckpt = {
        "pytorch-lightning_version": "2.1.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model": model.config, "class_names": NAMES, "thing_ids": [1, 3]},
    }
    torch.save(ckpt, tmp_path / "old.ckpt")
    config, _, names, is_thing = read_weights_and_classes(tmp_path / "old.ckpt")
    assert config == model.config and names == NAMES
    assert is_thing == [False, True, False, True]
    assert same_outputs(model, load_model(tmp_path / "old.ckpt"))
    del ckpt["hyper_parameters"]["thing_ids"]
    torch.save(ckpt, tmp_path / "no_flags.ckpt")
    assert read_weights_and_classes(tmp_path / "no_flags.ckpt")[3] is None


def test_a_mismatch_names_the_file(tmp_path: Path) -> None:
    model = tiny_model(num_classes=4)
    path = save_model(model, tmp_path / "m.pt")
    stored = torch.load(path, weights_only=True)
    del stored["state_dict"]["transformer_decoder.decoder_norm.weight"]
    stored["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(stored, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and "decoder_norm.weight" in message and "extra.weight" in message
    assert "; unexpected keys (1)" in message


def test_a_torch_file_with_python_objects_is_refused(tmp_path: Path) -> None:
    torch.save({"format": "m2f_lightning", "payload": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(RefusedPickleError):
        load_model(tmp_path / "evil.pt")


def swin_pkl_weights(model) -> dict[str, np.ndarray]:
    return {to_d2_key(k): v.numpy() for k, v in model.state_dict().items()}


def test_model_zoo_swin_pkl_with_the_extra_entries_of_official_files(tmp_path: Path) -> None:
    """Official files also hold the loss's `criterion.empty_weight`, the Swin buffers
    `relative_position_index` / `attn_mask` (rebuilt by our model), and may hold the pixel
    statistics; all are skipped, wherever they come in the dict."""
    model = tiny_model(num_classes=4).eval()
    weights = {
        "criterion.empty_weight": np.ones(5, np.float32),  # first: skipping goes on
        "pixel_mean": np.zeros((3, 1, 1), np.float32),
        "pixel_std": np.ones((3, 1, 1), np.float32),
        "backbone.layers.0.blocks.0.attn.relative_position_index": np.zeros((49, 49), np.int64),
        "backbone.layers.0.blocks.0.attn_mask": np.zeros((4, 49, 49), np.float32),
        **swin_pkl_weights(model),
    }
    with (tmp_path / "m.pkl").open("wb") as f:
        pickle.dump({"model": weights, "__author__": "test"}, f)
    loaded = load_model(tmp_path / "m.pkl", **model.config)
    assert same_outputs(model, loaded)
    assert loaded.class_names is None and loaded.is_thing is None


def test_model_zoo_pkl_lists_its_unknown_keys(tmp_path: Path) -> None:
    model = tiny_model(num_classes=4)
    weights = {**swin_pkl_weights(model), "sem_seg_head.new_module.weight": np.zeros(2)}
    with (tmp_path / "m.pkl").open("wb") as f:
        pickle.dump({"model": weights}, f)
    with pytest.raises(KeyError, match=r"1 unknown key\(s\): \['sem_seg_head.new_module.weight'\]"):
        load_model(tmp_path / "m.pkl", **model.config)


def test_hf_directory_saved_as_pytorch_model_bin_keeps_its_names(tmp_path: Path) -> None:
    from tests.test_parity_hf import build_hf, max_abs_differences

    hf = build_hf(4, 6, 32, 7, 3)
    hf.config.id2label = dict(enumerate(NAMES))
    hf.save_pretrained(tmp_path)
    # the older hub layout: the same state dict as pytorch_model.bin, no safetensors file
    weights = tmp_path / "model.safetensors"
    torch.save(load_file(str(weights)), tmp_path / "pytorch_model.bin")
    weights.unlink()
    ours = load_model(tmp_path)
    assert ours.class_names == NAMES
    images = torch.rand(1, 3, 64, 96) * 255
    assert max(max_abs_differences(ours, hf, images)) <= 1e-4


def test_pkl_of_raw_weights_with_ddp_prefixes_reads(tmp_path: Path) -> None:
    """A `.pkl` that is the weights dict itself (no `"model"` entry, as detectron2 also
    accepts), saved from a DDP-wrapped model (`module.` prefixes)."""
    from m2f_lightning.modeling.d2_format import read_d2_pickle

    arrays = {"module.backbone.x": np.arange(3.0), "module.module_count": np.ones(2)}
    with (tmp_path / "raw.pkl").open("wb") as f:
        pickle.dump(arrays, f)
    read = read_d2_pickle(tmp_path / "raw.pkl")
    assert sorted(read) == ["backbone.x", "module_count"]
    assert torch.equal(read["backbone.x"], torch.arange(3.0, dtype=torch.float64))


def test_hf_directory_without_label_names_loads_unnamed(tmp_path: Path) -> None:
    import json

    from tests.test_parity_hf import build_hf

    build_hf(4, 6, 32, 7, 3).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("id2label", None)
    config.pop("label2id", None)
    config["num_labels"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path).class_names is None


def test_init_from_weights_missing_a_tensor_fails_naming_it(tmp_path: Path) -> None:
    from m2f_lightning.checkpoints import init_from_weights

    source = tiny_model(num_classes=4)
    path = save_model(source, tmp_path / "m.pt", class_names=NAMES)
    stored = torch.load(path, weights_only=True)
    del stored["state_dict"]["transformer_decoder.decoder_norm.bias"]  # not the class head
    torch.save(stored, path)
    with pytest.raises(CheckpointMismatchError, match="decoder_norm.bias"):
        init_from_weights(tiny_model(num_classes=4), path, NAMES)
