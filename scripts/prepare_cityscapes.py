"""Cityscapes: `*_gtFine_labelTrainIds.png` and the panoptic JSON/PNGs, through cityscapesScripts
(`createTrainIdLabelImgs`, `createPanopticImgs`), which read `$CITYSCAPES_DATASET`.

    python scripts/prepare_cityscapes.py --root datasets
"""

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="datasets")
    args = parser.parse_args()
    cityscapes = Path(args.root) / "cityscapes"
    if not (cityscapes / "gtFine").is_dir():
        raise SystemExit(
            f"not found: {cityscapes / 'gtFine'} (download gtFine_trainvaltest.zip there)"
        )
    os.environ["CITYSCAPES_DATASET"] = str(cityscapes)
    from cityscapesscripts.preparation import createPanopticImgs, createTrainIdLabelImgs

    polygons = sorted((cityscapes / "gtFine").glob("*/*/*_gtFine_polygons.json"))
    todo = [
        f
        for f in polygons
        if not Path(str(f).replace("_polygons.json", "_labelTrainIds.png")).is_file()
    ]
    if todo:
        createTrainIdLabelImgs.main()  # converts every split; only run when some are missing
    else:
        print(f"labelTrainIds: nothing to do ({len(polygons)} polygon files, all converted)")
    for split in ("train", "val"):
        if (cityscapes / "gtFine" / f"cityscapes_panoptic_{split}.json").is_file():
            print(f"panoptic {split}: already written")
            continue
        createPanopticImgs.convert2panoptic(
            cityscapesPath=str(cityscapes / "gtFine"),
            outputFolder=str(cityscapes / "gtFine"),
            setNames=[split],
        )


if __name__ == "__main__":
    main()
