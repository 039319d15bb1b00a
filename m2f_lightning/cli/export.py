"""Export a trained model to ONNX or a `torch.export` program, with a parity gate.

The exported graph is the network only: it takes `images` float32 `[1, 3, H, W]`, RGB 0..255, at
the fixed (H, W) chosen at export (normalisation and padding to /32 are inside, as in eager), and
returns the last layer's `pred_logits [1, Q, K+1]` and `pred_masks [1, Q, Hp/4, Wp/4]`.
Post-processing stays in Python: `outputs_for_postprocessing` turns the two arrays into the
`ModelOutput`-like dict that `inference.predict_results` reads.

The deformable attention exports through its grid_sample path (`backend="torch"`); the ONNX
opset is 18 by default (17 at least: grid_sample needs 16, LayerNormalization 17). After writing
the file, `check_parity` runs it (onnxruntime on CPU, or the loaded program) on a random image
and fails naming the largest difference from eager PyTorch when it exceeds the tolerance.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..modeling import Mask2Former
from ..modeling.ms_deform_attn import MSDeformAttn, set_ms_deform_attn_backend

FORMATS = ("onnx", "torch_export")
SUFFIXES = {"onnx": ".onnx", "torch_export": ".pt2"}
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["pred_logits", "pred_masks"]
MIN_OPSET = 17


class ParityError(RuntimeError):
    """The exported model's outputs differ from eager PyTorch by more than the tolerance."""


class LogitsOnly(nn.Module):
    """The network as exported: images → (class logits, mask logits) of the last layer."""

    def __init__(self, model: Mask2Former) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model.infer(images)
        return outputs["pred_logits"], outputs["pred_masks"]


