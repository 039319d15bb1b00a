"""Command line: convert an HF Mask2Former checkpoint directory into our checkpoint file."""

import argparse
import sys
from pathlib import Path

from .io import load_model, save_model


def convert_hf(src: str | Path, dst: str | Path) -> Path:
    """Convert, verify that every weight found its place, and write our checkpoint."""
    model = load_model(src)
    return save_model(model, dst, class_names=getattr(model, "class_names", None), source=str(src))


def convert_hf_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a Hugging Face Mask2FormerForUniversalSegmentation checkpoint "
        "directory (config.json + model.safetensors or pytorch_model.bin), or a hub id such as "
        "facebook/mask2former-swin-tiny-coco-panoptic (fetched once into the HF cache), into an "
        "m2f-lightning checkpoint file."
    )
    parser.add_argument("src", help="HF checkpoint directory or hub id (owner/name[@revision])")
    parser.add_argument("dst", help="output file (e.g. weights/m2f_swin_t_coco_panoptic.pt)")
    args = parser.parse_args(argv)
    try:
        out = convert_hf(args.src, args.dst)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
