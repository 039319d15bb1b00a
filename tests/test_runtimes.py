"""`runtimes.build_runtime`: ONNX Runtime gives post-processing what eager gives (any input size,
padded batches), its exports are cached and reused, and every way it cannot be used falls back to
eager with a warning (or, without onnxruntime, stops with a clear error). The tests that export
(about 30 CPU seconds per tiny export) are marked slow."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m2f_lightning.checkpoints import save_model
from m2f_lightning.cli import export
from m2f_lightning.errors import ConfigError
from m2f_lightning.inference import InferenceSettings, predict_results
from m2f_lightning.modeling import Mask2Former
from m2f_lightning.predictor import runtimes
from m2f_lightning.predictor.runtimes import OnnxRuntime, RuntimeFallback, build_runtime
from tests.helpers import tiny_model

pytest.importorskip("onnxruntime")
# low thresholds so the random-init tiny model keeps several segments to compare
SETTINGS = InferenceSettings(object_mask_threshold=0.0, overlap_threshold=0.0)


def images(h: int, w: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def eager(model: Mask2Former, x: torch.Tensor, sizes=None) -> dict:
    """What runtime=eager gives (inference: no gradient, the output set's masks)."""
    with torch.no_grad():
        return model.eval().infer(x, sizes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Mask2Former, Path, OnnxRuntime]:
    """A tiny model saved as a checkpoint and run once through ONNX Runtime (one export)."""
    torch.manual_seed(0)
    model = tiny_model(num_classes=5).eval()
    checkpoint = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_model(model, checkpoint)
    runtime = build_runtime(model, "onnxruntime", checkpoint=checkpoint)
    with torch.no_grad():
        runtime(images(64, 96, seed=0))
    return model, checkpoint, runtime


@pytest.mark.slow
def test_onnxruntime_outputs_match_eager_at_any_size_and_in_padded_batches(exported) -> None:
    model, checkpoint, runtime = exported
    assert runtime.exported == [runtime.path] and runtime.path.parent == checkpoint.parent
    assert runtime.path.name.startswith("tiny.") and runtime.path.name.endswith(".64x96.onnx")
    assert not runtime.fallback
    # a size padded to the first one's (same file), a batch padded by the caller, another size
    for x, sizes in (
        (images(50, 70, seed=2), None),
        (images(64, 96, seed=3, batch=2), [(64, 96), (40, 60)]),
        (images(96, 64, seed=1), None),
    ):
        with torch.no_grad():
            got = runtime(x, sizes)
        want = eager(model, x, sizes)
        assert got["image_size"] == want["image_size"]
        assert got["padded_size"] == want["padded_size"]
        for key in ("pred_logits", "pred_masks"):
            np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=0, atol=1e-4)
        image_sizes = sizes or [tuple(x.shape[2:])] * len(x)
        args = (image_sizes, image_sizes, "panoptic", [2, 3, 4], SETTINGS)
        for a, b in zip(predict_results(got, *args), predict_results(want, *args), strict=True):
            assert len(b.segments) > 0
            assert torch.equal(a.panoptic_seg, b.panoptic_seg)
    assert list(runtime.sessions) == [(64, 96), (96, 64)] and len(runtime.exported) == 2
    for diff, agreement in runtime.parity.values():  # each file checked on its first batch
        assert diff <= runtimes.PARITY_LOGITS_ATOL and agreement >= runtimes.PARITY_MASK_AGREEMENT


@pytest.mark.slow
def test_a_second_runtime_reads_the_cached_export(exported, monkeypatch) -> None:
    model, checkpoint, first = exported

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(export, "export_model", no_export)
    again = build_runtime(model, "onnxruntime", checkpoint=checkpoint)
    x = images(64, 96, seed=4)
    with torch.no_grad():
        got = again(x)
    assert again.paths == [first.paths[0]] and not again.exported and not again.fallback
    np.testing.assert_allclose(
        got["pred_masks"].numpy(), eager(model, x)["pred_masks"].numpy(), rtol=0, atol=1e-4
    )
    # other weights (one value changed): another file
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1
    assert runtimes.onnx_cache_path(other, checkpoint, shape=(64, 96)) != first.paths[0]


