"""Forward time of our Mask2Former vs the Hugging Face port (same Swin-T config, same random
weights, same 512x512 input, CPU), parameter counts, and the parity max |Δ|.

    python scripts/bench_model.py [--size 512] [--threads 2] [--repeats 5]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import load_note, paired_medians  # noqa: E402

from m2f_lightning.checkpoints import load_model  # noqa: E402
from m2f_lightning.modeling import Mask2Former  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", type=int, default=133)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.device("meta"):
        r50 = Mask2Former(num_classes=133, backbone="r50")
        swin_l = Mask2Former(num_classes=133, backbone="swin_l", num_queries=200)
    print(
        f"parameters: R50 {sum(p.numel() for p in r50.parameters()) / 1e6:.2f}M (paper 44M), "
        f"Swin-L 200q {sum(p.numel() for p in swin_l.parameters()) / 1e6:.2f}M (paper 216M)"
    )

    swin_t = SwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        drop_path_rate=0.0,
    )
    hf = Mask2FormerForUniversalSegmentation(
        Mask2FormerConfig(backbone_config=swin_t, num_labels=args.classes)
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_model(tmp).eval()
    images = torch.rand(1, 3, args.size, args.size) * 255
    pixels = (images - ours.pixel_mean) / ours.pixel_std
    with torch.inference_mode():
        out, ref = ours(images), hf(pixel_values=pixels, output_auxiliary_logits=True)
        delta = max(
            (out["pred_masks"] - ref.masks_queries_logits).abs().max().item(),
            (out["pred_logits"] - ref.class_queries_logits).abs().max().item(),
        )
        t_ours, t_hf = paired_medians(
            lambda: ours(images), lambda: hf(pixel_values=pixels), args.repeats
        )
    print(
        f"Swin-T Mask2Former ({sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M), 1x3x{args.size}x{args.size}, "
        f"{args.threads} threads, median of {args.repeats}, runs alternated ({load_note()})"
    )
    print(
        f"  forward: ours {t_ours:.3f} s | HF transformers {t_hf:.3f} s | speed-up x{t_hf / t_ours:.2f}"
    )
    print(f"  parity: max |Δ| of the final logits = {delta:.2e}")


if __name__ == "__main__":
    main()
