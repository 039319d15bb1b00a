"""Overlays computed a band of rows at a time equal the whole-image computation."""

import numpy as np

from m2f_lightning.data.io import id_to_rgb
from m2f_lightning.outputs.visualize import overlay


def whole_image_overlay(image, class_map, colors, alpha=0.55, segment_map=None, ignore=255):
    """The previous implementation: every intermediate at the whole image's size."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    colored = palette[np.clip(class_map, 0, 255)]
    colored[class_map == ignore] = 0
    colored = colored.astype(np.float32)
    valid = (class_map != ignore)[..., None]
    out = np.where(
        valid, (1 - alpha) * image.astype(np.float32) + alpha * colored, image.astype(np.float32)
    )
    if segment_map is not None:
        edges = np.zeros(segment_map.shape, dtype=bool)
        edges[1:, :] |= segment_map[1:, :] != segment_map[:-1, :]
        edges[:, 1:] |= segment_map[:, 1:] != segment_map[:, :-1]
        out[edges] = 255
    return out.clip(0, 255).astype(np.uint8)


def test_banded_overlay_and_panoptic_png_equal_the_whole_image_computation() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (45, 31, 3), dtype=np.uint8)
    segments = rng.integers(0, 6, (9, 7)).repeat(5, 0).repeat(5, 1)[:45, :31]  # blocky ids
    class_map = np.where(segments == 0, 255, segments * 3)
    colors = rng.integers(0, 256, (20, 3)).tolist()
    expected = whole_image_overlay(image, class_map, colors, segment_map=segments)
    for rows in (1, 4, 7, 45, 256):
        banded = overlay(image, class_map, colors, segment_map=segments, rows=rows)
        assert np.array_equal(banded, expected)
        assert np.array_equal(
            overlay(image, class_map, colors, rows=rows),
            whole_image_overlay(image, class_map, colors),
        )
        ids = segments * 70_000 + 3
        expected_rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1)
        assert np.array_equal(id_to_rgb(ids, rows=rows), expected_rgb.astype(np.uint8))
