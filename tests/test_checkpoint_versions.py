"""Checkpoints this version cannot read faithfully (issue 23, part 3): a newer format of ours is
refused, one from a newer Lightning is warned about, both naming the versions; integer weights
(a quantised or damaged file) are refused instead of being cast to float and evaluated."""

import warnings
from pathlib import Path

import lightning
import pytest
import torch

from m2f_lightning.checkpoints import init_from_weights, load_model, save_model
from m2f_lightning.checkpoints.io import FORMAT_VERSION
from m2f_lightning.errors import CheckpointError
from tests.helpers import tiny_model


def _saved(tmp_path: Path, **changes: object) -> Path:
    path = save_model(tiny_model(num_classes=4), tmp_path / "m.pt", class_names=list("abcd"))
    stored = torch.load(path, weights_only=True)
    stored.update(changes)
    torch.save(stored, path)
    return path


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, "2.0"])
def test_a_newer_format_of_ours_is_refused_naming_both_versions(
    tmp_path: Path, version: object
) -> None:
    path = _saved(tmp_path, format_version=version)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert str(path) in text and f"format_version {version!r}" in text
    assert f"(format_version {FORMAT_VERSION})" in text and "upgrade" in text


def test_the_current_format_loads(tmp_path: Path) -> None:
    assert load_model(_saved(tmp_path, format_version=FORMAT_VERSION)).num_classes == 4


def _lightning_ckpt(tmp_path: Path, version: str) -> Path:
    model = tiny_model(num_classes=4)
    path = tmp_path / f"v{version}.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": version,
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"model_config": model.config},
        },
        path,
    )
    return path


def test_a_lightning_checkpoint_from_a_newer_lightning_is_warned_about(tmp_path: Path) -> None:
    path = _lightning_ckpt(tmp_path, "99.1.0")
    with pytest.warns(UserWarning, match=r"written by Lightning 99\.1\.0, newer") as record:
        load_model(path)
    assert f"installed {lightning.__version__}" in str(record[0].message)
    assert str(path) in str(record[0].message)


def test_a_lightning_checkpoint_of_this_or_an_older_lightning_loads_quietly(tmp_path: Path) -> None:
    for version in (lightning.__version__, "2.0.0"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_model(_lightning_ckpt(tmp_path, version))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_integer_weights_are_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    """They used to be cast to float silently and evaluated as a wrong model."""
    model = tiny_model(num_classes=4)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = _saved(tmp_path, state_dict=state)
    with pytest.raises(CheckpointError, match=rf"{path} are not floating point: .*\({dtype}\)"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not floating point"):
        init_from_weights(tiny_model(num_classes=4), path, list("abcd"))


def test_one_integer_tensor_is_enough_to_refuse(tmp_path: Path) -> None:
    model = tiny_model(num_classes=4)
    state = model.state_dict()
    key = "transformer_decoder.decoder_norm.weight"
    state[key] = state[key].round().to(torch.int32)
    with pytest.raises(CheckpointError, match=rf"1 tensor\(s\) .*{key} \(torch.int32\)"):
        load_model(_saved(tmp_path, state_dict=state))
