"""Edges of sliding-window inference, test-time augmentation and query-set merging, written from
the mutants of `inference/tiling.py` and `inference/merging.py` that survived the tests of
tests/test_tiling.py (SURVIVORS_B_TRIAGE.md says which test kills which).

The stand-in networks here make every expected value computable by hand: `CellNet`'s one query
has a mask logit that is a function of each 1/4 cell's pixels and a class logit read from the
top-left pixel of its input (the one piece of context it sees), so the semantic scores of each
window and view, and their averages, are known in closed form.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from m2f_lightning.inference import (
    InferenceSettings,
    merge_query_sets,
    merging,
    predict_tiled,
    tiling,
)
from m2f_lightning.inference.merging import FILL_LOGIT, QuerySet, to_canvas
from m2f_lightning.inference.tiling import _kept

# deprecated implicit arguments (softmax dim, meshgrid indexing, grid_sample align_corners)
# warn: the code under test must not rely on them; a hang (a broken union-find) fails in time
pytestmark = [pytest.mark.filterwarnings("error::UserWarning"), pytest.mark.timeout(20)]


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


class CellNet(torch.nn.Module):
    """One query, one class (+ no-object): mask logit of a 1/4 cell = (mean of channel 0 over
    the cell - 100) / 20; class logits [channel 1 of the input's top-left pixel / 64, 0]. So
    its semantic score at a cell is sigmoid(class logit) * sigmoid(mask logit). Records each
    call's input size, the valid sizes it was given, and its input."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, int], list | None]] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor, image_sizes=None) -> dict:
        sizes = None if image_sizes is None else [tuple(int(v) for v in s) for s in image_sizes]
        self.calls.append((tuple(images.shape[-2:]), sizes))
        self.inputs.append(images.detach().float().clone())
        x = images.float()
        c = x[:, 1, 0, 0] / 64
        return {
            "pred_logits": torch.stack([c, torch.zeros_like(c)], -1)[:, None],
            "pred_masks": (F.avg_pool2d(x[:, :1], 4) - 100) / 20,
            "image_size": tuple(images.shape[-2:]),
            "padded_size": tuple(images.shape[-2:]),
        }


class FixedNet(torch.nn.Module):
    """The same class logits for every input; mask logit +5 everywhere."""

    def __init__(self, mask_cls: torch.Tensor) -> None:
        super().__init__()
        self.mask_cls = mask_cls

    def forward(self, images: torch.Tensor, image_sizes=None) -> dict:
        b, _, h, w = images.shape
        q = len(self.mask_cls)
        return {
            "pred_logits": self.mask_cls.expand(b, -1, -1),
            "pred_masks": torch.full((b, q, h // 4, w // 4), 5.0),
            "image_size": (h, w),
            "padded_size": (h, w),
        }


def padded_batch(img: torch.Tensor) -> torch.Tensor:
    """uint8 [3, h, w] → [1, 3, h, w] padded to multiples of 32 (as the data pipeline does)."""
    h, w = img.shape[-2:]
    out = torch.zeros(1, 3, -(-h // 32) * 32, -(-w // 32) * 32, dtype=torch.uint8)
    out[0, :, :h, :w] = img
    return out


def run(net, img, task, settings, things=(0,), original=None):
    size = tuple(img.shape[-2:])
    return predict_tiled(net, padded_batch(img), [size], [original or size], task, things, settings)


# --- test-time augmentation: views resized, flipped back and averaged -------------------------


def test_flip_tta_averages_both_views_on_the_canvas_of_an_odd_sized_image() -> None:
    """Image 132 x 164 (padded 160 x 192: canvas 40 x 48 cells, 33 x 41 of them the image's).
    Mask logits rise along x (cell column j: (6j - 100) / 20); the unflipped view's top-left
    pixel gives class logit 0, the flipped view's (the image's top-right) 200/64. Each view's
    scores, unflipped, are sigmoid(class) * sigmoid(mask) at the same cell: their mean is
    (sigmoid(0) + sigmoid(3.125)) / 2 * sigmoid(mask)."""
    h, w = 132, 164
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0] = (6 * (torch.arange(w) // 4)).to(torch.uint8)[None]
    img[1, 0, w - 1] = 200
    net = CellNet()
    s = InferenceSettings(tta=True, tta_scales=[1.0], tta_flip=True)
    result = run(net, img, "semantic", s)[0]
    # each view is one forward of the padded image, told the image's valid size
    assert net.calls == [((160, 192), [(h, w)])] * 2
    assert result.sem_seg.shape == (1, h, w)
    scores = result.sem_seg.scores
    assert scores.shape == (1, 40, 48)
    p = (sigmoid(0.0) + sigmoid(200 / 64)) / 2
    want = torch.tensor([[p * sigmoid((6 * j - 100) / 20) for j in range(41)]] * 33)
    torch.testing.assert_close(scores[0, :33, :41], want, atol=1e-5, rtol=0)


def test_views_are_the_image_resized_bilinearly_antialiased_only_when_shrinking() -> None:
    """A one-pixel-wide vertical line of 16 at column 21 of an 8 x 64 image. Shrunk by 0.5 with
    the antialiasing (triangle) filter: output column i weighs input columns 2i-1..2i+2 by
    1/8, 3/8, 3/8, 1/8, so columns 9, 10, 11 read 0, 6, 2 (plain bilinear would give 0, 8, 0).
    Enlarged by 2 (bilinear, align_corners=False): column j samples input (j + 0.5) / 2 - 0.5,
    so columns 41..44 read 4, 12, 12, 4."""
    img = torch.zeros(3, 8, 64, dtype=torch.uint8)
    img[:, :, 21] = 16
    net = CellNet()
    run(net, img, "semantic", InferenceSettings(tta=True, tta_scales=[0.5], tta_flip=False))
    assert net.calls == [((32, 32), [(4, 32)])]
    torch.testing.assert_close(
        net.inputs[0][0, :, :4, 9:12], torch.tensor([0.0, 6.0, 2.0]).expand(3, 4, 3)
    )
    net = CellNet()
    run(net, img, "semantic", InferenceSettings(tta=True, tta_scales=[2.0], tta_flip=False))
    assert net.calls == [((32, 128), [(16, 128)])]
    torch.testing.assert_close(
        net.inputs[0][0, :, :16, 41:45], torch.tensor([4.0, 12.0, 12.0, 4.0]).expand(3, 16, 4)
    )
    # a view is at least one pixel: one row shrunk by 0.5 stays one row
    net = CellNet()
    run(net, img[:, :1], "semantic", InferenceSettings(tta=True, tta_scales=[0.5], tta_flip=False))
    assert net.calls == [((32, 32), [(1, 32)])]


# --- sliding windows --------------------------------------------------------------------------


def test_sliding_windows_average_scores_where_they_overlap_and_see_only_the_image() -> None:
    """Image 60 x 92 (padded 64 x 96), windows 32 x 64 at stride 32: rows from 0 and 32,
    columns from 0 and 32. Channel 0 is 100 (mask logit 0: sigmoid 1/2); channel 1 at each
    window's top-left pixel gives that window's class logit (0, 1, 2, 3). A cell's score is
    1/2 x the mean of sigmoid(class logit) over the windows that hold it: cell rows 0-7 are the
    top windows', 8-15 the bottom ones'; cell columns 0-7 the left windows', 8-15 both, 16-23
    the right windows'. Each window is told how much of it is image."""
    h, w = 60, 92
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0] = 100
    logit = {(0, 0): 0.0, (0, 32): 1.0, (32, 0): 2.0, (32, 32): 3.0}
    for (y, x), v in logit.items():
        img[1, y, x] = int(v * 64)
    s = InferenceSettings(mode="sliding", window=(32, 64), stride=(32, 32))
    net = CellNet()
    result = run(net, img, "semantic", s)[0]
    assert net.calls == [
        ((32, 64), [(32, 64)]),
        ((32, 64), [(32, 60)]),
        ((32, 64), [(28, 64)]),
        ((32, 64), [(28, 60)]),
    ]
    want = torch.zeros(15, 23)
    for i in range(15):
        for j in range(23):
            ys = [0] if i < 8 else [32]
            xs = [0] if j < 8 else [0, 32] if j < 16 else [32]
            p = [sigmoid(logit[(y, x)]) for y in ys for x in xs]
            want[i, j] = 0.5 * sum(p) / len(p)
    torch.testing.assert_close(result.sem_seg.scores[0, :15, :23], want, atol=1e-6, rtol=0)
    # each task gets what it asks for, and only that
    assert result.panoptic_seg is None and result.instances is None
    result = run(CellNet(), img, "instance", s, things=())[0]
    assert result.sem_seg is None and result.panoptic_seg is None
    assert result.instances is not None
    result = run(CellNet(), img, "panoptic", s)[0]
    assert result.sem_seg is not None and result.panoptic_seg is not None
    assert result.instances is not None


def test_a_window_taller_than_the_image_is_wide_keeps_its_height() -> None:
    """Window 64 x 32 on an image 60 x 28 (padded 64 x 32): one window, the whole image."""
    net = CellNet()
    img = torch.zeros(3, 60, 28, dtype=torch.uint8)
    run(net, img, "semantic", InferenceSettings(mode="sliding", window=(64, 32), stride=32))
    assert net.calls == [((64, 32), [(60, 28)])]


def test_whole_mode_makes_one_forward_of_an_image_wider_than_the_default_window() -> None:
    net = CellNet()
    img = torch.zeros(3, 8, 600, dtype=torch.uint8)
    run(net, img, "semantic", InferenceSettings(tta=True, tta_scales=[1.0], tta_flip=True))
    assert net.calls == [((32, 608), [(8, 600)])] * 2


def test_plain_settings_pass_the_image_sizes_and_the_settings_through() -> None:
    """One forward told the valid sizes; the post-processing under the caller's settings (a
    class score of 1/2 is a segment at threshold 0, none at the default 0.8)."""
    img = torch.zeros(3, 40, 40, dtype=torch.uint8)
    img[0] = 200  # mask logit 5 everywhere
    net = CellNet()
    result = run(net, img, "panoptic", InferenceSettings(object_mask_threshold=0.0))[0]
    assert net.calls == [((64, 64), [(40, 40)])]
    assert [(seg.category_id, seg.isthing) for seg in result.segments] == [(0, True)]
    assert run(CellNet(), img, "panoptic", InferenceSettings())[0].segments == []


def test_more_images_than_sizes_is_refused() -> None:
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    s = InferenceSettings(tta=True, tta_flip=True)
    with pytest.raises(ValueError):
        predict_tiled(CellNet(), images, [(32, 32)], [(32, 32)], "semantic", (), s)


# --- which queries a window keeps ----------------------------------------------------------


def log_probs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows).log()


# classes 0 (thing), 1 (stuff), then no-object
FOUR = log_probs(
    [0.90, 0.05, 0.05],  # a thing above the 0.8 threshold
    [0.02, 0.03, 0.95],  # no-object
    [0.30, 0.60, 0.10],  # stuff below the threshold
    [0.05, 0.85, 0.10],  # stuff above it
)


def test_kept_queries_are_those_above_the_threshold_and_the_top_k_pairs() -> None:
    s = InferenceSettings(topk=1)
    assert _kept(FOUR, "panoptic", [0], s).tolist() == [0, 3]
    # a score equal to the threshold is not above it
    at = float(F.softmax(FOUR, dim=-1)[3].max())
    assert _kept(FOUR, "panoptic", [0], InferenceSettings(topk=1, object_mask_threshold=at)).tolist() == [0]  # fmt: skip
    # panoptic top-k pairs count things only; instance top-k pairs any class, no threshold
    high = InferenceSettings(topk=1, object_mask_threshold=0.99)
    assert _kept(FOUR[1:], "panoptic", [0], high).tolist() == []
    assert _kept(FOUR[1:], "instance", [0], high).tolist() == [2]
    assert _kept(FOUR, "instance", [0], s).tolist() == [0]


@pytest.mark.parametrize(
    "mask_cls,kept",
    [
        (FOUR, 2),  # the thing and the stuff above the threshold (top-1 is the thing)
        (log_probs([0.5, 0.2, 0.3], [0.3, 0.6, 0.1]), 0),  # top-1 is stuff below: none
    ],
)
def test_a_window_hands_only_its_kept_queries_to_the_merge(mask_cls, kept, monkeypatch) -> None:
    seen = []

    def spy(sets, canvas, merge_iou):
        seen.append([len(s.mask_cls) for s in sets])
        return merge_query_sets(sets, canvas, merge_iou)

    monkeypatch.setattr(tiling, "merge_query_sets", spy)
    s = InferenceSettings(topk=1, tta=True, tta_flip=True)
    predict_tiled(FixedNet(mask_cls), torch.zeros(1, 3, 32, 32), [(32, 32)], [(32, 32)], "panoptic", [0], s)  # fmt: skip
    assert seen[0] == [kept]


# --- merging query sets ---------------------------------------------------------------------

CLS = torch.tensor([[9.0, 0.0, 0.0]])  # class 0


def merged_count(a: list[float], b: list[float], merge_iou: float) -> int:
    """Queries after merging two one-query sets of class 0 over the same 1 x n canvas."""
    n = len(a)
    sets = [QuerySet(CLS, torch.tensor([[a]]), (0, 0, 1, n)), QuerySet(CLS, torch.tensor([[b]]), (0, 0, 1, n))]  # fmt: skip
    return len(merge_query_sets(sets, (1, n), merge_iou)[0])


@pytest.mark.parametrize(
    "a,b,merge_iou,count",
    [
        ([5.0, 0.0, 0.0, 0.0], [5.0, -5.0, -5.0, -5.0], 1.0, 1),  # logit 0 is background
        ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], 1.0, 1),  # any positive logit is fg
        ([5.0, -5.0, -5.0, -5.0], [5.0, -5.0, -5.0, -5.0], 1.0, 1),  # one shared cell: IoU 1
        ([5.0, 5.0, -5.0, -5.0], [5.0, -5.0, -5.0, -5.0], 0.5, 1),  # IoU 1/2 at 1/2 merges
        ([5.0, 5.0, -5.0, -5.0], [5.0, -5.0, -5.0, -5.0], 0.6, 2),  # IoU 1/2 below 0.6
    ],
)
def test_two_queries_merge_when_their_binary_masks_iou_reaches_the_threshold(
    a, b, merge_iou, count
) -> None:
    assert merged_count(a, b, merge_iou) == count


def test_iou_counts_every_row_when_counted_row_by_row(monkeypatch) -> None:
    """Masks that agree on the first row only: IoU 2/4, below 0.6, counted a row at a time."""
    monkeypatch.setattr(merging, "CHUNK_BYTES", 1)
    a = torch.tensor([[[5.0, 5.0], [5.0, 5.0]]])
    b = torch.tensor([[[5.0, 5.0], [-5.0, -5.0]]])
    sets = [QuerySet(CLS, a, (0, 0, 2, 2)), QuerySet(CLS, b, (0, 0, 2, 2))]
    assert len(merge_query_sets(sets, (2, 2), 0.6)[0]) == 2
    assert len(merge_query_sets(sets, (2, 2), 0.5)[0]) == 1


def test_an_empty_query_set_beside_a_full_one_leaves_it_as_it_is() -> None:
    one = QuerySet(CLS, torch.tensor([[[5.0, -5.0, 5.0]]]), (0, 1, 1, 4))
    empty = QuerySet(torch.zeros(0, 3), torch.zeros(0, 1, 4), (0, 0, 1, 4))
    out_cls, out_masks = merge_query_sets([empty, one], (1, 4), 0.5)
    assert torch.equal(out_cls, CLS)
    assert out_masks.tolist() == [[[FILL_LOGIT, 5.0, -5.0, 5.0]]]


def test_a_merged_query_has_the_mean_class_probabilities_and_mean_logits() -> None:
    """Two views' queries of one object (class 0 most likely in both): probabilities
    (0.6, 0.3, 0.1) and (0.8, 0.1, 0.1) average to (0.7, 0.2, 0.1)."""
    a = QuerySet(log_probs([0.6, 0.3, 0.1]), torch.tensor([[[4.0, 2.0, -1.0]]]), (0, 0, 1, 3))
    b = QuerySet(log_probs([0.8, 0.1, 0.1]), torch.tensor([[[2.0, 6.0, -3.0]]]), (0, 0, 1, 3))
    out_cls, out_masks = merge_query_sets([a, b], (1, 3), 0.5)
    torch.testing.assert_close(F.softmax(out_cls, -1), torch.tensor([[0.7, 0.2, 0.1]]))
    torch.testing.assert_close(out_masks, torch.tensor([[[3.0, 4.0, -2.0]]]))


# --- views onto the canvas -----------------------------------------------------------------

RAMP = (10 * torch.arange(4.0)[:, None] + torch.arange(4.0)[None])[None]  # x[i, j] = 10i + j


def test_to_canvas_samples_each_cell_centre_in_the_view() -> None:
    """A view twice the image's size: canvas cell centres (0.5, 1.5) x 4 = image pixels 2, 6
    map to view pixels 4 and 12, i.e. view cell indices 0.5 and 2.5 (cell k's centre is pixel
    4k + 2; bilinear reads a ramp exactly); flipped, view pixels 16 - 4 and 16 - 12: the
    columns swap; an exact flip at the same size is a mirror."""
    got = to_canvas(RAMP, (16, 16), (8, 8), (2, 2), False)
    assert got.tolist() == [[[5.5, 7.5], [25.5, 27.5]]]
    got = to_canvas(RAMP, (16, 16), (8, 8), (2, 2), True)
    assert got.tolist() == [[[7.5, 5.5], [27.5, 25.5]]]
    x = RAMP[:, :2, :2]
    assert torch.equal(to_canvas(x, (8, 8), (8, 8), (2, 2), True), x.flip(-1))


def test_to_canvas_extends_the_view_edge_beyond_it() -> None:
    """A view half the image's size: canvas cells beyond the view's cells read its edge."""
    got = to_canvas(torch.ones(1, 2, 2), (4, 4), (8, 8), (4, 4), False)
    assert torch.equal(got, torch.ones(1, 4, 4))