def test_a_failed_export_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(export, "export_model", broken)
    model = tiny_model(num_classes=5).eval()
    runtime = build_runtime(model, "onnxruntime", checkpoint=tmp_path / "tiny.pt")
    x = images(64, 64, seed=5)
    with (
        pytest.warns(RuntimeFallback, match="export failed.*unsupported operator"),
        torch.no_grad(),
    ):
        got = runtime(x)
    assert runtime.fallback
    assert torch.equal(got["pred_masks"], eager(model, x)["pred_masks"])
    assert not list(tmp_path.iterdir())  # no partial file left in the cache


@pytest.mark.slow
def test_a_failed_parity_check_falls_back_to_eager(exported, monkeypatch) -> None:
    model, checkpoint, _ = exported
    monkeypatch.setattr(runtimes, "PARITY_MASK_AGREEMENT", 1.01)  # no export can pass
    runtime = build_runtime(model, "onnxruntime", checkpoint=checkpoint)
    x = images(64, 96, seed=6)  # the cached size
    with pytest.warns(RuntimeFallback, match="differs from eager"), torch.no_grad():
        got = runtime(x)
    assert runtime.fallback
    assert torch.equal(got["pred_masks"], eager(model, x)["pred_masks"])


def test_without_onnxruntime_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'm2f-lightning\[export\]'"):
        build_runtime(tiny_model(), "onnxruntime")


def test_an_unknown_runtime_is_named() -> None:
    with pytest.raises(ConfigError, match="tensorrt"):
        build_runtime(tiny_model(), "tensorrt")


def test_the_cache_goes_to_cache_dir_when_the_checkpoint_folder_is_not_writable(
    tmp_path, monkeypatch
) -> None:
    model = tiny_model()
    beside = runtimes.onnx_cache_path(model, tmp_path / "m.pt", tmp_path / "cache")
    assert beside.parent == tmp_path and beside.name.startswith("m.")
    monkeypatch.setattr(runtimes, "_writable", lambda folder: folder != tmp_path)
    path = runtimes.onnx_cache_path(model, tmp_path / "m.pt", tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and path.name.endswith(beside.name[2:])


def test_evaluate_and_predict_run_the_network_through_the_chosen_runtime(monkeypatch) -> None:
    from omegaconf import OmegaConf

    from m2f_lightning.cli.commands import use_runtime
    from m2f_lightning.lightning_module import Mask2FormerModule
    from m2f_lightning.types import Batch

    model = tiny_model(num_classes=5)
    module = Mask2FormerModule(
        model, task="panoptic", class_names=list("abcde"), thing_ids=[2, 3, 4], stuff_ids=[0, 1]
    )
    cfg = OmegaConf.create({"runtime": "onnxruntime", "checkpoint": "w/tiny.pt", "compile": False})
    use_runtime(cfg, module)
    assert isinstance(module.runtime, OnnxRuntime) and module.runtime.model is model
    assert "runtime" not in dict(module.named_children())  # no second copy of the weights
    calls = []

    def runtime(x, sizes=None):
        calls.append(tuple(x.shape))
        return model(x, sizes)

    module.runtime = runtime
    x = images(64, 64, seed=9)
    batch = Batch(x, [(64, 64)], [(64, 64)], ["a.png"], [1])
    with torch.no_grad():
        (result,) = module.eval().predict_batch(batch)
    assert calls == [(1, 3, 64, 64)] and result.file_name == "a.png"
    with pytest.raises(ConfigError, match="compile=true and runtime=onnxruntime"):
        use_runtime(OmegaConf.create({**cfg, "compile": True}), module)
