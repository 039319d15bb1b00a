"""Edges of reading weights files, written from the mutants that survived `make mutate
MODULE=checkpoints`: the values a trimmed HF config.json takes (transformers is the reference),
the reason a refused pickle gives, a foreign dict with a `state_dict`, and the latin-1 spellings
a model-zoo pickle may use."""

import pickle
import struct
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
import torch
from transformers import Mask2FormerConfig

from m2f_lightning.checkpoints import load_model
from m2f_lightning.checkpoints.hf import hf_config_to_ours
from m2f_lightning.checkpoints.reading import load_torch_file
from m2f_lightning.errors import CheckpointError, RefusedPickleError
from m2f_lightning.modeling.d2_format import read_d2_pickle

# every value differs from the transformers default, so a key left out is seen
FULL_TOP: dict[str, Any] = {
    "num_labels": 7,
    "num_queries": 20,
    "hidden_dim": 64,
    "mask_feature_size": 48,
    "feature_size": 32,
    "encoder_layers": 2,
    "encoder_feedforward_dim": 96,
    "decoder_layers": 4,
    "num_attention_heads": 4,
    "dim_feedforward": 128,
}
FULL_BACKBONE: dict[str, Any] = {
    "model_type": "swin",
    "embed_dim": 32,
    "depths": [1, 1, 2, 1],
    "num_heads": [1, 2, 4, 8],
    "window_size": 5,
    "mlp_ratio": 2.0,
    "drop_path_rate": 0.2,
}


def as_transformers_reads_it(config: dict[str, Any]) -> dict[str, Any]:
    """config.json after a round trip through `Mask2FormerConfig`: every missing key filled."""
    return Mask2FormerConfig(**config).to_dict()


@pytest.mark.parametrize("left_out", sorted(FULL_TOP.keys() - {"num_labels"}))
def test_a_top_level_key_left_out_takes_the_transformers_default(left_out: str) -> None:
    trimmed = {k: v for k, v in FULL_TOP.items() if k != left_out}
    trimmed["backbone_config"] = dict(FULL_BACKBONE)
    assert hf_config_to_ours(trimmed) == hf_config_to_ours(as_transformers_reads_it(trimmed))


@pytest.mark.parametrize("left_out", sorted(FULL_BACKBONE.keys() - {"model_type"}))
def test_a_backbone_key_left_out_takes_the_swin_config_default(left_out: str) -> None:
    backbone = {k: v for k, v in FULL_BACKBONE.items() if k != left_out}
    trimmed = {**FULL_TOP, "backbone_config": backbone}
    ours = hf_config_to_ours(trimmed)
    assert ours == hf_config_to_ours(as_transformers_reads_it(trimmed))
    assert (
        ours["backbone_kwargs"]
        != hf_config_to_ours({**trimmed, "backbone_config": FULL_BACKBONE})["backbone_kwargs"]
    )


def test_no_backbone_config_is_the_mask2former_default_backbone() -> None:
    """transformers' Mask2FormerConfig default: Swin depths [2, 2, 18, 2], drop path 0.3."""
    config = {"num_labels": 3}
    ours = hf_config_to_ours(config)
    assert ours == hf_config_to_ours(as_transformers_reads_it(config))
    assert ours["backbone_kwargs"]["depths"] == [2, 2, 18, 2]


def test_a_backbone_without_model_type_is_read_as_swin() -> None:
    backbone = {k: v for k, v in FULL_BACKBONE.items() if k != "model_type"}
    ours = hf_config_to_ours({**FULL_TOP, "backbone_config": backbone})
    assert ours["backbone_kwargs"]["embed_dim"] == 32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model_type": "resnet"},
            "only Swin backbones are supported for HF checkpoints, got resnet",
        ),
        ({"model_type": "SWIN"}, "got SWIN"),
        ({"patch_size": 2}, "only Swin with patch size 4 is supported, got 2"),
        ({"patch_size": 5}, "patch size 4"),
    ],
)
def test_other_backbones_are_refused_naming_what_they_are(change: dict, message: str) -> None:
    config = {**FULL_TOP, "backbone_config": {**FULL_BACKBONE, **change}}
    with pytest.raises(ValueError, match=message):
        hf_config_to_ours(config)


def test_patch_size_four_given_explicitly_is_accepted() -> None:
    config = {**FULL_TOP, "backbone_config": {**FULL_BACKBONE, "patch_size": 4}}
    assert hf_config_to_ours(config)["backbone_kwargs"]["window_size"] == 5


def test_a_refused_pickle_says_which_global_in_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"p": PurePosixPath("x")}, path)
    with pytest.raises(RefusedPickleError) as err:
        load_torch_file(path)
    message = str(err.value)
    # torch's line: "WeightsUnpickler error: Unsupported global: GLOBAL pathlib.PurePosixPath was
    # not an allowed global by default. Please use `torch.serialization.add_safe_globals(...`"
    reason = (
        "(Unsupported global: GLOBAL pathlib.PurePosixPath was not an allowed global by default)"
    )
    assert reason in message
    assert str(path) in message
    assert "weights_only=False" not in message and "add_safe_globals" not in message


def test_a_foreign_dict_with_a_state_dict_is_an_unknown_format(tmp_path: Path) -> None:
    """Only a Lightning checkpoint (with its version key) is read as one; another project's
    {"state_dict": ...} is named as an unknown format, not as a Lightning file lacking hparams."""
    path = tmp_path / "other_project.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)
    with pytest.raises(
        CheckpointError, match=r"unknown checkpoint format \(keys: \['epoch', 'state_dict'\]\)"
    ):
        load_model(path)


def numpy_pickle_with_encoding(encoding: str) -> bytes:
    """{"model": {"w": float32 array}} pickled by Python 3 with protocol 2, where the array's data
    is rebuilt by `_codecs.encode(text, "latin1")`; that encoding name swapped for `encoding`."""
    data = pickle.dumps({"model": {"w": np.array([1.5, -2.0], np.float32)}}, protocol=2)
    written = b"X\x06\x00\x00\x00latin1"  # BINUNICODE, 4-byte length
    assert data.count(written) == 1
    return data.replace(written, b"X" + struct.pack("<I", len(encoding)) + encoding.encode())


@pytest.mark.parametrize("encoding", ["latin1", "latin-1"])
def test_both_spellings_of_latin1_rebuild_the_arrays(tmp_path: Path, encoding: str) -> None:
    data = numpy_pickle_with_encoding(encoding)
    expected = np.array([1.5, -2.0], np.float32)  # 1.5 is 00 00 c0 3f: a byte >= 0x80
    assert np.array_equal(pickle.loads(data)["model"]["w"], expected)  # Python's own reading
    path = tmp_path / "m.pkl"
    path.write_bytes(data)
    assert torch.equal(read_d2_pickle(path)["w"], torch.from_numpy(expected))


@pytest.mark.parametrize("encoding", ["utf-8", "LATIN-1x"])
def test_other_encodings_in_codecs_encode_are_refused(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(numpy_pickle_with_encoding(encoding))
    with pytest.raises(pickle.UnpicklingError, match=f"encoding '{encoding}'"):
        read_d2_pickle(path)
