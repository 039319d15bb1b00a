"""Small datasets in each real on-disk format, drawn from learnable synthetic scenes.

A scene is two stuff regions (a sky with a vertical gradient above a textured ground, split by
a wavy horizon) with 2–5 coloured shapes on top (circle, square, triangle: things, each class
with its own colour, so a small model learns them in minutes). Later shapes occlude earlier ones;
a shape left with a tiny visible fragment becomes void. Every writer also returns a manifest
(segments, classes and pixel counts per image) so tests can check what a reader reads back.
"""

import json
from pathlib import Path

import numpy as np

from .formats import _WRITERS, _category_ids
from .scenes import CLASSES, SHAPES, THING_COLOURS, Scene, draw_scene

FORMATS = ("coco_panoptic", "coco_instance", "ade20k", "cityscapes", "mapillary", "demo")


def write_dataset(
    fmt: str,
    out: str | Path,
    num: int = 8,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    num_val: int | None = None,
    num_shapes: tuple[int, int] = (2, 5),
) -> dict:
    """Write `num` training and `num_val` (default num // 2, at least 2) validation images of
    format `fmt` under the datasets root `out`, each with `num_shapes` (min, max) things drawn.
    Returns (and writes) the manifest."""
    if not 0 <= num_shapes[0] <= num_shapes[1]:
        raise ValueError(f"num_shapes must be (min, max) with 0 <= min <= max, got {num_shapes}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {FORMATS}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    num_val = max(2, num // 2) if num_val is None else num_val
    default_size = {"demo": (128, 128), "cityscapes": (128, 256)}.get(fmt, (160, 224))
    height, width = size or default_size
    crowd_prob = 0.0 if fmt == "demo" else 0.15
    manifest: dict = {"format": fmt, "splits": {}}
    for split, count in (("train", num), ("val", num_val)):
        scenes = [
            draw_scene(rng, height, width, crowd_prob, tuple(num_shapes)) for _ in range(count)
        ]
        manifest["splits"][split] = _WRITERS[fmt](out, split, scenes)
    (out / f"{fmt}_manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


__all__ = [
    "CLASSES",
    "FORMATS",
    "SHAPES",
    "THING_COLOURS",
    "Scene",
    "_category_ids",
    "draw_scene",
    "write_dataset",
]
