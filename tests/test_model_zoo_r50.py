"""The README's `.pkl` example is the R50 model-zoo checkpoint (`model_final_94dc52.pkl`): a
detectron2 pickle (protocol 2, `{"model": {name: numpy array}, "__author__": ...}`) under the
original Mask2Former key names. Here a file of that layout is written from a model of ours whose
every tensor holds distinct values, with the names produced by a table written in this test
from the official names (docs: shared reference mask2former.md §8, detectron2's ResNet naming),
and each tensor must arrive at its place."""

import pickle
import re

import numpy as np
import pytest
import torch

from m2f_lightning.checkpoints import load_model
from tests.helpers import tiny_model

# the official names of Mask2Former R50 checkpoints (the patterns the reference lists)
OFFICIAL = [
    r"backbone\.stem\.conv1\.weight",
    r"backbone\.stem\.conv1\.norm\.(weight|bias|running_mean|running_var)",
    r"backbone\.res[2-5]\.\d+\.conv[123]\.weight",
    r"backbone\.res[2-5]\.\d+\.conv[123]\.norm\.(weight|bias|running_mean|running_var)",
    r"backbone\.res[2-5]\.0\.shortcut\.weight",
    r"backbone\.res[2-5]\.0\.shortcut\.norm\.(weight|bias|running_mean|running_var)",
    r"sem_seg_head\.pixel_decoder\.input_proj\.[012]\.[01]\.(weight|bias)",
    r"sem_seg_head\.pixel_decoder\.transformer\.level_embed",
    r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.\d+\.self_attn\."
    r"(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
    r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.\d+\."
    r"(norm1|norm2|linear1|linear2)\.(weight|bias)",
    r"sem_seg_head\.pixel_decoder\.mask_features\.(weight|bias)",
    r"sem_seg_head\.pixel_decoder\.adapter_1\.weight",
    r"sem_seg_head\.pixel_decoder\.adapter_1\.norm\.(weight|bias)",
    r"sem_seg_head\.pixel_decoder\.layer_1\.weight",
    r"sem_seg_head\.pixel_decoder\.layer_1\.norm\.(weight|bias)",
    r"sem_seg_head\.predictor\.transformer_self_attention_layers\.\d+\.self_attn\."
    r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
    r"sem_seg_head\.predictor\.transformer_self_attention_layers\.\d+\.norm\.(weight|bias)",
    r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.\d+\.multihead_attn\."
    r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
    r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.\d+\.norm\.(weight|bias)",
    r"sem_seg_head\.predictor\.transformer_ffn_layers\.\d+\.(linear1|linear2|norm)\.(weight|bias)",
    r"sem_seg_head\.predictor\.decoder_norm\.(weight|bias)",
    r"sem_seg_head\.predictor\.(query_feat|query_embed|level_embed)\.weight",
    r"sem_seg_head\.predictor\.class_embed\.(weight|bias)",
    r"sem_seg_head\.predictor\.mask_embed\.layers\.[012]\.(weight|bias)",
]

