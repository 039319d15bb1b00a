"""Cityscapes instance training from `*_gtFine_polygons.json`, as detectron2's Cityscapes loader
(`load_cityscapes_instances(from_json=True)`) and the official instance mapper do.

The official loader walks the JSON's objects last to first (cityscapesScripts draws them in
order, a later polygon over an earlier one), skips `deleted` objects and labels of id < 0
(license plate), shifts the integer coordinates by +0.5 and dilates each polygon by 0.5 px
(shapely `buffer(0.5)`: pycocotools then fills what cityscapesScripts' PIL drawing fills), and
keeps of each object what later ones do not cover, as exterior boundaries only (holes dropped).
Labels with instances that are evaluated (`hasInstances and not ignoreInEval`: the 8 things)
become annotations, `<label>group` ones as crowd; all others only cover. The mapper moves the
polygons with the augmentation and rasterises them at the output size with pycocotools.

Here the same happens without shapely, in raster form after the augmentation
(`layer_masks`): each dilated polygon (the polygon, a 2r-wide rectangle along each edge and a
16-gon of radius r at each vertex, the pieces of shapely's round buffer) is moved with the
augmentation and rasterised by pycocotools; the objects are taken topmost first, each keeping
the pixels no higher one covers, with its holes filled; an object no pixel of which is left at
the original size is no annotation (detectron2 skips an empty difference). Where this can differ
from rasterising the official shapely polygons, all at the level of single boundary pixels:
- pixels whose sample point lies within pycocotools' 1/5-pixel grid of a boundary that the
  union / difference creates (shapely computes those boundaries exactly, we per pixel);
- the arcs of the dilation: 16-gons at fixed angles, shapely's arcs start at the edge normals
  (both inscribed in the same circle, < 0.01 px apart);
- the crop: detectron2 intersects each polygon with the crop box (shapely, after `buffer(0)`,
  which also drops invalid polygons); here the moved polygon is rasterised and pycocotools clips
  it at the image border;
- holes: shapely drops interior rings; `binary_fill_holes` fills 4-connected background, so a
  hole meeting the outside only at a pixel corner is filled here;
- self-intersecting polygons: pycocotools fills by crossing parity, shapely's buffer by union;
- the filter of images without instances reads the file's objects, so an image whose every
  instance lies wholly under later polygons is kept (with no target), where detectron2 drops it.
"""

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy.ndimage import binary_fill_holes

from ..io import DataError
from ..transforms.geometric import map_points

DILATION = 0.5  # px of the original image, as detectron2's buffer(0.5)
_CIRCLE = np.stack(
    [np.cos(np.arange(16) * np.pi / 8), np.sin(np.arange(16) * np.pi / 8)], axis=1
)  # shapely's buffer resolution 4: 4 segments per quarter circle

OCCLUDER = -1  # the layer of a label without instances: it only covers


