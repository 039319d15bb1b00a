"""Pretrained backbones: every published layout loads exactly and strictly, nothing downloads
in tests, an uncached tag offline fails with the way out, every recipe names the paper's weights."""

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from m2f_lightning.checkpoints import load_model, save_model
from m2f_lightning.cli.main import CONFIG_DIR
from m2f_lightning.modeling import TimmBackbone
from m2f_lightning.modeling.backbone import resolve_backbone_name
from m2f_lightning.modeling.backbone_weights import resolve_weights_argument, weights_from_config
from tests.helpers import TINY_SWIN, compose, tiny_model

# shared/reference/fidelity.md §1: the official weights as timm tags
PAPER_TAGS = {
    "r50": "resnet50.tv_in1k",
    "r101": "resnet101.tv_in1k",
    "swin_t": "swin_tiny_patch4_window7_224.ms_in1k",
    "swin_s": "swin_small_patch4_window7_224.ms_in1k",
    "swin_b": "swin_base_patch4_window12_384.ms_in1k",
    "swin_l": "swin_large_patch4_window12_384.ms_in22k",
}
SWIN_T = "swin_tiny_patch4_window7_224"
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def assert_loaded_exactly(backbone: TimmBackbone, source: dict[str, torch.Tensor]) -> None:
    body = backbone.body.state_dict()
    for key, value in body.items():
        if key.endswith("num_batches_tracked"):
            continue
        timm_key = re.sub(r"^layers_(\d+)\.", r"layers.\1.", key)
        assert torch.equal(value, source[timm_key]), key


@pytest.fixture(scope="module")
def resnet50() -> torch.nn.Module:
    model = timm.create_model("resnet50")
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that they are checked too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def tiny_swin() -> torch.nn.Module:
    return timm.create_model(SWIN_T, **TINY_SWIN)


def test_timm_resnet_pth_loads_exactly_into_frozen_batch_norm(resnet50, tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50.state_dict(), path)
    backbone = TimmBackbone("r50", weights=str(path))
    assert_loaded_exactly(backbone, resnet50.state_dict())
    assert type(backbone.body.bn1).__name__ == "FrozenBatchNorm2d"


