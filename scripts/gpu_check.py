"""One-GPU check of the things the CPU test suite cannot measure (about 3-5 minutes on an H100/H200,
designed to stay under 8).

Sections, in this order (each one's failure is recorded and the next one still runs):
  attention  Triton and gather (embedding_bag) vs torch (grid_sample) deformable attention at
             the pixel-decoder size of a 1024x1024 image (levels 128², 64², 32²; all 21504
             pixels as queries; batch 2,
             8 heads x 32, 4 points): forward and forward+backward time, peak memory, max
             differences of the output and the three gradients (fp32), and of a bf16 forward.
             If Triton fails or disagrees, the model sections fall back to the torch backend.
  train      R50 and Swin-L Mask2Former (133 classes; Swin-L with 200 queries as the paper's COCO
             panoptic model) trained with AdamW at 1024x1024 in bf16-mixed on synthetic targets:
             images/s, peak memory, and whether the first 20 losses are finite.
  inference  forward FPS (`Mask2Former.infer`, what evaluate and predict run) at the COCO test
             size (800x1333, padded to 800x1344 by the model), batch 1, fp32 and bf16 autocast
             (network only, no post-processing), R50 and Swin-L.
  cuda_cpu   the same R50 weights on CUDA (torch and triton attention) vs CPU on a small input:
             max difference of the class logits and mask logits (TF32 off).
  syncs      host round trips of one Lightning training step of the R50 model (256², batch 2,
             the second step) counted by m2f_lightning.runs.host_syncs on the device, and the
             warnings of torch.cuda.set_sync_debug_mode("warn") over the same step; the CPU
             count of the same step beside it (what the CPU test suite asserts).

Prints a table and writes it as JSON (--out, default gpu_check.json). Without CUDA it says that it
needs CUDA and exits 0. `--device cpu --tiny` runs every section on tiny sizes on CPU (the Triton
comparison too when TRITON_INTERPRET=1 is set): a check that the script works, not a measurement.

    python scripts/gpu_check.py [--out gpu_check.json] [--sections attention,train,...]
    TRITON_INTERPRET=1 python scripts/gpu_check.py --device cpu --tiny --out /tmp/tiny.json
"""

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SECTIONS = ("attention", "train", "inference", "cuda_cpu", "syncs")
NUM_CLASSES = 133
GIB = 1024**3


# ----------------------------------------------------------------------------- sizes


def model_kwargs(backbone: str, tiny: bool) -> dict[str, Any]:
    """Mask2Former kwargs: the paper's R50 / Swin-L (200 queries, drop path 0.3 as
    conf/backbone/swin_l.yaml), or tiny widths for a CPU run of the code paths."""
    if not tiny:
        if backbone == "swin_l":
            return {"backbone": "swin_l", "backbone_kwargs": {"drop_path_rate": 0.3},
                    "num_queries": 200}  # fmt: skip
        return {"backbone": "r50", "backbone_kwargs": {"frozen_bn": True}}
    small = {"num_queries": 8, "hidden_dim": 32, "mask_dim": 32, "pixel_decoder_dim": 32,
             "encoder_layers": 1, "encoder_ffn_dim": 64, "encoder_heads": 4, "decoder_layers": 2,
             "decoder_heads": 4, "decoder_ffn_dim": 64, "norm_groups": 8}  # fmt: skip
    if backbone == "swin_l":
        swin = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2),
                "window_size": 4, "drop_path_rate": 0.0}  # fmt: skip
        return {"backbone": "swin_l", "backbone_kwargs": swin, **small}
    return {"backbone": "r50", "backbone_kwargs": {"layers": (1, 1, 1, 1)}, **small}


def build_model(backbone: str, tiny: bool) -> torch.nn.Module:
    from m2f_lightning.modeling import Mask2Former

    return Mask2Former(num_classes=NUM_CLASSES, **model_kwargs(backbone, tiny))