def read_layers(
    json_file: Path, instance_label_ids: set[int]
) -> tuple[list[tuple[np.ndarray, int]], list[tuple[int, bool]], tuple[int, int]]:
    """The drawn polygons of one `*_gtFine_polygons.json`, topmost (last in the file) first.

    Returns (layers, annotations, (height, width)): layers are (polygon [K, 2] in pixel
    coordinates, +0.5 as detectron2 shifts them; annotation index or OCCLUDER); annotations
    are (Cityscapes label id, crowd) of the objects of `instance_label_ids`."""
    from cityscapesscripts.helpers.labels import name2label

    try:
        data = json.loads(Path(json_file).read_text())
        objects, height, width = data["objects"], int(data["imgHeight"]), int(data["imgWidth"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{json_file}: not a Cityscapes polygon file ({err})") from None
    layers: list[tuple[np.ndarray, int]] = []
    annotations: list[tuple[int, bool]] = []
    for obj in reversed(objects):
        if "deleted" in obj:
            continue
        name = str(obj.get("label"))
        crowd = name not in name2label and name.endswith("group")
        label = name2label.get(name[: -len("group")] if crowd else name)
        if label is None:
            raise DataError(f"{json_file}: unknown Cityscapes label '{name}'")
        if label.id < 0:
            continue
        try:
            polygon = np.asarray(obj["polygon"], dtype=np.float32).reshape(-1, 2) + 0.5
        except (KeyError, ValueError, TypeError) as err:
            raise DataError(f"{json_file}: object '{name}' has no valid polygon ({err})") from None
        if label.id in instance_label_ids:
            layers.append((polygon.astype(np.float64), len(annotations)))
            annotations.append((label.id, crowd))
        else:
            layers.append((polygon.astype(np.float64), OCCLUDER))
    return layers, annotations, (height, width)


def has_instance(json_file: Path, instance_label_ids: set[int]) -> bool:
    """Whether the file has a non-crowd object of `instance_label_ids` (what detectron2's
    FILTER_EMPTY_ANNOTATIONS asks of a training image)."""
    _, annotations, _ = read_layers(json_file, instance_label_ids)
    return any(not crowd for _, crowd in annotations)


def _dilated_pieces(
    polygon: np.ndarray, radius: float, applied: list, in_hw: tuple[int, int]
) -> list[list[float]]:
    """The polygon and the pieces whose union is its round buffer by `radius` (a rectangle
    along each edge, a 16-gon at each vertex), moved by the augmentation `applied`, as
    pycocotools' flat [x0, y0, x1, y1, ...] lists."""
    ends = np.roll(polygon, -1, axis=0)
    edges = ends - polygon
    length = np.hypot(edges[:, 0], edges[:, 1])
    keep = length > 0
    normal = np.stack([-edges[keep, 1], edges[keep, 0]], axis=1) / length[keep, None] * radius
    start, end = polygon[keep], ends[keep]
    rects = np.stack([start + normal, end + normal, end - normal, start - normal], axis=1)
    discs = polygon[:, None, :] + radius * _CIRCLE[None]
    points = np.concatenate([polygon, rects.reshape(-1, 2), discs.reshape(-1, 2)])
    moved = map_points(points, applied, in_hw)
    count = len(polygon)
    pieces = [moved[:count].reshape(-1).tolist()] if count >= 3 else []
    rest = moved[count:].reshape(-1)
    pieces += rest[: rects.size].reshape(len(rects), 8).tolist()
    pieces += rest[rects.size :].reshape(len(discs), 32).tolist()
    return pieces


def layer_masks(
    layers: list[tuple[np.ndarray, int]],
    count: int,
    applied: list,
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """The `count` annotation masks (uint8 [count, H', W']) of `layers` (topmost first, see
    `read_layers`) after the augmentation `applied` (`applied_transforms`) took the image from
    `in_hw` to `out_hw`: dilated, moved, rasterised by pycocotools, each object keeping what
    higher ones leave, holes filled."""
    out_h, out_w = out_hw
    # column-major, as pycocotools decodes: (W, H) arrays, transposed once at the end (mixing
    # the orders makes every full-image operation ~30x slower)
    masks = np.zeros((count, out_w, out_h), dtype=np.uint8)
    covered = np.zeros((out_w, out_h), dtype=bool)
    # what lies below the lowest annotation covers none of them (the roads, buildings and sky
    # drawn first): not rasterised
    last = max((k for k, (_, index) in enumerate(layers) if index != OCCLUDER), default=-1)
    for polygon, index in layers[: last + 1]:
        pieces = _dilated_pieces(polygon, DILATION, applied, in_hw)
        if not pieces:  # an object without points covers nothing
            continue
        drawn = mask_utils.decode(_union(mask_utils.frPyObjects(pieces, out_h, out_w)))
        drawn = drawn.T.astype(bool)
        if index != OCCLUDER:
            masks[index] = _fill_holes(drawn & ~covered)
        covered |= drawn
    return np.ascontiguousarray(masks.transpose(0, 2, 1))


def _union(rles: list[dict]) -> dict:
    """pycocotools' union of many RLEs, in groups (one merge of thousands is ~20x slower)."""
    while len(rles) > 1:
        rles = [mask_utils.merge(rles[i : i + 32]) for i in range(0, len(rles), 32)]
    return rles[0]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled (exterior boundaries only), within its bounding box."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return mask
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    out = mask.copy()
    out[box] = binary_fill_holes(mask[box])
    return out
