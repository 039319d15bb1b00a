"""PQ metric time per 512x512 image with ~30 segments: ours vs torchmetrics' PanopticQuality,
and whether the two agree (they differ when predictions contain void; see ecosystem.md §3).

    python scripts/bench_metrics.py [--images 10]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import load_note, median_seconds  # noqa: E402

from m2f_lightning.metrics import PanopticQuality  # noqa: E402

THINGS, STUFFS = list(range(1, 21)), list(range(21, 31))


def scene(
    rng: np.random.Generator, size: int = 512, segments: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((size, size, 2), dtype=np.int64)
    gt[..., 0] = rng.choice(STUFFS)
    for k in range(segments - 1):
        y, x = rng.integers(0, size - 64, 2)
        h, w = rng.integers(16, 128, 2)
        gt[y : y + h, x : x + w] = (rng.choice(THINGS + STUFFS), k + 1)
    pred = np.roll(gt, (rng.integers(-6, 7), rng.integers(-6, 7)), axis=(0, 1))
    return gt, pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    pairs = [scene(rng) for _ in range(args.images)]
    gts = torch.from_numpy(np.stack([g for g, _ in pairs]))
    preds = torch.from_numpy(np.stack([p for _, p in pairs]))

    def ours():
        m = PanopticQuality(THINGS, STUFFS)
        m.update(preds, gts)
        return m.compute()["pq"].item()

    def reference():
        m = TorchmetricsPQ(things=set(THINGS), stuffs=set(STUFFS))
        m.update(preds, gts)
        return m.compute().item()

    t_ours = median_seconds(ours, repeats=3) / args.images
    t_ref = median_seconds(reference, repeats=3) / args.images
    print(f"PQ on {args.images} images of 512x512 with ~30 segments ({load_note()}):")
    print(
        f"  per image: ours {t_ours * 1e3:.1f} ms | torchmetrics {t_ref * 1e3:.1f} ms | speed-up x{t_ref / t_ours:.1f}"
    )
    print(
        f"  PQ: ours {ours():.6f} | torchmetrics {reference():.6f} (no void in these predictions)"
    )


if __name__ == "__main__":
    main()