def test_timm_swin_safetensors_loads_exactly_and_out_norms_start_fresh(
    tiny_swin, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "swin.safetensors"
    save_file(tiny_swin.state_dict(), str(path))
    backbone = TimmBackbone("swin_t", weights=path, **TINY_SWIN)
    assert_loaded_exactly(backbone, tiny_swin.state_dict())
    assert backbone.out_norms is not None  # new in Mask2Former: not in the file, fresh ones
    assert torch.equal(backbone.out_norms[0].weight, torch.ones(TINY_SWIN["embed_dim"]))


def _microsoft_swin_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout of github.com/microsoft/Swin-Transformer checkpoints: patch merging at the
    end of a stage (`layers.0.downsample`), `head.weight`, position-index and mask buffers."""
    out = {}
    for key, value in timm_state.items():
        m = re.match(r"^layers\.(\d+)\.downsample\.(.+)$", key)
        if m:
            key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        key = key.replace("head.fc.", "head.")
        out[key] = value
        if key.endswith("attn.relative_position_bias_table"):
            out[key.replace("bias_table", "index")] = torch.zeros(49, 49, dtype=torch.int64)
        if re.search(r"blocks\.\d*[13579]\.norm1\.weight$", key):  # shifted windows
            out[key.replace("norm1.weight", "attn_mask")] = torch.zeros(1, 49, 49)
    return out


def test_microsoft_swin_pth_loads_exactly(tiny_swin, tmp_path: Path) -> None:
    ms_state = _microsoft_swin_layout(tiny_swin.state_dict())
    assert "layers.0.downsample.reduction.weight" in ms_state and "head.weight" in ms_state
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": ms_state}, path)
    backbone = TimmBackbone("swin_t", weights=str(path), **TINY_SWIN)
    assert_loaded_exactly(backbone, tiny_swin.state_dict())
    # same features as timm's own model fed the same weights
    reference = timm.create_model(SWIN_T, features_only=True, **TINY_SWIN).eval()
    reference.load_state_dict(backbone.body.state_dict())
    image = torch.randn(1, 3, 224, 224)  # every stage a multiple of the window: no padding
    out = backbone.eval()(image)
    expected = reference(image)
    assert torch.allclose(out["res5"], backbone.out_norms[3](expected[3]).permute(0, 3, 1, 2))


def _detectron2_resnet_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """detectron2's ImageNet pickles (R-50.pkl: torchvision weights renamed): `stem.conv1`,
    `stem.conv1.norm`, `res{2..5}.N.conv{1..3}[.norm]`, `.shortcut[.norm]`, `stem.fc`."""
    out = {}
    for key, value in timm_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        new = key
        if not new.startswith("layer"):
            new = "stem." + new
        for stage in (1, 2, 3, 4):
            new = new.replace(f"layer{stage}.", f"res{stage + 1}.")
        for i in (1, 2, 3):
            new = new.replace(f"bn{i}.", f"conv{i}.norm.")
        new = new.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        out[new] = value.numpy()
    return out


def test_detectron2_resnet_pkl_loads_exactly(resnet50, tmp_path: Path) -> None:
    d2 = _detectron2_resnet_layout(resnet50.state_dict())
    frozen_bn_keys = {"stem.conv1.norm.weight", "stem.conv1.norm.running_var"}
    assert {"stem.conv1.weight", "res2.0.shortcut.norm.bias", *frozen_bn_keys} <= set(d2)
    path = tmp_path / "R-50.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": d2, "__author__": "torchvision", "matching_heuristics": True}, f)
    backbone = TimmBackbone("r50", weights=str(path))
    assert_loaded_exactly(backbone, resnet50.state_dict())


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": Payload()}}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        TimmBackbone("r50", weights=str(path))


def test_a_file_that_does_not_fit_fails_naming_the_tensors(resnet50, tiny_swin, tmp_path) -> None:
    state = dict(resnet50.state_dict())
    del state["layer4.2.conv3.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError) as err:
        TimmBackbone("r50", weights=str(path))
    assert "missing 1: ['layer4.2.conv3.weight']" in str(err.value)
    assert "unexpected 1: ['layer5.0.conv1.weight']" in str(err.value)

    path = tmp_path / "swin.pth"  # another width: every tensor has another shape
    torch.save(tiny_swin.state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r"other shape 73: .*layers.0.blocks.0.attn.proj.bias: \(32,\) in the weights, \(48,\)",
    ):
        TimmBackbone("swin_t", weights=str(path), **{**TINY_SWIN, "embed_dim": 48})

    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        TimmBackbone("r50", weights=str(tmp_path / "nothing.pth"))
    with pytest.raises(ValueError, match="are for 'resnet50', the backbone is 'resnet101'"):
        TimmBackbone("r101", weights="resnet50.tv_in1k")


def test_deprecated_pretrained_still_works_with_a_warning(tiny_swin, tmp_path: Path) -> None:
    path = tmp_path / "swin.pth"
    torch.save(tiny_swin.state_dict(), path)
    with pytest.warns(FutureWarning, match="backbone.weights"):
        model = tiny_model(backbone_pretrained=str(path))
    assert_loaded_exactly(model.backbone, tiny_swin.state_dict())
    assert model.config["backbone_weights"] is None and "backbone_pretrained" not in model.config
    for name, tag in PAPER_TAGS.items():
        with pytest.warns(FutureWarning):
            assert resolve_weights_argument(resolve_backbone_name(name), None, True) == tag
    assert resolve_weights_argument("resnet50", None, False) is None  # old configs: silent

    cfg = compose("train", ["backbone=r101", "backbone.pretrained=true"], tmp_path)
    with pytest.warns(FutureWarning):
        assert weights_from_config(cfg) == "resnet101.tv_in1k"


def test_an_uncached_tag_offline_names_the_tag_the_cache_and_the_local_file_option(
    tmp_path: Path,
) -> None:
    home = tmp_path / "hf_home"
    home.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    code = (
        "from m2f_lightning.modeling import TimmBackbone\n"
        "TimmBackbone('r50', weights='resnet50.tv_in1k')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "BackboneWeightsUnavailable" in last, done.stderr[-2000:]
    assert "'resnet50.tv_in1k'" in last and str(home / "hub") in last
    assert "backbone.weights=/path/to/file" in last
    assert list(home.rglob("*.safetensors")) == []


def test_models_rebuilt_from_a_checkpoint_never_fetch_backbone_weights(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE is set for the tests: any fetch of a tag would fail here."""
    model = tiny_model()
    path = save_model(model, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["backbone_weights"] = "swin_tiny_patch4_window7_224.ms_in1k"
    payload["model_config"]["backbone_pretrained"] = True  # as configs of older versions may say
    torch.save(payload, path)
    loaded = load_model(path, backbone_weights="swin_tiny_patch4_window7_224.ms_in1k")
    assert loaded.config["backbone_weights"] is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize("backbone", sorted(PAPER_TAGS))
def test_backbone_groups_name_the_paper_weights(backbone: str, tmp_path: Path) -> None:
    cfg = compose("train", [f"backbone={backbone}"], tmp_path)
    assert cfg.backbone.weights == PAPER_TAGS[backbone]
    assert weights_from_config(cfg) == PAPER_TAGS[backbone]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_its_paper_weights(experiment: str, tmp_path: Path) -> None:
    cfg = compose("train", [f"experiment={experiment}"], tmp_path)
    weights = weights_from_config(cfg)
    if experiment == "demo":  # a tiny Swin from scratch; nothing downloads
        assert weights is None
        return
    arch = resolve_backbone_name(cfg.backbone.name)
    assert weights in PAPER_TAGS.values() and weights.split(".")[0] == arch
    for overrides in (["debug=fast"], ["init_weights=/some/our_checkpoint.pt"]):
        cfg = compose("train", [f"experiment={experiment}", *overrides], tmp_path)
        assert weights_from_config(cfg) is None, overrides
    cfg = compose(
        "train", [f"experiment={experiment}", "backbone.weights=/data/R-50.pkl"], tmp_path
    )
    assert weights_from_config(cfg) == "/data/R-50.pkl"


def test_a_tag_is_fetched_from_its_hub_repository(tiny_swin, monkeypatch) -> None:
    """The download itself is timm's (no network in tests): the tag reaches the right repository
    and what comes back goes through the same strict load."""
    import timm.models

    asked = []

    def fake_download(model_id: str, **kwargs):
        asked.append(model_id)
        return dict(tiny_swin.state_dict())

    monkeypatch.setattr(timm.models, "load_state_dict_from_hf", fake_download)
    backbone = TimmBackbone("swin_t", weights="swin_tiny_patch4_window7_224.ms_in1k", **TINY_SWIN)
    assert asked == ["timm/swin_tiny_patch4_window7_224.ms_in1k"]
    assert_loaded_exactly(backbone, tiny_swin.state_dict())
    with pytest.raises(
        ValueError, match="unknown backbone weights 'resnet50.no_such_tag'.*tv_in1k"
    ):
        TimmBackbone("r50", weights="resnet50.no_such_tag")
