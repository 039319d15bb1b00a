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
    # predictions with void (dropped pixels, as Mask2Former's panoptic inference leaves them)
    void_preds = preds.clone()
    for i in range(len(void_preds)):
        y, x = rng.integers(0, 512 - 96, 2)
        void_preds[i, y : y + 96, x : x + 96] = 0
    ours_void = PanopticQuality(THINGS, STUFFS)
    ours_void.update(void_preds, gts)
    raw = TorchmetricsPQ(set(THINGS), set(STUFFS), allow_unknown_preds_category=True)
    raw.update(void_preds, gts)
    # ecosystem.md workaround: predicted void becomes a dummy stuff class absent from the gt
    dummy = max(STUFFS) + 1
    mapped = void_preds.clone()
    mapped[..., 0][mapped[..., 0] == 0] = dummy
    fixed = TorchmetricsPQ(set(THINGS), set(STUFFS) | {dummy}, return_per_class=True)
    fixed.update(mapped, gts)
    per_class = fixed.compute().flatten()[:-1]  # things sorted, stuffs sorted, dummy last
    present = ours_void.true_positives + ours_void.false_positives + ours_void.false_negatives > 0
    print(
        f"  PQ with void in predictions: ours {ours_void.compute()['pq'].item():.6f} | "
        f"torchmetrics raw {raw.compute().item():.6f} | torchmetrics with void→dummy stuff "
        f"{per_class[present.to(per_class.device)].mean().item():.6f}"
    )


if __name__ == "__main__":
    main()
