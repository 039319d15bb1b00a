"""Deformable attention backends: choice of backend, and the Triton kernels against the torch path
in Triton's CPU interpreter (run in a subprocess: TRITON_INTERPRET must be set before triton is
first imported, see tests/triton_interpret_check.py)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m2f_lightning.modeling import MSDeformAttnPixelDecoder, set_ms_deform_attn_backend
from m2f_lightning.modeling.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn_core,
    resolve_backend,
)

ROOT = Path(__file__).resolve().parent.parent
HAS_TRITON = importlib.util.find_spec("triton") is not None
ODD_SHAPES = [[5, 7], [3, 3], [2, 1]]


def _inputs(batch=2, heads=2, head_dim=8, points=2, queries=5, shapes=ODD_SHAPES):
    length = sum(h * w for h, w in shapes)
    value = torch.randn(batch, length, heads, head_dim)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2)
    weights = torch.rand(batch, queries, heads, len(shapes), points)
    return value, [tuple(s) for s in shapes], locations, weights


def test_auto_backend_on_cpu_is_torch_for_training_and_gather_for_inference():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", "cpu", needs_grad=False) == "gather"
    assert resolve_backend("torch", "cuda") == "torch"
    assert resolve_backend("torch", "cpu", needs_grad=False) == "torch"
    value, shapes, locations, weights = _inputs()
    value.requires_grad_(True)
    auto = ms_deform_attn_core(value, shapes, locations, weights)
    torch_out = ms_deform_attn_core(value, shapes, locations, weights, backend="torch")
    assert torch.equal(auto, torch_out)
    with torch.no_grad():  # no gradient needed: the gather path, bit for bit
        auto = ms_deform_attn_core(value, shapes, locations, weights)
        gather = ms_deform_attn_core(value, shapes, locations, weights, backend="gather")
    assert torch.equal(auto, gather)
    value.requires_grad_(False)  # nothing requires grad: gather even with grad mode on
    assert torch.equal(ms_deform_attn_core(value, shapes, locations, weights), gather)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_auto_backend_is_triton_on_cuda():
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "triton"


def test_unknown_backend_names_the_choices():
    value, shapes, locations, weights = _inputs()
    with pytest.raises(ValueError, match="'cuda'.*auto, torch, gather, triton"):
        ms_deform_attn_core(value, shapes, locations, weights, backend="cuda")
    with pytest.raises(ValueError, match="auto, torch, gather, triton"):
        MSDeformAttn(32, 3, 4, 2, backend="Triton")


def test_module_backend_keeps_state_dict_and_output():
    torch_attn = MSDeformAttn(32, 3, 4, 2, backend="torch")
    auto_attn = MSDeformAttn(32, 3, 4, 2)
    assert auto_attn.backend == "auto"
    assert torch_attn.state_dict().keys() == auto_attn.state_dict().keys()
    auto_attn.load_state_dict(torch_attn.state_dict())
    shapes = [(5, 7), (3, 3), (2, 1)]
    length = sum(h * w for h, w in shapes)
    query, value = torch.randn(2, length, 32), torch.randn(2, length, 32)
    ref = torch.rand(2, length, 3, 2)
    assert torch.equal(torch_attn(query, ref, value, shapes), auto_attn(query, ref, value, shapes))


def test_pixel_decoder_passes_the_backend_and_models_can_switch_it():
    decoder = MSDeformAttnPixelDecoder(
        [8, 16, 32, 64], 32, 32, 2, 64, 4, 2, 8, attn_backend="torch"
    )
    attns = [m for m in decoder.modules() if isinstance(m, MSDeformAttn)]
    assert len(attns) == 2 and all(m.backend == "torch" for m in attns)
    assert set_ms_deform_attn_backend(decoder, "triton") == 2
    assert all(m.backend == "triton" for m in attns)
    with pytest.raises(ValueError, match="auto, torch, gather, triton"):
        set_ms_deform_attn_backend(decoder, "cuda")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_backend_on_cpu_without_interpreter_says_so():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on in this process")
    value, shapes, locations, weights = _inputs()
    with pytest.raises(RuntimeError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        ms_deform_attn_core(value, shapes, locations, weights, backend="triton")


def test_package_imports_and_runs_without_triton():
    """Triton is optional: hide it (a None entry in sys.modules makes `import triton` fail)."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "import m2f_lightning.modeling as m\n"
        "from m2f_lightning.modeling.ms_deform_attn import resolve_backend, triton_available\n"
        "assert not triton_available()\n"
        "assert resolve_backend('auto', 'cuda') == 'torch'\n"
        "attn = m.MSDeformAttn(32, 1, 4, 2)\n"
        "x = torch.randn(1, 12, 32)\n"
        "print(tuple(attn(x, torch.rand(1, 12, 1, 2), x, [(3, 4)]).shape))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 12, 32)"


FP32 = {"atol": 1e-5, "rtol": 1e-5}
# bf16 keeps 8 significant bits: allow two units in the last place of the result
BF16 = {"dtype": "bfloat16", "atol": 2e-2, "rtol": 2 / 128}
CASES = {
    "fp32-d8-p1": {"shapes": ODD_SHAPES, "batch": 2, "heads": 2, "head_dim": 8, "points": 1,
                   "queries": 13, **FP32},
    "fp32-d12-p3": {"shapes": ODD_SHAPES, "batch": 2, "heads": 2, "head_dim": 12, "points": 3,
                    "queries": 11, **FP32},
    # one level, more queries than one program takes: masked tail block; head_dim 5
    "fp32-multiblock": {"shapes": [[9, 11]], "batch": 1, "heads": 1, "head_dim": 5, "points": 2,
                        "queries": 300, **FP32},
    # locations up to a thousand map sizes away: zeros and zero gradients, no index overflow
    "fp32-far": {"shapes": [[4, 6], [2, 3]], "batch": 1, "heads": 2, "head_dim": 4, "points": 2,
                 "queries": 9, "far": True, **FP32},
    "bf16-d12-p3": {"shapes": ODD_SHAPES, "batch": 2, "heads": 2, "head_dim": 12, "points": 3,
                    "queries": 11, **BF16},
}  # fmt: skip


@pytest.fixture(scope="module")
def interpreter_report() -> dict:
    """All cases in one interpreter subprocess (about 10 s on an idle 2-core machine)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "triton_interpret_check.py"), json.dumps(CASES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("name", sorted(CASES))
def test_triton_kernels_match_torch_in_interpreter(name, interpreter_report):
    """Forward and the gradients w.r.t. value, locations and weights, triton vs torch."""
    case, report = CASES[name], interpreter_report[name]
    dtype = case.get("dtype", "float32")
    for tensor in ("output", "grad_value", "grad_locations", "grad_weights"):
        entry = report[tensor]
        assert entry["dtype"] == dtype, (tensor, entry)
        assert entry["finite"], (tensor, entry)
        assert entry["close"], (tensor, entry)
        assert entry["max_ref"] > 0.1, (tensor, entry)  # not a trivially zero comparison
