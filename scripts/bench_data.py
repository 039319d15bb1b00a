"""Samples/s of one data worker for the COCO LSJ pipeline at 1024x1024: decode + LSJ + per-segment
masks, on synthetic COCO-panoptic images of COCO size (480x640; 12-30 things drawn, plus 2 stuff regions).

    python scripts/bench_data.py [--samples 60]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import load_note  # noqa: E402

from m2f_lightning.data import SegmentationDataset, build_reader, metadata_for  # noqa: E402
from m2f_lightning.data.synthetic import write_dataset  # noqa: E402
from m2f_lightning.data.transforms import lsj  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_dataset(
            "coco_panoptic", root, num=20, num_val=2, seed=0, size=(480, 640), num_shapes=(12, 30)
        )
        reader = build_reader("coco", "panoptic", "train", root)
        dataset = SegmentationDataset(
            reader, "panoptic", metadata_for("coco", "panoptic"), lsj(1024), train=True
        )
        dataset[0]
        on_disk = sum(len(reader[i].segments) for i in range(len(reader))) / len(reader)
        segments = 0
        start = time.perf_counter()
        for i in range(args.samples):
            segments += len(dataset[i % len(dataset)]["targets"]["labels"])
        seconds = time.perf_counter() - start
    print(
        f"COCO LSJ 1024 pipeline, one worker ({load_note()}): {args.samples / seconds:.1f} samples/s "
        f"({seconds / args.samples * 1e3:.1f} ms/sample; {on_disk:.1f} segments/image on disk, "
        f"{segments / args.samples:.1f} target masks/sample after LSJ)"
    )


if __name__ == "__main__":
    main()
