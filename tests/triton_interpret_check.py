"""Compare the Triton deformable attention (in Triton's CPU interpreter) with the torch path.

Run as a subprocess by tests/test_ms_deform_attn_triton.py: TRITON_INTERPRET must be set before
the kernels are decorated, which is at the first import of `ms_deform_attn_triton`, so a fresh
interpreter is the reliable way. Prints one JSON object: per tensor (output and the gradients of
value, locations and weights) the max absolute difference, the largest reference magnitude, the
dtype and whether it is within the tolerances, for each named case (one process for all cases:
importing torch and the package costs more than a small case).

Usage: python tests/triton_interpret_check.py '{"name": {"shapes": [[5, 7], [3, 3]], ...}, ...}'
"""

import json
import os
import sys
import types
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

# Load only the two deformable attention modules: an empty stand-in for the package
# m2f_lightning.modeling skips its __init__ (backbones, timm), a few seconds of a small check.
_modeling = types.ModuleType("m2f_lightning.modeling")
_modeling.__path__ = [str(Path(__file__).resolve().parents[1] / "m2f_lightning" / "modeling")]
sys.modules.setdefault("m2f_lightning.modeling", _modeling)

from m2f_lightning.modeling.ms_deform_attn import ms_deform_attn_core  # noqa: E402


def run_case(case: dict) -> dict:
    torch.manual_seed(case.get("seed", 0))
    shapes = [tuple(s) for s in case["shapes"]]
    batch, heads, head_dim = case["batch"], case["heads"], case["head_dim"]
    points, queries = case["points"], case["queries"]
    dtype = getattr(torch, case.get("dtype", "float32"))
    levels = len(shapes)
    length = sum(h * w for h, w in shapes)
    value = torch.randn(batch, length, heads, head_dim).to(dtype)
    # about a third of the locations fall outside [0, 1] (zeros there, as grid_sample pads)
    locations = torch.rand(batch, queries, heads, levels, points, 2) * 1.5 - 0.25
    if case.get("far"):  # the first point of every head and level up to 1000 map sizes away
        locations[..., 0, :] = locations[..., 0, :] * 2000 - 1000
    locations = locations.to(dtype)
    weights = torch.rand(batch, queries, heads, levels, points).to(dtype)
    grad_out = torch.randn(batch, queries, heads * head_dim).to(dtype)

    def run(backend: str, cast: torch.dtype) -> list[torch.Tensor]:
        leaves = [t.to(cast).clone().requires_grad_() for t in (value, locations, weights)]
        out = ms_deform_attn_core(leaves[0], shapes, leaves[1], leaves[2], backend=backend)
        out.backward(grad_out.to(cast))
        return [out.detach()] + [t.grad for t in leaves]

    # the reference is the torch path in fp32 on the same (possibly bf16-rounded) inputs
    reference = run("torch", torch.float32)
    triton_out = run("triton", dtype)
    atol, rtol = case.get("atol", 1e-5), case.get("rtol", 1e-5)
    result = {}
    for name, ref, got in zip(
        ("output", "grad_value", "grad_locations", "grad_weights"),
        reference,
        triton_out,
        strict=True,
    ):
        diff = (got.float() - ref).abs()
        result[name] = {
            "max_abs_diff": diff.max().item(),
            "max_ref": ref.abs().max().item(),
            "dtype": str(got.dtype).removeprefix("torch."),
            "close": bool(torch.allclose(got.float(), ref, atol=atol, rtol=rtol)),
            "finite": bool(torch.isfinite(got).all()),
        }
    return result


if __name__ == "__main__":
    cases = json.loads(sys.argv[1])
    print(json.dumps({name: run_case(case) for name, case in cases.items()}))
