"""Peak memory of `m2f-predict` on one large photo: an R50 133-class COCO panoptic model with
random weights (saved with `checkpoints.save_model`), a W×H JPEG, the real predict entry point
run under `/usr/bin/time -v`, for one or more checkouts of the code.

    python scripts/bench_predict_memory.py [--code /work/main --code .] [--size 6000x4000]
        [--task panoptic] [--limit-gb 12]

`--limit-gb` caps each run's address space (RLIMIT_AS), so a run that needs more fails with an
allocation error instead of pushing a shared machine into the kernel's OOM killer.
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PREDICT = "from m2f_lightning.cli.main import predict_main; predict_main()"


SAVE = """
import sys, torch
from m2f_lightning.checkpoints import save_model
from m2f_lightning.modeling import Mask2Former
torch.manual_seed(0)
save_model(Mask2Former(num_classes=133, backbone="r50"), sys.argv[1])
"""


def make_checkpoint(code: Path, path: Path) -> Path:
    """Random weights, saved by the checkout under test (checkpoint configs change over time)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    # cwd=code: `python -c` puts the working directory ahead of PYTHONPATH on sys.path
    subprocess.run([sys.executable, "-c", SAVE, str(path)], env=env, cwd=code, check=True)
    return path


def make_photo(tmp: Path, width: int, height: int) -> Path:
    """A smooth photo-like JPEG (one of pure noise would be needlessly large)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 50 + 1, width // 50 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    photo = tmp / f"photo_{width}x{height}.jpg"
    image.save(photo, quality=90)
    return photo


def run_predict(
    code: Path, checkpoint: Path, photo: Path, task: str, out: Path, limit_gb: float | None
) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(code), "WANDB_MODE": "disabled"}
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-c",
        PREDICT,
        f"checkpoint={checkpoint}",
        f"inputs=[{photo}]",
        f"task={task}",
        "dataset=coco",
        f"hydra.run.dir={out}",
    ]

    def cap() -> None:
        if limit_gb:
            limit = int(limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    run = subprocess.run(command, env=env, cwd=code, capture_output=True, text=True, preexec_fn=cap)
    report = run.stderr
    peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", report)
    error = ""
    if run.returncode:
        lines = [line for line in report.splitlines() if "Error" in line or "error" in line]
        error = lines[-1][:120] if lines else report.splitlines()[-1][:120]
    written = sorted(p.name for p in (out / "predictions").glob("*")) if run.returncode == 0 else []
    return {
        "exit": str(run.returncode),
        "peak_rss_gb": f"{int(peak_kb[1]) / 2**20:.2f}" if peak_kb else "?",
        "wall": wall[1] if wall else "?",
        "written": ", ".join(written),
        "error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--code", action="append", type=Path, help="checkout to run (repeatable)")
    parser.add_argument("--size", action="append", help="WxH (repeatable); default 6000x4000")
    parser.add_argument("--task", default="panoptic")
    parser.add_argument("--limit-gb", type=float, default=None)
    args = parser.parse_args()
    codes = [c.resolve() for c in (args.code or [ROOT])]
    sizes = args.size or ["6000x4000"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for size in sizes:
            width, height = (int(v) for v in size.lower().split("x"))
            photo = make_photo(tmp, width, height)
            for i, code in enumerate(codes):
                checkpoint = make_checkpoint(code, tmp / f"r50_coco_random_{i}.pt")
                result = run_predict(
                    code, checkpoint, photo, args.task, tmp / f"out{i}_{size}", args.limit_gb
                )
                print(
                    f"{size} {args.task} code={code}: exit {result['exit']}, "
                    f"peak RSS {result['peak_rss_gb']} GB, wall {result['wall']}"
                    + (f", wrote {result['written']}" if result["written"] else "")
                    + (f", error: {result['error']}" if result["error"] else ""),
                    flush=True,
                )


if __name__ == "__main__":
    main()