def synthetic_targets(
    batch: int, size: int, device: torch.device, generator: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """Per image 6 random boxes as bool masks [N, H, W] with random labels [N]."""
    targets = []
    for _ in range(batch):
        masks = torch.zeros(6, size, size, dtype=torch.bool)
        for mask in masks:
            y0, x0 = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=generator).tolist()
            mask[y0 : y0 + h, x0 : x0 + w] = True
        labels = torch.randint(0, NUM_CLASSES, (6,), generator=generator)
        targets.append({"masks": masks.to(device), "labels": labels.to(device)})
    return targets


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_gib(device: torch.device, baseline: int = 0) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / GIB


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def triton_usable(device: torch.device) -> bool:
    from m2f_lightning.modeling.ms_deform_attn import triton_available

    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return triton_available() and (device.type == "cuda" or interpreted)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    diff = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    return {"max_abs": diff, "max_rel": diff / scale if scale > 0 else diff}


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


# ----------------------------------------------------------------------------- sections


def check_attention(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from m2f_lightning.modeling.ms_deform_attn import ms_deform_attn_core

    if args.tiny:
        shapes, batch, heads, head_dim, points = [(6, 5), (3, 3), (2, 1)], 1, 2, 8, 2
        repeats = 1
    else:
        shapes, batch, heads, head_dim, points = [(128, 128), (64, 64), (32, 32)], 2, 8, 32, 4
        repeats = 10
    length = sum(h * w for h, w in shapes)
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(batch, length, heads, head_dim, generator=gen).to(device)
    locations = torch.rand(batch, length, heads, len(shapes), points, 2, generator=gen) * 1.1
    locations = (locations - 0.05).to(device)  # some samples fall off the map
    weights = torch.rand(batch, length, heads, len(shapes) * points, generator=gen).softmax(-1)
    weights = weights.view(batch, length, heads, len(shapes), points).to(device)
    grad_out = torch.randn(batch, length, heads * head_dim, generator=gen).to(device)
    result: dict[str, Any] = {
        "size": {
            "levels": shapes,
            "batch": batch,
            "queries": length,
            "heads": heads,
            "head_dim": head_dim,
            "points": points,
        },  # fmt: skip
    }
    backends = ["torch", "gather"] + (["triton"] if triton_usable(device) else [])
    if "triton" not in backends:
        result["triton"] = "skipped: needs CUDA (or TRITON_INTERPRET=1 on CPU)"
    outputs = {}
    for backend in backends:

        def forward(backend: str = backend) -> torch.Tensor:
            with torch.no_grad():
                return ms_deform_attn_core(value, shapes, locations, weights, backend=backend)

        def forward_backward(backend: str = backend) -> list[torch.Tensor]:
            leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
            out = ms_deform_attn_core(leaves[0], shapes, leaves[1], leaves[2], backend=backend)
            out.backward(grad_out)
            return [out.detach()] + [t.grad for t in leaves]

        outputs[backend] = forward_backward()
        base = reset_peak(device)
        forward()
        fwd_mem = peak_gib(device, base)
        base = reset_peak(device)
        forward_backward()
        bwd_mem = peak_gib(device, base)
        result[backend] = {
            "forward_ms": 1e3 * median_time(forward, device, repeats, warmup=1),
            "forward_backward_ms": 1e3 * median_time(forward_backward, device, repeats, warmup=1),
            "forward_peak_gib": fwd_mem,
            "forward_backward_peak_gib": bwd_mem,
        }
        free(device)
    names = ("output", "grad_value", "grad_locations", "grad_weights")
    result["gather_vs_torch_fp32"] = {
        name: max_diff(got, ref)
        for name, got, ref in zip(names, outputs["gather"], outputs["torch"], strict=True)
    }
    if "triton" in outputs:
        result["triton_vs_torch_fp32"] = {
            name: max_diff(got, ref)
            for name, got, ref in zip(names, outputs["triton"], outputs["torch"], strict=True)
        }
        with torch.no_grad():
            bf16 = ms_deform_attn_core(
                value.bfloat16(), shapes, locations.bfloat16(), weights.bfloat16(), "triton"
            )
        result["triton_bf16_vs_torch_fp32_output"] = max_diff(bf16, outputs["torch"][0])
        worst = max(d["max_rel"] for d in result["triton_vs_torch_fp32"].values())
        result["triton_ok"] = bool(math.isfinite(worst) and worst < 1e-4)
    return result


def per_model(
    device: torch.device, fn: Callable[..., dict[str, Any]], *args: Any
) -> dict[str, Any]:
    """One model's measurement; a failure (say, out of memory) becomes {"error": traceback} so
    the other model is still measured."""
    try:
        return fn(*args)
    except Exception:
        error = traceback.format_exc()
        print(error, file=sys.stderr)
        return {"error": error}
    finally:
        free(device)


def check_train(args: argparse.Namespace, device: torch.device, backend: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ("r50", "swin_l"):
        result[name] = per_model(device, _train_one, args, device, backend, name)
    return result


def _train_one(
    args: argparse.Namespace, device: torch.device, backend: str, name: str
) -> dict[str, Any]:
    from m2f_lightning.losses import SetCriterion
    from m2f_lightning.modeling import set_ms_deform_attn_backend

    size = 64 if args.tiny else 1024
    steps = 2 if args.tiny else args.steps
    warmup = 1 if args.tiny else 5
    torch.manual_seed(0)
    model = build_model(name, args.tiny).to(device).train()
    set_ms_deform_attn_backend(model, backend)
    criterion = SetCriterion(NUM_CLASSES, num_points=256 if args.tiny else 12544).to(device)
    # fused, as the training module's (the non-finite skip stays on the device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(args.batch, 3, size, size, generator=gen) * 255).to(device)
    targets = synthetic_targets(args.batch, size, device, gen)
    losses: list[float] = []
    base = reset_peak(device)
    start = time.perf_counter()
    for step in range(steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            outputs = model(images)
            loss = criterion(outputs, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    sync(device)
    elapsed = time.perf_counter() - start
    result = {
        "image_size": size,
        "batch": args.batch,
        "steps": steps,
        "attn_backend": backend,
        "images_per_s": args.batch * (steps - warmup) / elapsed,
        "peak_gib": peak_gib(device, base),
        "losses": losses,
        "losses_finite": all(math.isfinite(v) for v in losses),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    del model, optimizer, criterion, outputs, loss
    return result


def check_inference(args: argparse.Namespace, device: torch.device, backend: str) -> dict[str, Any]:
    return {
        name: per_model(device, _inference_one, args, device, backend, name)
        for name in ("r50", "swin_l")
    }


def _inference_one(
    args: argparse.Namespace, device: torch.device, backend: str, name: str
) -> dict[str, Any]:
    from m2f_lightning.modeling import set_ms_deform_attn_backend

    height, width = (48, 80) if args.tiny else (800, 1333)
    repeats = 1 if args.tiny else 10
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(1, 3, height, width, generator=gen) * 255).to(device)
    torch.manual_seed(0)
    model = build_model(name, args.tiny).to(device).eval()
    set_ms_deform_attn_backend(model, backend)
    entry: dict[str, Any] = {"input": [height, width], "attn_backend": backend}
    for precision in ("fp32", "bf16"):

        def forward(precision: str = precision) -> object:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"),
            ):
                return model.infer(images)

        base = reset_peak(device)
        seconds = median_time(forward, device, repeats, warmup=1 if args.tiny else 3)
        entry[precision] = {"fps": 1.0 / seconds, "peak_gib": peak_gib(device, base)}
    return entry


def check_cuda_cpu(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from m2f_lightning.modeling import set_ms_deform_attn_backend

    height, width = (64, 64) if args.tiny else (256, 320)
    torch.manual_seed(0)
    model = build_model("r50", args.tiny).eval()
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    set_ms_deform_attn_backend(model, "torch")
    with torch.inference_mode():
        ref = model(images)
    on_device = copy.deepcopy(model).to(device)
    result: dict[str, Any] = {"input": [height, width], "device": str(device)}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for backend in ["torch"] + (["triton"] if triton_usable(device) else []):
            set_ms_deform_attn_backend(on_device, backend)
            with torch.inference_mode():
                out = on_device(images.to(device))
            result[backend] = {
                "pred_logits": max_diff(out["pred_logits"].cpu(), ref["pred_logits"]),
                "pred_masks": max_diff(out["pred_masks"].cpu(), ref["pred_masks"]),
            }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    del on_device
    free(device)
    return result


def check_syncs(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from m2f_lightning.lightning_module import Mask2FormerModule
    from m2f_lightning.losses import SetCriterion
    from m2f_lightning.runs.host_syncs import count_training_step
    from m2f_lightning.types import Batch

    size = 64 if args.tiny else 256
    result: dict[str, Any] = {"image_size": size}
    for where in dict.fromkeys([device.type, "cpu"]):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        module = Mask2FormerModule(
            build_model("r50", args.tiny),
            task="panoptic",
            class_names=[str(c) for c in range(NUM_CLASSES)],
            thing_ids=list(range(80)),
            stuff_ids=list(range(80, NUM_CLASSES)),
            criterion=SetCriterion(NUM_CLASSES, num_points=256 if args.tiny else 12544),
            max_steps=2,
        )
        images = torch.rand(2, 3, size, size, generator=gen) * 255
        sizes = [(size, size)] * 2
        targets = synthetic_targets(2, size, torch.device("cpu"), gen)
        # per-sample point seeds, as the training data gives them (generators on the device)
        batch = Batch(images, sizes, sizes, ["a", "b"], [0, 1], targets=targets, point_seeds=[7, 8])
        counter = count_training_step(module, batch, step=1, device=where)
        result[where] = {
            "count": counter.count,
            "kinds": counter.summary(),
            "events": [f"{e.kind} {e.op} at {e.where}" for e in counter.events],
            "sync_debug_warnings": len(counter.sync_warnings),
        }
        del module
        free(device)
    return result


# ----------------------------------------------------------------------------- report


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    sections = report["sections"]
    attn = sections.get("attention", {})
    for backend in ("torch", "gather", "triton"):
        entry = attn.get(backend)
        if isinstance(entry, dict):
            rows.append(
                (
                    "attention",
                    backend,
                    f"fwd {fmt(entry['forward_ms'], ' ms')}, fwd+bwd "
                    f"{fmt(entry['forward_backward_ms'], ' ms')}, peak fwd "
                    f"{fmt(entry['forward_peak_gib'], ' GiB')} / fwd+bwd "
                    f"{fmt(entry['forward_backward_peak_gib'], ' GiB')}",
                )
            )
        elif isinstance(entry, str):
            rows.append(("attention", backend, entry))
    for other in ("gather", "triton"):
        for name, diff in attn.get(f"{other}_vs_torch_fp32", {}).items():
            rows.append(
                (
                    "attention",
                    f"|{other}-torch| {name}",
                    f"{diff['max_abs']:.2e} (rel {diff['max_rel']:.1e})",
                )
            )
    if "triton_bf16_vs_torch_fp32_output" in attn:
        diff = attn["triton_bf16_vs_torch_fp32_output"]
        rows.append(("attention", "|triton bf16-torch fp32| output", f"{diff['max_abs']:.2e}"))
    for name, entry in sections.get("train", {}).items():
        if "error" in entry:
            rows.append(("train", name, "ERROR " + entry["error"].strip().splitlines()[-1]))
            continue
        rows.append(
            (
                "train",
                f"{name} {entry['image_size']}² bf16-mixed b{entry['batch']}",
                f"{entry['images_per_s']:.2f} img/s, peak {fmt(entry['peak_gib'], ' GiB')}, "
                f"{entry['steps']} losses finite: {entry['losses_finite']} "
                f"(first {entry['losses'][0]:.2f}, last {entry['losses'][-1]:.2f})",
            )
        )
    for name, entry in sections.get("inference", {}).items():
        if "error" in entry:
            rows.append(("inference", name, "ERROR " + entry["error"].strip().splitlines()[-1]))
            continue
        h, w = entry["input"]
        rows.append(
            (
                "inference",
                f"{name} {h}x{w}",
                f"fp32 {entry['fp32']['fps']:.2f} FPS (peak {fmt(entry['fp32']['peak_gib'], ' GiB')}), "
                f"bf16 {entry['bf16']['fps']:.2f} FPS (peak {fmt(entry['bf16']['peak_gib'], ' GiB')})",
            )
        )
    cuda_cpu = sections.get("cuda_cpu", {})
    for backend in ("torch", "triton"):
        if backend in cuda_cpu:
            entry = cuda_cpu[backend]
            rows.append(
                (
                    "cuda_cpu",
                    f"R50 {cuda_cpu['device']}({backend}) vs cpu",
                    f"logits {entry['pred_logits']['max_abs']:.2e}, "
                    f"masks {entry['pred_masks']['max_abs']:.2e}",
                )
            )
    syncs = sections.get("syncs", {})
    for where in ("cuda", "cpu"):
        if where in syncs:
            entry = syncs[where]
            warned = (
                f", sync debug warnings {entry['sync_debug_warnings']}" if where == "cuda" else ""
            )
            rows.append(
                (
                    "syncs",
                    f"R50 train step {syncs['image_size']}² on {where}",
                    f"{entry['count']} host round trips {entry['kinds']}{warned}",
                )
            )
    for section, error in report["errors"].items():
        if "/" not in section:  # per-model errors are on their model's row already
            rows.append((section, "ERROR", error.strip().splitlines()[-1]))
    return rows


def print_table(report: dict[str, Any]) -> None:
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows + [("section", "item", "")]) for i in range(2)]
    print(f"\n{report['environment']['device_name']} | torch {report['environment']['torch']} | "
          f"triton {report['environment']['triton']} | {report['seconds']:.0f} s"
          f"{' | TINY (code-path check, not a measurement)' if report['tiny'] else ''}")  # fmt: skip
    print(f"{'section':{widths[0]}}  {'item':{widths[1]}}  result")
    for section, item, text in rows:
        print(f"{section:{widths[0]}}  {item:{widths[1]}}  {text}")


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu_check.json", help="JSON report path")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a code-path check")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--batch", type=int, default=2, help="training images per step")
    parser.add_argument("--steps", type=int, default=20, help="training steps per model")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="skip sections that start after this"
    )
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check needs CUDA: torch.cuda.is_available() is False, so nothing was measured. "
            "(`--device cpu --tiny` checks that the script runs.)"
        )
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    start = time.perf_counter()
    report: dict[str, Any] = {
        "tiny": args.tiny,
        "environment": environment(device),
        "sections": {},
        "errors": {},
    }
    backend = "auto"
    for section in args.sections:
        if time.perf_counter() - start > args.budget_s:
            report["errors"][section] = f"skipped: past the {args.budget_s:.0f} s budget"
            continue
        print(f"[{time.perf_counter() - start:6.1f} s] {section} ...", flush=True)
        try:
            if section == "attention":
                result = check_attention(args, device)
                if result.get("triton_ok") is False:
                    backend = "torch"  # keep the model sections meaningful
            elif section == "train":
                result = check_train(args, device, backend)
            elif section == "inference":
                result = check_inference(args, device, backend)
            elif section == "syncs":
                result = check_syncs(args, device)
            else:
                result = check_cuda_cpu(args, device)
            report["sections"][section] = result
            for name, entry in result.items():
                if isinstance(entry, dict) and "error" in entry:
                    report["errors"][f"{section}/{name}"] = entry["error"]
        except Exception:
            report["errors"][section] = traceback.format_exc()
            print(report["errors"][section], file=sys.stderr)
            free(device)
    report["seconds"] = time.perf_counter() - start
    print_table(report)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
