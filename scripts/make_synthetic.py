"""Write a small dataset in a real on-disk format, from synthetic scenes.

python scripts/make_synthetic.py --format coco_panoptic --out datasets --num 8 --seed 0
"""

import argparse
import time

from m2f_lightning.data.synthetic import FORMATS, write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="datasets root to write under")
    parser.add_argument("--num", type=int, default=8, help="training images (validation: num // 2)")
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument(
        "--shapes", type=int, nargs=2, default=(2, 5), metavar=("MIN", "MAX"), help="things drawn"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    manifest = write_dataset(
        args.format,
        args.out,
        args.num,
        args.seed,
        tuple(args.size) if args.size else None,
        args.num_val,
        tuple(args.shapes),
    )
    counts = {split: len(files) for split, files in manifest["splits"].items()}
    print(
        f"wrote {args.format} under {args.out}: {counts} images in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
