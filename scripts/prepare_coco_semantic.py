"""COCO panoptic → semantic PNGs (contiguous 0..132, 255 = void), as
`coco/panoptic_semseg_{train,val}2017/*.png`. Resumable and parallel.

    python scripts/prepare_coco_semantic.py --root datasets --workers 8
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _prepare_common import run_jobs, save_png  # noqa: E402

from m2f_lightning.data.catalog import get_metadata  # noqa: E402
from m2f_lightning.data.io import read_label, rgb_to_id  # noqa: E402


def convert(job: tuple, lookup: dict[int, int]) -> None:
    png, out, segments = job
    ids = rgb_to_id(read_label(png)[..., :3])
    sem = np.full(ids.shape, 255, dtype=np.uint8)
    for seg in segments:
        sem[ids == seg["id"]] = lookup[seg["category_id"]]
    save_png(sem, out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="datasets")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    meta = get_metadata("coco_panoptic")
    lookup = {d: i for i, d in enumerate(meta.dataset_ids)}
    coco = Path(args.root) / "coco"
    for split in ("train", "val"):
        data = json.loads((coco / "annotations" / f"panoptic_{split}2017.json").read_text())
        jobs = [
            (
                coco / f"panoptic_{split}2017" / a["file_name"],
                coco / f"panoptic_semseg_{split}2017" / a["file_name"],
                a["segments_info"],
            )
            for a in data["annotations"]
        ]
        run_jobs(
            partial(convert, lookup=lookup), jobs, lambda j: j[1], args.workers, f"coco {split}"
        )


if __name__ == "__main__":
    main()
