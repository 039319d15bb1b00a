"""Train Mask2Former: python train.py task=panoptic dataset=coco backbone=swin_t precision=bf16-mixed

Configs live in conf/ (see README.md); `python train.py --help` lists the groups.
"""

from m2f_lightning.cli.main import train_main

if __name__ == "__main__":
    train_main()
