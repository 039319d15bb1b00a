"""Time our MSDeformAttnPixelDecoder against HF's Mask2FormerPixelDecoder (same config, random
weights) on the feature pyramid of a 512x512 image with Swin-T channels, on CPU.

Usage: .venv/bin/python scripts/bench_ms_deform_attn.py [--threads 2] [--repeats 5] [--batch 1]
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import load_note, median_seconds  # noqa: E402

from m2f_lightning.modeling.pixel_decoder import MSDeformAttnPixelDecoder  # noqa: E402

KEYS = ("res2", "res3", "res4", "res5")
SWIN_T_CHANNELS = [96, 192, 384, 768]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    side = args.image
    feats = {
        k: torch.randn(args.batch, c, side // s, side // s)
        for k, c, s in zip(KEYS, SWIN_T_CHANNELS, (4, 8, 16, 32), strict=True)
    }
    ours = MSDeformAttnPixelDecoder(SWIN_T_CHANNELS)
    config = Mask2FormerConfig(
        feature_size=256,
        mask_feature_size=256,
        encoder_layers=6,
        encoder_feedforward_dim=1024,
        num_attention_heads=8,
        dropout=0.0,
    )
    hf = Mask2FormerPixelDecoder(config, feature_channels=SWIN_T_CHANNELS)
    hf_feats = [feats[k] for k in KEYS]

    def ours_fwd() -> object:
        with torch.no_grad():
            return ours(feats)

    def hf_fwd() -> object:
        with torch.no_grad():
            return hf(hf_feats)

    def ours_fwd_bwd() -> None:
        mask, multi = ours(feats)
        (mask.mean() + sum(m.mean() for m in multi)).backward()

    def hf_fwd_bwd() -> None:
        out = hf(hf_feats)
        (out.mask_features.mean() + sum(m.mean() for m in out.multi_scale_features)).backward()

    print(
        f"pixel decoder, {side}x{side} image, batch {args.batch}, Swin-T channels, "
        f"{args.threads} threads, median of {args.repeats} ({load_note()})"
    )
    for label, fn_ours, fn_hf in (
        ("forward", ours_fwd, hf_fwd),
        ("forward+backward", ours_fwd_bwd, hf_fwd_bwd),
    ):
        # alternate ours/HF one run at a time so a load spike from other processes hits both
        t_ours, t_hf = [], []
        for _ in range(args.repeats):
            t_ours.append(median_seconds(fn_ours, repeats=1, warmup=0 if t_ours else 1))
            t_hf.append(median_seconds(fn_hf, repeats=1, warmup=0 if t_hf else 1))
        mo, mh = statistics.median(t_ours), statistics.median(t_hf)
        print(f"{label:17s} ours {mo:.3f} s   HF {mh:.3f} s   HF/ours {mh / mo:.2f}x")


if __name__ == "__main__":
    main()