# our module prefix → the official one (longest first), and torchvision-style ResNet parts
PREFIXES = [
    ("pixel_decoder.lateral_convs.0.0.", "sem_seg_head.pixel_decoder.adapter_1."),
    ("pixel_decoder.lateral_convs.0.1.", "sem_seg_head.pixel_decoder.adapter_1.norm."),
    ("pixel_decoder.output_convs.0.0.", "sem_seg_head.pixel_decoder.layer_1."),
    ("pixel_decoder.output_convs.0.1.", "sem_seg_head.pixel_decoder.layer_1.norm."),
    ("pixel_decoder.encoder.", "sem_seg_head.pixel_decoder.transformer.encoder."),
    ("pixel_decoder.level_embed", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    ("pixel_decoder.", "sem_seg_head.pixel_decoder."),
    ("transformer_decoder.ffn_layers.", "sem_seg_head.predictor.transformer_ffn_layers."),
    ("transformer_decoder.", "sem_seg_head.predictor."),
    ("backbone.body.conv1.", "backbone.stem.conv1."),
    ("backbone.body.bn1.", "backbone.stem.conv1.norm."),
]
RESNET_PARTS = {
    "conv1": "conv1",
    "bn1": "conv1.norm",
    "conv2": "conv2",
    "bn2": "conv2.norm",
    "conv3": "conv3",
    "bn3": "conv3.norm",
    "downsample.0": "shortcut",
    "downsample.1": "shortcut.norm",
}


def official_name(ours: str) -> str:
    parts = ours.split(".")
    if ours.startswith("backbone.body.layer"):  # backbone.body.layer<N>.<block>.<part>.<leaf>
        stage, block = int(parts[2].removeprefix("layer")) + 1, parts[3]
        part = ".".join(parts[4:-1])
        return f"backbone.res{stage}.{block}.{RESNET_PARTS[part]}.{parts[-1]}"
    for attn, theirs in (
        ("self_attn_layers", "self_attention"),
        ("cross_attn_layers", "cross_attention"),
    ):
        if ours.startswith(f"transformer_decoder.{attn}."):
            index, rest = parts[2], ".".join(parts[3:])
            inner = "self_attn" if attn == "self_attn_layers" else "multihead_attn"
            rest = rest.replace("attn.", inner + ".", 1) if rest.startswith("attn.") else rest
            return f"sem_seg_head.predictor.transformer_{theirs}_layers.{index}.{rest}"
    for prefix, theirs in PREFIXES:
        if ours.startswith(prefix):
            return theirs + ours.removeprefix(prefix)
    raise AssertionError(f"no official name for {ours}")


def distinct_state(model) -> dict[str, torch.Tensor]:
    """Every tensor filled with values no other tensor holds (a swapped pair shows)."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for i, (name, value) in enumerate(model.state_dict().items()):
        fresh = torch.rand(value.shape, generator=generator, dtype=torch.float64) + 2 * i + 1
        state[name] = fresh.to(value.dtype)  # positive: a valid running_var too
    return state


def test_r50_model_zoo_pkl_puts_every_tensor_in_its_place(tmp_path) -> None:
    model = tiny_model(num_classes=4, backbone="r50")
    state = distinct_state(model)
    official = {official_name(k): v.numpy() for k, v in state.items()}
    assert len(official) == len(state), "two tensors under one official name"
    unmatched = [k for k in official if not any(re.fullmatch(p, k) for p in OFFICIAL)]
    assert not unmatched, f"not an official name: {unmatched[:5]}"
    assert "backbone.res5.2.conv3.norm.running_var" in official  # the full R50: res5 has 3 blocks
    assert not any("num_batches_tracked" in k for k in official)  # FrozenBN, as in the files
    official["criterion.empty_weight"] = np.ones(5, dtype=np.float32)  # ignored on load
    path = tmp_path / "model_final_94dc52.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": official, "__author__": "test"}, f, protocol=2)
    loaded = load_model(path, **{k: v for k, v in model.config.items()})
    got = loaded.state_dict()
    assert got.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(got[name], value), f"{name} did not get {official_name(name)}"


def test_r50_pkl_without_the_architecture_names_num_classes(tmp_path) -> None:
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": {}}, f, protocol=2)
    with pytest.raises(ValueError, match="num_classes"):
        load_model(path)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pkl_of_any_pickle_protocol_reads_the_same_arrays(tmp_path, protocol: int) -> None:
    """Python 3 writes the bytes of an array under protocol <= 2 through `_codecs.encode`
    (latin-1), which the restricted unpickler must accept (and only for latin-1)."""
    from m2f_lightning.modeling.d2_format import read_d2_pickle

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([255, 0], np.uint8)}
    path = tmp_path / "m.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": arrays, "__author__": "test"}, f, protocol=protocol)
    read = read_d2_pickle(path)
    assert read.keys() == arrays.keys()
    for key, value in arrays.items():
        assert np.array_equal(read[key].numpy(), value) and read[key].numpy().dtype == value.dtype


class _Rot13:
    def __reduce__(self):
        import codecs

        return (codecs.encode, ("text", "rot13"))


def test_pkl_codecs_encode_is_refused_for_other_encodings(tmp_path) -> None:
    from m2f_lightning.modeling.d2_format import read_d2_pickle

    with (tmp_path / "m.pkl").open("wb") as f:
        pickle.dump({"model": {"x": _Rot13()}}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        read_d2_pickle(tmp_path / "m.pkl")
