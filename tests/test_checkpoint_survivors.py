"""Written from the surviving mutants of `make mutate MODULE=checkpoints`: detectron2 `.pkl`
files written by Python 2 (byte strings with non-ASCII bytes, read as latin-1), every legacy
spelling of the Hugging Face backbone keys that `modernise_key` rewrites, and the report of
`init_from_weights` for a named model with an unnamed file (and the reverse), a file without a
class head and a file with one class more.

Equivalent survivors, not killable: `encoding="LATIN1"` (codec names are case-insensitive);
weakening `modernise_key`'s guard (`and` -> `or`, "swin." / "hidden_states_norms." changed),
since its regex is anchored on the same prefix and implies the guard; and
`dict.fromkeys(range(num_new + 2))` in `init_from_weights`, whose rows are only read below
`num_new`."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from m2f_lightning.checkpoints import init_from_weights, save_model
from m2f_lightning.checkpoints.hf_keys import modernise_key
from m2f_lightning.checkpoints.io import CLASS_HEAD
from m2f_lightning.modeling.d2_format import read_d2_pickle
from tests.helpers import tiny_model

# --- detectron2 .pkl written by Python 2 -------------------------------------------------------


def _py2_str(raw: bytes) -> bytes:
    """A Python 2 `str` (bytes, no encoding) as pickle protocol 2 writes it."""
    if len(raw) < 256:
        return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(raw)) + raw  # BINSTRING


def _py2_array(values: object, dtype: str) -> bytes:
    """A numpy array as numpy under Python 2 pickles it: `_reconstruct(ndarray, (0,), 'b')`,
    then BUILD with `(1, shape, dtype, is_fortran, raw data as a py2 str)`."""
    a = np.asarray(values, dtype="<" + dtype)
    shape = b"(" + b"".join(b"K" + bytes([d]) for d in a.shape) + b"t"
    dtype_state = (
        b"(K\x03" + _py2_str(b"<") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + b"K\x00tb"
    )  # (3, '<', None, None, None, -1, -1, 0)
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + b"K\x00\x85"  # (0,)
        + _py2_str(b"b")
        + b"\x87R"  # TUPLE3, REDUCE
        + b"(K\x01"
        + shape
        + b"cnumpy\ndtype\n"
        + _py2_str(dtype.encode())
        + b"K\x00K\x01\x87R"
        + dtype_state
        + b"\x89"  # NEWFALSE: not Fortran order
        + _py2_str(a.tobytes())
        + b"tb"
    )


def test_python2_pkl_with_non_ascii_byte_strings_loads_as_latin1(tmp_path: Path) -> None:
    """detectron2's model-zoo files come from Python 2: their keys and array data are py2 `str`.
    Bytes >= 0x80 (here in a key, in the author and in the float data: 1.5 is 00 00 c0 3f) only
    load when the unpickler decodes those strings as latin-1, as numpy documents."""
    weight = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=np.float32)
    assert any(b >= 0x80 for b in weight.tobytes())
    data = (
        b"\x80\x02}("  # PROTO 2, EMPTY_DICT, MARK
        + _py2_str(b"model")
        + b"}("
        + _py2_str(b"module.caf\xe9.weight")
        + _py2_array(weight, "f4")
        + _py2_str(b"steps")
        + _py2_array([7, -1], "i8")
        + b"u"  # SETITEMS
        + _py2_str(b"__author__")
        + _py2_str(b"Ren\xe9")
        + b"u."
    )
    path = tmp_path / "model_final_py2.pkl"
    path.write_bytes(data)
    read = read_d2_pickle(path)
    assert list(read) == ["caf\u00e9.weight", "steps"]
    assert read["caf\u00e9.weight"].dtype == torch.float32
    assert torch.equal(read["caf\u00e9.weight"], torch.tensor([[1.5, -2.0], [0.25, 3.0]]))
    assert read["steps"].dtype == torch.int64
    assert torch.equal(read["steps"], torch.tensor([7, -1]))


def test_python2_pkl_with_non_ascii_array_data_only_loads(tmp_path: Path) -> None:
    """ASCII names, but array bytes >= 0x80: still a latin-1 matter."""
    data = (
        b"\x80\x02}("
        + _py2_str(b"model")
        + b"}("
        + _py2_str(b"w")
        + _py2_array([-2.0, 1.5], "f4")
        + b"uu."
    )
    path = tmp_path / "m.pkl"
    path.write_bytes(data)
    read = read_d2_pickle(path)
    assert list(read) == ["w"] and torch.equal(read["w"], torch.tensor([-2.0, 1.5]))


# --- legacy Hugging Face backbone keys ---------------------------------------------------------

B = "model.pixel_level_module.encoder."

# legacy hub spelling -> transformers v5 spelling (the Swin backbone under `swin.`, the attention
# projections q_proj/k_proj/v_proj/o_proj, the relative position table under
# `relative_position_bias`, the MLP as mlp.fc1/mlp.fc2)
LEGACY = [
    (
        B + "embeddings.patch_embeddings.projection.weight",
        B + "swin.embeddings.patch_embeddings.projection.weight",
    ),
    (B + "embeddings.norm.bias", B + "swin.embeddings.norm.bias"),
    (
        B + "encoder.layers.0.blocks.1.layernorm_before.weight",
        B + "swin.encoder.layers.0.blocks.1.layernorm_before.weight",
    ),
    (
        B + "encoder.layers.3.blocks.0.layernorm_after.bias",
        B + "swin.encoder.layers.3.blocks.0.layernorm_after.bias",
    ),
    (
        B + "encoder.layers.2.blocks.4.attention.self.query.weight",
        B + "swin.encoder.layers.2.blocks.4.attention.q_proj.weight",
    ),
    (
        B + "encoder.layers.2.blocks.4.attention.self.key.bias",
        B + "swin.encoder.layers.2.blocks.4.attention.k_proj.bias",
    ),
    (
        B + "encoder.layers.2.blocks.4.attention.self.value.weight",
        B + "swin.encoder.layers.2.blocks.4.attention.v_proj.weight",
    ),
    (
        B + "encoder.layers.1.blocks.0.attention.output.dense.weight",
        B + "swin.encoder.layers.1.blocks.0.attention.o_proj.weight",
    ),
    (
        B + "encoder.layers.1.blocks.0.attention.self.relative_position_bias_table",
        B
        + "swin.encoder.layers.1.blocks.0.attention.relative_position_bias."
        + "relative_position_bias_table",
    ),
    (
        B + "encoder.layers.1.blocks.1.intermediate.dense.weight",
        B + "swin.encoder.layers.1.blocks.1.mlp.fc1.weight",
    ),
    (
        B + "encoder.layers.1.blocks.1.output.dense.bias",
        B + "swin.encoder.layers.1.blocks.1.mlp.fc2.bias",
    ),
    (
        B + "encoder.layers.0.downsample.reduction.weight",
        B + "swin.encoder.layers.0.downsample.reduction.weight",
    ),
    (B + "layernorm.weight", B + "swin.layernorm.weight"),
]

# keys already in the v5 spelling, or outside the Swin backbone: no rule applies
UNCHANGED = [
    B + "swin.embeddings.norm.weight",
    B + "swin.encoder.layers.0.blocks.0.attention.q_proj.weight",
    B + "swin.encoder.layers.0.blocks.0.attention.o_proj.bias",
    B
    + "swin.encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table",
    B + "swin.encoder.layers.0.blocks.0.mlp.fc2.weight",
    B + "swin.layernorm.bias",
    B + "hidden_states_norms.stage1.weight",
    "model.pixel_level_module.decoder.encoder.layers.0.fc1.weight",
    "model.pixel_level_module.decoder.encoder.layers.0.self_attn.value_proj.weight",
    "model.transformer_module.decoder.layers.0.self_attn.q_proj.weight",
    "model.transformer_module.decoder.layers.2.fc2.bias",
    "class_predictor.weight",
    "criterion.empty_weight",
]


@pytest.mark.parametrize(("legacy", "modern"), LEGACY)
def test_every_legacy_backbone_spelling_is_modernised(legacy: str, modern: str) -> None:
    assert modernise_key(legacy) == modern
    assert modernise_key(modern) == modern  # idempotent


@pytest.mark.parametrize("key", UNCHANGED)
def test_keys_no_rule_matches_come_back_unchanged(key: str) -> None:
    assert modernise_key(key) == key


# --- init_from_weights: names on one side only, no class head, one class more -----------------

NAMES = ["sky", "ground", "circle"]


def _head(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k in CLASS_HEAD}


def _assert_rest_copied(model: torch.nn.Module, source: torch.nn.Module) -> None:
    got, want = model.state_dict(), source.state_dict()
    for key, value in got.items():
        if key not in CLASS_HEAD:
            assert torch.equal(value, want[key]), key


def test_named_model_from_an_unnamed_file_of_the_same_size_copies_the_head_whole(
    tmp_path: Path,
) -> None:
    """Names on the model side only: nothing to match by name, so a head of the same size is
    copied whole and every class reports as matched."""
    source = tiny_model(num_classes=3)
    path = save_model(source, tmp_path / "unnamed.pt")
    torch.manual_seed(5)
    model = tiny_model(num_classes=3)
    report = init_from_weights(model, path, NAMES)
    assert report == {"matched": NAMES, "fresh": []}
    for key, value in _head(model).items():
        assert torch.equal(value, source.state_dict()[key])
    _assert_rest_copied(model, source)


def test_unnamed_model_from_a_named_file_of_the_same_size_copies_the_head_whole(
    tmp_path: Path,
) -> None:
    """Names in the file only: the head is copied whole, not matched against "0", "1", "2"."""
    source = tiny_model(num_classes=3)
    path = save_model(source, tmp_path / "named.pt", class_names=NAMES)
    torch.manual_seed(5)
    model = tiny_model(num_classes=3)
    report = init_from_weights(model, path)
    assert report == {"matched": ["0", "1", "2"], "fresh": []}
    for key, value in _head(model).items():
        assert torch.equal(value, source.state_dict()[key])


@pytest.mark.parametrize("names", [None, NAMES])
def test_file_without_a_class_head_reports_every_class_fresh(
    tmp_path: Path, names: list[str] | None
) -> None:
    source = tiny_model(num_classes=3)
    path = save_model(source, tmp_path / "headless.pt", class_names=names)
    payload = torch.load(path, weights_only=True)
    for key in CLASS_HEAD:
        del payload["state_dict"][key]
    torch.save(payload, path)
    torch.manual_seed(5)
    model = tiny_model(num_classes=3)
    fresh = _head(model)
    report = init_from_weights(model, path, names)
    assert report == {"matched": [], "fresh": names or ["0", "1", "2"]}
    for key, value in _head(model).items():
        assert torch.equal(value, fresh[key])
    _assert_rest_copied(model, source)


def test_unnamed_file_with_one_class_more_keeps_the_whole_head_fresh(tmp_path: Path) -> None:
    source = tiny_model(num_classes=4)
    path = save_model(source, tmp_path / "plus_one.pt")
    torch.manual_seed(5)
    model = tiny_model(num_classes=3)
    fresh = _head(model)
    report = init_from_weights(model, path, NAMES)
    assert report == {"matched": [], "fresh": NAMES}
    for key, value in _head(model).items():
        assert torch.equal(value, fresh[key])
    _assert_rest_copied(model, source)


def test_named_file_with_one_class_more_maps_rows_by_name(tmp_path: Path) -> None:
    """File classes [square, circle, sky, ground] (+ no-object at row 4) into [sky, ground,
    circle]: rows 2, 3, 1 then the file's no-object row 4; nothing fresh."""
    source = tiny_model(num_classes=4)
    path = save_model(
        source, tmp_path / "plus_one.pt", class_names=["square", "circle", "Sky", "ground"]
    )
    torch.manual_seed(5)
    model = tiny_model(num_classes=3)
    report = init_from_weights(model, path, NAMES)
    assert report == {"matched": NAMES, "fresh": []}
    old = source.state_dict()
    for key, value in _head(model).items():
        assert value.shape[0] == 4
        for new_row, old_row in enumerate([2, 3, 1, 4]):
            assert torch.equal(value[new_row], old[key][old_row]), (key, new_row)
    _assert_rest_copied(model, source)