def _check(fmt: str, image_size: tuple[int, int], opset: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if len(image_size) != 2 or min(image_size) < 32:
        raise ValueError(f"image_size must be [H, W], each at least 32; got {list(image_size)}")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (LayerNormalization); got {opset}")


def prepared(model: Mask2Former) -> LogitsOnly:
    """The CPU fp32 eval-mode wrapper that is exported (deformable attention on grid_sample)."""
    model = model.float().cpu().eval()
    set_ms_deform_attn_backend(model, "torch")
    return LogitsOnly(model).eval()


def example_images(image_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, *image_size, generator=g) * 255


def export_model(
    model: Mask2Former,
    out: str | Path,
    fmt: str = "onnx",
    image_size: tuple[int, int] = (512, 512),
    opset: int = 18,
) -> Path:
    """Write `model` to `out` as ONNX (`fmt="onnx"`) or a `torch.export` program (`.pt2`)."""
    image_size = (int(image_size[0]), int(image_size[1]))
    _check(fmt, image_size, opset)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    backends = {m: m.backend for m in model.modules() if isinstance(m, MSDeformAttn)}
    wrapper = prepared(model)
    example = (example_images(image_size),)
    try:
        with torch.no_grad():
            program = torch.export.export(wrapper, example)
    finally:  # the model goes on with its own backend (inference on CPU: "gather")
        for module, backend in backends.items():
            module.backend = backend
    if fmt == "torch_export":
        torch.export.save(program, out)
        return out
    onnx_program = torch.onnx.export(
        program,
        example,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(str(out))
    return out


def load_exported(path: str | Path, fmt: str):
    """A callable: float32 images `[1, 3, H, W]` (numpy or torch) → (logits, masks) as numpy."""
    path = Path(path)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run_onnx(images: Any) -> tuple[np.ndarray, np.ndarray]:
            images = np.asarray(images, dtype=np.float32)
            logits, masks = session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: images})
            return logits, masks

        return run_onnx
    if fmt == "torch_export":
        program = torch.export.load(str(path)).module()

        def run_program(images: Any) -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                logits, masks = program(torch.as_tensor(np.asarray(images, dtype=np.float32)))
            return logits.numpy(), masks.numpy()

        return run_program
    raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def outputs_for_postprocessing(
    pred_logits: Any, pred_masks: Any, image_size: tuple[int, int], size_divisibility: int = 32
) -> dict[str, Any]:
    """The `ModelOutput`-like dict `inference.predict_results` reads, from an exported model's
    two outputs for an input of `image_size` (H, W)."""
    h, w = int(image_size[0]), int(image_size[1])
    div = size_divisibility
    return {
        "pred_logits": torch.as_tensor(np.asarray(pred_logits)),
        "pred_masks": torch.as_tensor(np.asarray(pred_masks)),
        "image_size": (h, w),
        "padded_size": (-(-h // div) * div, -(-w // div) * div),
    }


def check_parity(
    model: Mask2Former,
    path: str | Path,
    fmt: str,
    image_size: tuple[int, int],
    tolerance: float = 1e-4,
    seed: int = 1,
) -> float:
    """Largest absolute difference between the exported and the eager logits on a random image;
    raises `ParityError` naming it when it exceeds `tolerance`."""
    images = example_images(image_size, seed)
    with torch.no_grad():
        eager = prepared(model)(images)
    exported = load_exported(path, fmt)(images.numpy())
    diffs = {
        name: float(np.abs(np.asarray(e) - x.numpy()).max())
        for name, e, x in zip(OUTPUT_NAMES, exported, eager, strict=True)
    }
    worst = max(diffs.values())
    if not worst <= tolerance:  # NaN fails too
        detail = ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
        raise ParityError(
            f"{path}: exported outputs differ from eager PyTorch by up to {worst:.3g} "
            f"(tolerance {tolerance:g}; {detail})"
        )
    return worst


def default_output(checkpoint: str, fmt: str) -> Path:
    """Beside the checkpoint file, with the format's suffix; for a hub id (`owner/name`), the
    model's name in the working directory."""
    from ..checkpoints.hub import parse_hub_id

    hub = parse_hub_id(checkpoint)
    if hub is not None:
        return Path(hub[0].split("/")[-1] + SUFFIXES[fmt])
    return Path(checkpoint).with_suffix(SUFFIXES[fmt])


def export(cfg) -> dict[str, Any]:
    """`m2f-export checkpoint=... format=onnx|torch_export out=FILE image_size=[H,W]`: export,
    check parity, and write `<out>.json` with the class names, thing flags and input size."""
    from ..checkpoints import load_model
    from .builders import validate_config

    validate_config(cfg, "export")  # format, image_size, opset among the rest
    fmt = str(cfg.format)
    image_size = tuple(int(s) for s in cfg.image_size)
    out = Path(cfg.out) if cfg.get("out") else default_output(str(cfg.checkpoint), fmt)
    model = load_model(cfg.checkpoint)
    print(
        f"exporting {cfg.checkpoint} to {out} ({fmt}, input [1, 3, {image_size[0]}, "
        f"{image_size[1]}])",
        flush=True,
    )
    export_model(model, out, fmt, image_size, int(cfg.opset))
    diff = check_parity(model, out, fmt, image_size, float(cfg.parity_tolerance))
    info = {
        "format": fmt,
        "file": out.name,
        "opset": int(cfg.opset) if fmt == "onnx" else None,
        "input": {
            "name": INPUT_NAMES[0],
            "shape": [1, 3, *image_size],
            "dtype": "float32",
            "range": "RGB 0..255",
        },
        "outputs": OUTPUT_NAMES,
        "num_classes": model.num_classes,
        "class_names": getattr(model, "class_names", None),
        "is_thing": getattr(model, "is_thing", None),
        "checkpoint": str(cfg.checkpoint),
        "parity_max_abs_diff": diff,
    }
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps(info, indent=2))
    print(
        f"parity with eager PyTorch: max |difference| {diff:.3g} <= {cfg.parity_tolerance}",
        flush=True,
    )
    print(f"wrote {out} and {sidecar}", flush=True)
    return {**info, "path": str(out), "sidecar": str(sidecar)}
