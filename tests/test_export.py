"""`m2f-export`: ONNX and torch.export programs of the network, checked against eager PyTorch
(logits to 1e-4, the panoptic result exactly), with post-processing in Python on their outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from m2f_lightning.checkpoints import save_model
from m2f_lightning.cli.export import (
    ParityError,
    check_parity,
    example_images,
    export,
    export_model,
    load_exported,
    outputs_for_postprocessing,
)
from m2f_lightning.inference import InferenceSettings, predict_results
from m2f_lightning.modeling import Mask2Former
from tests.helpers import compose, tiny_model

SIZE = (64, 96)  # the exported graph's fixed input size
CLASS_NAMES = ["sky", "ground", "circle", "square", "triangle"]
IS_THING = [False, False, True, True, True]
# low thresholds so the random-init tiny model keeps several segments to compare
SETTINGS = InferenceSettings(object_mask_threshold=0.0, overlap_threshold=0.0)


def eager_outputs(model: Mask2Former, images: torch.Tensor) -> dict:
    with torch.no_grad():
        return model.eval()(images)


def panoptic(outputs: dict) -> tuple:
    (result,) = predict_results(outputs, [SIZE], [(50, 80)], "panoptic", [2, 3, 4], SETTINGS)
    return result.panoptic_seg, result.segments


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Mask2Former]:
    torch.manual_seed(0)
    model = tiny_model(num_classes=5).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_model(model, path, class_names=CLASS_NAMES, is_thing=IS_THING)
    return path, model


@pytest.mark.slow
def test_m2f_export_onnx_matches_eager_logits_and_panoptic_result(checkpoint, tmp_path) -> None:
    path, model = checkpoint
    out = tmp_path / "tiny.onnx"
    args = [f"checkpoint={path}", "format=onnx", f"out={out}", f"image_size=[{SIZE[0]},{SIZE[1]}]"]
    info = export(compose("export", args, tmp_path))
    assert info["parity_max_abs_diff"] <= 1e-4
    sidecar = json.loads((tmp_path / "tiny.onnx.json").read_text())
    assert sidecar["class_names"] == CLASS_NAMES and sidecar["input"]["shape"] == [1, 3, *SIZE]
    import onnx

    assert onnx.load(str(out)).opset_import[0].version >= 17

    run = load_exported(out, "onnx")
    for seed in (5, 6):
        images = example_images(SIZE, seed)
        logits, masks = run(images.numpy())
        eager = eager_outputs(model, images)
        np.testing.assert_allclose(logits, eager["pred_logits"].numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(masks, eager["pred_masks"].numpy(), rtol=0, atol=1e-4)
        seg, segments = panoptic(outputs_for_postprocessing(logits, masks, SIZE))
        eager_seg, eager_segments = panoptic(eager)
        assert len(eager_segments) > 0
        assert torch.equal(seg, eager_seg)
        assert [(s.id, s.category_id, s.isthing) for s in segments] == [
            (s.id, s.category_id, s.isthing) for s in eager_segments
        ]


@pytest.mark.slow
def test_torch_export_program_matches_eager_and_a_different_model_fails_parity(
    checkpoint, tmp_path
) -> None:
    _, model = checkpoint
    out = export_model(model, tmp_path / "tiny.pt2", "torch_export", SIZE)
    # the export traced grid_sample; the model keeps its own backend ("auto": gather on CPU)
    assert {m.backend for m in model.modules() if hasattr(m, "sampling_offsets")} == {"auto"}
    assert check_parity(model, out, "torch_export", SIZE) <= 1e-4
    other = tiny_model(num_classes=5)
    with torch.no_grad():
        other.load_state_dict(model.state_dict())
        other.transformer_decoder.class_embed.bias.add_(0.01)
    with pytest.raises(ParityError, match=r"differ from eager PyTorch by up to 0.01"):
        check_parity(other, out, "torch_export", SIZE)


def test_bad_format_opset_and_size_are_refused(checkpoint, tmp_path) -> None:
    _, model = checkpoint
    with pytest.raises(ValueError, match="format must be one of onnx, torch_export"):
        export_model(model, tmp_path / "m.trt", "tensorrt", SIZE)
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_model(model, tmp_path / "m.onnx", "onnx", SIZE, opset=13)
    with pytest.raises(ValueError, match="image_size"):
        export_model(model, tmp_path / "m.onnx", "onnx", (16, 16))


def test_outputs_for_postprocessing_pads_the_size_to_32() -> None:
    out = outputs_for_postprocessing(np.zeros((1, 2, 3)), np.zeros((1, 2, 17, 20)), (65, 80))
    assert out["padded_size"] == (96, 96) and out["image_size"] == (65, 80)
    assert isinstance(out["pred_logits"], torch.Tensor)


@pytest.mark.slow
def test_real_size_r50_exports_to_onnx_with_parity(tmp_path) -> None:
    """The paper's R50 model (100 queries, 6 encoder and 9 decoder layers), random init."""
    torch.manual_seed(0)
    model = Mask2Former(num_classes=133, backbone="resnet50").eval()
    out = export_model(model, tmp_path / "r50.onnx", "onnx", (256, 256))
    assert check_parity(model, out, "onnx", (256, 256)) <= 1e-4
