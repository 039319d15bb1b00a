"""The out-of-the-box demo: synthetic scenes → train a small Mask2Former on the CPU → evaluate
PQ / AP / mIoU on held-out images → overlay PNGs.

    python scripts/demo.py                 # what `make demo` runs
    python scripts/demo.py dataset.max_steps=1200 trainer=gpu   # any Hydra override

Everything goes through the same entry points a user calls (train.py and m2f-predict) with
`experiment=demo`; nothing is downloaded.
"""

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m2f_lightning.data.synthetic import write_dataset  # noqa: E402

TRAIN_IMAGES, VAL_IMAGES, SEED = 2000, 100, 0


def ensure_data(datasets: Path) -> None:
    manifest = datasets / "demo_manifest.json"
    if manifest.is_file():
        splits = json.loads(manifest.read_text())["splits"]
        if len(splits["train"]) == TRAIN_IMAGES and len(splits["val"]) == VAL_IMAGES:
            print(f"[demo] synthetic dataset already under {datasets / 'synthetic'}")
            return
    start = time.perf_counter()
    write_dataset("demo", datasets, num=TRAIN_IMAGES, num_val=VAL_IMAGES, seed=SEED)
    print(
        f"[demo] wrote {TRAIN_IMAGES} + {VAL_IMAGES} synthetic scenes under {datasets / 'synthetic'} "
        f"in {time.perf_counter() - start:.1f} s"
    )


def run(command: list[str], env: dict[str, str]) -> None:
    print("[demo] $ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env, cwd=ROOT)


def main() -> None:
    overrides = sys.argv[1:]
    datasets = Path(os.environ.get("M2F_DATASETS", ROOT / "datasets"))
    ensure_data(datasets)
    out = ROOT / "outputs" / "demo" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    env = {**os.environ, "M2F_DATASETS": str(datasets)}
    env.setdefault("WANDB_MODE", "offline")
    start = time.perf_counter()
    run([sys.executable, "train.py", "experiment=demo", f"hydra.run.dir={out}", *overrides], env)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    predict_dir = out / "predict"
    val_images = datasets / "synthetic" / "val2017"
    inputs = ",".join(str(p) for p in sorted(val_images.glob("*.jpg"))[:12])
    run(
        [
            sys.executable,
            "-c",
            "from m2f_lightning.cli.main import predict_main; predict_main()",
            "experiment=demo",
            f"checkpoint={out / 'checkpoints' / 'last.ckpt'}",
            f"inputs=[{inputs}]",
            f"hydra.run.dir={predict_dir}",
            *overrides,
        ],
        env,
    )
    results = metrics.get("test") or metrics.get("val")
    print(
        "\n[demo] held-out synthetic images: "
        + ", ".join(
            f"{k} {results[k]:.1f}" for k in ("PQ", "PQ_th", "PQ_st", "AP", "mIoU") if k in results
        )
    )
    print(
        f"[demo] training + evaluation took {seconds / 60:.1f} min ({metrics['global_step']} steps)"
    )
    print(f"[demo] overlays: {predict_dir / 'predictions'}")
    print(
        f"[demo] checkpoint: {out / 'checkpoints' / 'last.ckpt'}  metrics: {out / 'metrics.json'}"
    )


if __name__ == "__main__":
    main()
