"""One image's query set from several forwards (windows of a sliding-window pass, or views of
test-time augmentation): each forward's queries on a common grid, the queries that are one object
merged into one.

The grid is the mask logits' resolution of the whole image (1/4 of its size padded to 32: the
"canvas"). A forward's `QuerySet` covers a rectangle of it (its window; a view covers all of it).
Two queries of different forwards are the same object when they predict the same class and
their binary masks (logit > 0) agree on the part of the canvas both forwards see: IoU at least
`merge_iou`, each the other's best match. Merged queries form one query of the image: its mask
logit at a cell is the mean of its members' logits there (over the members whose rectangle holds
the cell), its class probabilities the mean of its members'. A query with no partner is kept as it
is; outside its rectangle its mask logit is `FILL_LOGIT` (probability ~0), so it competes in the
post-processing only where its forward saw the image.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FILL_LOGIT = -20.0  # a mask logit where a forward did not see the image (sigmoid ≈ 2e-9)
CHUNK_BYTES = 32 * 2**20  # mask overlaps are counted a band of rows of about this size at a time


@dataclass
class QuerySet:
    """Queries of one forward: class logits [Q, K+1], mask logits [Q, y1 - y0, x1 - x0] on the
    canvas cells rect = (y0, x0, y1, x1)."""

    mask_cls: torch.Tensor
    mask_logits: torch.Tensor
    rect: tuple[int, int, int, int]


def _labels(mask_cls: torch.Tensor) -> torch.Tensor:
    """Each query's most likely class, no-object excluded."""
    return F.softmax(mask_cls.float(), dim=-1)[:, :-1].argmax(-1)


def _matches(a: QuerySet, b: QuerySet, merge_iou: float) -> list[tuple[int, int]]:
    """(query of a, query of b) pairs that are one object: same class, mutual best IoU of the
    binary masks on the cells both rectangles hold, at least `merge_iou`."""
    y0, x0 = max(a.rect[0], b.rect[0]), max(a.rect[1], b.rect[1])
    y1, x1 = min(a.rect[2], b.rect[2]), min(a.rect[3], b.rect[3])
    if y0 >= y1 or x0 >= x1 or not len(a.mask_cls) or not len(b.mask_cls):
        return []

    def on_overlap(s: QuerySet, top: int, bottom: int) -> torch.Tensor:
        region = s.mask_logits[
            :, top - s.rect[0] : bottom - s.rect[0], x0 - s.rect[1] : x1 - s.rect[1]
        ]
        return (region > 0).flatten(1).float()

    qa, qb = len(a.mask_cls), len(b.mask_cls)
    inter = a.mask_logits.new_zeros((qa, qb))
    area_a, area_b = a.mask_logits.new_zeros(qa), b.mask_logits.new_zeros(qb)
    step = max(1, CHUNK_BYTES // (4 * (qa + qb) * (x1 - x0)))  # rows of binary masks at a time
    for top in range(y0, y1, step):
        ma, mb = on_overlap(a, top, min(top + step, y1)), on_overlap(b, top, min(top + step, y1))
        inter += ma @ mb.T
        area_a += ma.sum(1)
        area_b += mb.sum(1)
    union = area_a[:, None] + area_b[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    iou = torch.where(_labels(a.mask_cls)[:, None] == _labels(b.mask_cls)[None], iou, -1.0)
    best_b, best_a = iou.argmax(1), iou.argmax(0)
    return [
        (i, int(best_b[i]))
        for i in range(qa)
        if int(best_a[best_b[i]]) == i and float(iou[i, best_b[i]]) >= merge_iou
    ]


def merge_query_sets(
    sets: list[QuerySet], canvas: tuple[int, int], merge_iou: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image's query set: class logits [G, K+1] and mask logits [G, *canvas], one query per
    group of merged queries, in the order of each group's first member (sets in order, then
    queries), so that one set covering the canvas comes back as it was."""
    offsets = [0]
    for s in sets:
        offsets.append(offsets[-1] + len(s.mask_cls))
    parent = list(range(offsets[-1]))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            for qa, qb in _matches(sets[i], sets[j], merge_iou):
                ra, rb = root(offsets[i] + qa), root(offsets[j] + qb)
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[tuple[int, int]]] = {}
    for si, s in enumerate(sets):
        for q in range(len(s.mask_cls)):
            members.setdefault(root(offsets[si] + q), []).append((si, q))
    ref = sets[0].mask_logits
    num_logits = sets[0].mask_cls.shape[-1]
    out_cls = torch.empty((len(members), num_logits), device=ref.device)
    out_masks = torch.full((len(members), *canvas), FILL_LOGIT, device=ref.device)
    for g, group in enumerate(members.values()):
        if len(group) == 1:
            (si, q) = group[0]
            y0, x0, y1, x1 = sets[si].rect
            out_cls[g] = sets[si].mask_cls[q].float()
            out_masks[g, y0:y1, x0:x1] = sets[si].mask_logits[q].float()
            continue
        total = torch.zeros(canvas, device=ref.device)
        count = torch.zeros(canvas, device=ref.device)
        probs = torch.zeros(num_logits, device=ref.device)
        for si, q in group:
            y0, x0, y1, x1 = sets[si].rect
            total[y0:y1, x0:x1] += sets[si].mask_logits[q].float()
            count[y0:y1, x0:x1] += 1
            probs += F.softmax(sets[si].mask_cls[q].float(), dim=-1)
        out_masks[g] = torch.where(count > 0, total / count.clamp(min=1), FILL_LOGIT)
        out_cls[g] = (probs / len(group)).clamp(min=1e-30).log()  # softmax → the mean probs
    return out_cls, out_masks


def to_canvas(
    x: torch.Tensor,
    view_size: tuple[int, int],
    image_size: tuple[int, int],
    canvas: tuple[int, int],
    flipped: bool,
) -> torch.Tensor:
    """Maps [N, h', w'] at 1/4 of a view of the image (the image resized to `view_size`, maybe
    flipped left-right, padded) onto the image's canvas [N, *canvas] (1/4 of the image padded),
    bilinear: a canvas cell's centre is mapped to the view and sampled there."""
    if tuple(view_size) == tuple(image_size) and not flipped and tuple(x.shape[-2:]) == canvas:
        return x
    (vh, vw), (h, w) = view_size, image_size
    ys = (torch.arange(canvas[0], device=x.device, dtype=torch.float64) + 0.5) * 4 * vh / h
    xs = (torch.arange(canvas[1], device=x.device, dtype=torch.float64) + 0.5) * 4 * vw / w
    if flipped:
        xs = vw - xs
    # grid_sample (align_corners=False): u = -1 is the cells' left edge, +1 their right edge
    gy = (ys / (2 * x.shape[-2]) - 1).float()
    gx = (xs / (2 * x.shape[-1]) - 1).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    out = F.grid_sample(
        x[None].float(), grid[None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0]
