"""Overlays a person can read (issue 12 §7): the image beside the prediction, upscaled to a
legible size, class names written on the segments, contours at segment borders."""

import numpy as np
import torch
from PIL import Image

from m2f_lightning.outputs.visualize import class_map, overlay_panel, segment_map
from m2f_lightning.types import InstanceSet, Segment, SegmentationResult

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
NAMES = ["sky", "ground", "ball"]


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    image = np.stack([yy * 5, xx * 4, 255 - xx * 3], axis=2) + rng.integers(0, 8, (48, 64, 3))
    image = image.clip(0, 255).astype(np.uint8)
    classes = np.zeros((48, 64), dtype=np.int64)
    classes[24:] = 1  # ground below, sky above
    segments = np.where(classes == 0, 1, 2)
    classes[30:44, 6:22] = 2  # a ball on the ground
    segments[30:44, 6:22] = 3
    return image, classes, segments


def test_panel_is_the_upscaled_image_beside_the_prediction() -> None:
    image, classes, segments = _scene()
    panel = overlay_panel(image, classes, COLORS, NAMES, segments)
    assert panel.shape == (48 * 8, 2 * 64 * 8, 3)  # a 64-px image becomes 512 px wide
    left = panel[:, : 64 * 8]
    expected = np.asarray(Image.fromarray(image).resize((512, 384), Image.BILINEAR))
    np.testing.assert_array_equal(left, expected)
    # and that is the image: block means agree with the original
    blocks = left.reshape(48, 8, 64, 8, 3).mean(axis=(1, 3))
    assert np.abs(blocks - image).mean() < 4
    # a large image is not upscaled
    big = np.zeros((600, 800, 3), np.uint8)
    assert overlay_panel(big, np.zeros((600, 800), np.int64), COLORS).shape == (600, 1600, 3)


def test_class_names_are_drawn_inside_their_segments() -> None:
    image, classes, segments = _scene()
    plain = overlay_panel(image, classes, COLORS, None, segments)
    named = overlay_panel(image, classes, COLORS, NAMES, segments)
    np.testing.assert_array_equal(named[:, :512], plain[:, :512])  # the image is untouched
    text = np.any(named[:, 512:] != plain[:, 512:], axis=2)
    assert text.sum() > 100
    up_segments = np.kron(segments, np.ones((8, 8), dtype=np.int64))
    for seg_id in (1, 2, 3):
        inside = text & (up_segments == seg_id)
        assert inside.sum() > 20, seg_id  # each segment has its name written on it
        white = (named[:, 512:] >= 200).all(axis=2) & inside
        assert white.sum() > 5  # light glyphs on their dark box
    # the label box of the ball sits inside the ball's segment
    ys, xs = np.nonzero(text & (up_segments == 3))
    assert 30 * 8 <= ys.mean() < 44 * 8 and 6 * 8 <= xs.mean() < 22 * 8


def test_contours_at_segment_borders_including_touching_instances() -> None:
    image = np.full((32, 32, 3), 100, np.uint8)
    classes = np.full((32, 32), 2, dtype=np.int64)  # two instances of one class, touching
    segments = np.ones((32, 32), dtype=np.int64)
    segments[:, 16:] = 2
    panel = overlay_panel(image, classes, COLORS, None, segments)[:, 512:]
    white = (panel == 255).all(axis=2)
    border = 16 * 16  # the first column of the right instance, once upscaled 16x
    assert white[:, border].all()  # a contour between the two
    assert (white.sum(axis=1) == 2).all()  # 2 px wide
    columns = np.nonzero(white.any(axis=0))[0]
    assert np.abs(columns - border).max() <= 1  # nowhere else


def test_instance_results_get_one_segment_per_drawn_instance() -> None:
    masks = torch.zeros((2, 20, 20), dtype=torch.bool)
    masks[0, 2:10, 2:10] = True
    masks[1, 8:18, 8:18] = True
    result = SegmentationResult(
        instances=InstanceSet(masks, torch.tensor([2, 2]), torch.tensor([0.9, 0.3]))
    )
    seg = segment_map(result, 0.1)
    assert set(np.unique(seg).tolist()) == {0, 1, 2}
    assert (class_map(result, 0.1)[seg > 0] == 2).all()
    panoptic = SegmentationResult(
        panoptic_seg=torch.tensor([[1, 2]], dtype=torch.int32),
        segments=[Segment(1, 0, False), Segment(2, 2, True)],
    )
    assert segment_map(panoptic).tolist() == [[1, 2]]
