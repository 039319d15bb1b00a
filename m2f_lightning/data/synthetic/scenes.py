"""Learnable synthetic scenes: a sky and a textured ground split by a wavy horizon, with coloured
shapes (one colour per class) on top; later shapes occlude earlier ones.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle")


THING_COLOURS = {"circle": (220, 40, 40), "square": (40, 190, 60), "triangle": (150, 50, 200)}
SKY, GROUND = (110, 160, 230), (120, 100, 60)


# catalog names standing in for (sky, ground, circle, square, triangle) in each real format
CLASSES = {
    "coco": ("sky-other-merged", "grass-merged", "sports ball", "tv", "kite"),
    "ade20k": ("sky", "grass", "ball", "box", "flag"),
    "cityscapes": ("sky", "road", "car", "person", "bicycle"),
    "mapillary_vistas": ("Sky", "Road", "Car", "Person", "Bicycle"),
    "synthetic": ("sky", "ground", "circle", "square", "triangle"),
}


@dataclass
class Scene:
    """Pixels and ground truth of one scene; `roles` index (sky, ground, circle, square, triangle)."""

    image: np.ndarray
    segment_map: np.ndarray  # 0 = void, 1 = sky, 2 = ground, 3.. = things
    segments: list[dict] = field(default_factory=list)  # {id, role, iscrowd}
    # every region as drawn, in order (later over earlier): (segment id, its whole mask); ids of
    # things that became void are not in `segments`. For the polygon formats (Cityscapes JSON)
    drawn: list[tuple[int, np.ndarray]] = field(default_factory=list)


def _shape_mask(
    shape: str, h: int, w: int, cy: float, cx: float, size: float, angle: float
) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    if shape == "circle":
        cv2.circle(mask, (int(cx), int(cy)), int(size / 2), 1, -1)
        return mask.astype(bool)
    if shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * size / 2
    else:
        pts = np.array([[0, -1], [0.87, 0.5], [-0.87, 0.5]], dtype=np.float64) * size / 2
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T + [cx, cy]
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def draw_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    crowd_prob: float = 0.0,
    num_shapes: tuple[int, int] = (2, 5),
) -> Scene:
    """One scene with `num_shapes` (inclusive range) things drawn; sizes scale with the image
    (12–48 px shapes at 128 px). Things mostly hidden by later ones become void."""
    scale = min(height, width) / 128
    yy, xx = np.mgrid[0:height, 0:width]
    horizon = height * rng.uniform(0.3, 0.6) + height * 0.05 * np.sin(
        xx[0] / width * 2 * np.pi * rng.uniform(0.5, 2) + rng.uniform(0, 6)
    )
    is_sky = yy < horizon[None, :]
    image = np.zeros((height, width, 3), dtype=np.float64)
    sky = np.array(SKY) + rng.uniform(-20, 20, 3)
    ground = np.array(GROUND) + rng.uniform(-20, 20, 3)
    gradient = (yy / height)[..., None] * 40
    texture = cv2.GaussianBlur(rng.normal(0, 25, (height, width)), (0, 0), 2 * scale)[..., None]
    image[:] = np.where(is_sky[..., None], sky + gradient, ground + texture)
    segment_map = np.where(is_sky, 1, 2).astype(np.int32)
    segments = [{"id": 1, "role": 0, "iscrowd": False}, {"id": 2, "role": 1, "iscrowd": False}]
    drawn = [(1, is_sky), (2, ~is_sky)]
    full_areas = {}
    for k in range(int(rng.integers(num_shapes[0], num_shapes[1] + 1))):
        role = int(rng.integers(0, 3))
        size = rng.uniform(12, 48) * scale
        mask = _shape_mask(
            SHAPES[role],
            height,
            width,
            rng.uniform(0, height),
            rng.uniform(0, width),
            size,
            rng.uniform(0, np.pi),
        )
        if not mask.any():
            continue
        colour = np.array(THING_COLOURS[SHAPES[role]]) + rng.uniform(-25, 25, 3)
        image[mask] = colour
        seg_id = 3 + k
        segment_map[mask] = seg_id
        drawn.append((seg_id, mask))
        full_areas[seg_id] = int(mask.sum())
        segments.append(
            {"id": seg_id, "role": 2 + role, "iscrowd": bool(rng.random() < crowd_prob)}
        )
    image += rng.normal(0, 4, image.shape)
    kept = []
    for seg in segments:
        visible = int((segment_map == seg["id"]).sum())
        if seg["id"] >= 3 and (visible < 16 or visible < 0.25 * full_areas[seg["id"]]):
            segment_map[segment_map == seg["id"]] = 0  # a tiny fragment becomes void
            continue
        if visible:
            kept.append(seg)
    return Scene(np.clip(image, 0, 255).astype(np.uint8), segment_map, kept, drawn)
