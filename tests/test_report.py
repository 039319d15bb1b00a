"""The evaluation report (`m2f-evaluate report=true`): its per-image scores against the metrics
that score the dataset (one image alone, and the images together), its bounded top-K of the worst
images, and the page it writes, loaded in a real browser (Debian's chromium driven by Playwright;
skipped with the reason where either is missing)."""

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.detection import MeanAveragePrecision

from m2f_lightning.cli import builders, commands
from m2f_lightning.cli.commands import evaluate
from m2f_lightning.metrics import PanopticQuality, SemanticIoU
from m2f_lightning.outputs.report import ReportCollector
from m2f_lightning.outputs.report.scores import (
    PanopticTally,
    confusion,
    mask_ap,
    panoptic_match,
    semantic_scores,
)
from m2f_lightning.types import EvalTarget, InstanceSet, Segment, SegmentationResult
from tests.helpers import compose
from tests.test_ddp import TWO_RANKS, _overrides, datasets  # noqa: F401 (fixture)
from tests.test_save_predictions_ddp import NamedOracle

THINGS, STUFFS = [0, 1, 2], [3, 4]


def random_panoptic(rng: np.random.Generator, size: int = 48, segments: int = 7) -> np.ndarray:
    """[H, W, 2] (category, instance) of random overlapping rectangles over void (-1), with a
    large square, so that segments of every COCO size bucket appear at size >= 100."""
    pairs = np.full((size, size, 2), -1, dtype=np.int64)
    for k in range(segments):
        h, w = rng.integers(4, size, 2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        pairs[y : y + h, x : x + w] = (int(rng.integers(0, 6)), k + 1)  # 5: not a category
    return pairs


def perturbed(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A prediction near `gt`: shifted, one category swapped, some pixels relabelled."""
    pred = np.roll(gt, int(rng.integers(0, 5)), axis=int(rng.integers(0, 2))).copy()
    cats = np.unique(pred[..., 0])
    if len(cats):
        pred[pred[..., 0] == rng.choice(cats), 0] = int(rng.integers(0, 5))
    noise = rng.random(pred.shape[:2]) < 0.05
    pred[noise] = (int(rng.integers(0, 5)), 99)
    return pred


@pytest.mark.parametrize("seed", range(12))
def test_per_image_pq_equals_panoptic_quality_on_that_image_alone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = 48 if seed % 2 else 112  # 112: segments above 32² and 96² pixels too
    gt = random_panoptic(rng, size)
    pred = perturbed(rng, gt)
    crowd = np.zeros(gt.shape[:2], dtype=bool)
    if seed % 3 == 0:  # one ground-truth segment marked crowd
        ids = np.unique(gt[..., 1][gt[..., 0] >= 0])
        crowd = gt[..., 1] == ids[0]
    tally = PanopticTally(len(THINGS) + len(STUFFS))
    tally.add(panoptic_match(pred, gt, crowd, THINGS, STUFFS))
    ours = tally.quality()
    metric = PanopticQuality(THINGS, STUFFS)
    metric.update(
        torch.from_numpy(pred)[None], torch.from_numpy(gt)[None], torch.from_numpy(crowd)[None]
    )
    expected = metric.compute()
    assert ours["PQ"] == pytest.approx(100 * float(expected["pq"]), abs=1e-9)
    assert ours["SQ"] == pytest.approx(100 * float(expected["sq"]), abs=1e-9)
    assert ours["RQ"] == pytest.approx(100 * float(expected["rq"]), abs=1e-9)
    assert ours["TP"] == int(metric.true_positives.sum())
    assert ours["FP"] == int(metric.false_positives.sum())
    assert ours["FN"] == int(metric.false_negatives.sum())


def test_size_buckets_partition_the_dataset_counts_and_sum_to_its_pq() -> None:
    rng = np.random.default_rng(0)
    tally = PanopticTally(len(THINGS) + len(STUFFS))
    metric = PanopticQuality(THINGS, STUFFS)
    for _ in range(6):
        gt = random_panoptic(rng, 112, segments=9)
        pred = perturbed(rng, gt)
        tally.add(panoptic_match(pred, gt, None, THINGS, STUFFS))
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
    assert tally.quality()["PQ"] == pytest.approx(100 * float(metric.compute()["pq"]), abs=1e-9)
    buckets = [tally.quality(b) for b in range(3)]
    for key in ("TP", "FP", "FN"):
        assert sum(b[key] for b in buckets) == tally.quality()[key]
    assert sum(b["TP"] + b["FN"] > 0 for b in buckets) >= 2  # more than one size present


@pytest.mark.parametrize("seed", range(6))
def test_semantic_confusion_and_per_image_miou_equal_semantic_iou(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, (20, 24))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(
        rng.random(gt.shape) < 0.7, np.where(gt == 255, 0, gt), rng.integers(0, 5, gt.shape)
    )
    matrix = confusion(pred, gt, num_classes=5)
    metric = SemanticIoU(5)
    metric.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
    assert np.array_equal(matrix[:5, :5], metric.confmat.numpy())
    assert matrix[5].sum() == (gt == 255).sum()  # the ignore row holds the ignored pixels
    ours = semantic_scores(matrix)
    assert ours["mIoU"] == pytest.approx(100 * float(metric.compute()["miou"]), abs=1e-9)
    valid = gt != 255
    assert ours["pixel_acc"] == pytest.approx(100 * (pred[valid] == gt[valid]).mean())


@pytest.mark.parametrize("seed", range(8))
def test_per_image_mask_ap_equals_coco_eval_on_that_image_alone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size, n_gt, n_pred = 40, 5, 8
    gt_masks = np.zeros((n_gt, size, size), dtype=bool)
    for k in range(n_gt):
        y, x = rng.integers(0, size - 8, 2)
        h, w = rng.integers(6, 20, 2)
        gt_masks[k, y : y + h, x : x + w] = True
    gt_labels = rng.integers(0, 3, n_gt)
    crowd = np.zeros(n_gt, dtype=bool)
    if seed % 2:
        crowd[0] = True
    pred_masks = np.roll(gt_masks[rng.integers(0, n_gt, n_pred)], rng.integers(-3, 4), axis=2)
    pred_masks[rng.random(pred_masks.shape) < 0.03] ^= True
    pred_labels = rng.integers(0, 3, n_pred)
    pred_scores = rng.random(n_pred).astype(np.float32)
    ours = mask_ap(pred_masks, pred_scores, pred_labels, gt_masks, gt_labels, crowd)
    coco = MeanAveragePrecision(iou_type="segm", backend="faster_coco_eval")
    coco.update(
        [
            {
                "masks": torch.from_numpy(pred_masks),
                "scores": torch.from_numpy(pred_scores),
                "labels": torch.from_numpy(pred_labels),
            }
        ],
        [
            {
                "masks": torch.from_numpy(gt_masks),
                "labels": torch.from_numpy(gt_labels),
                "iscrowd": torch.from_numpy(crowd).long(),
            }
        ],
    )
    expected = coco.compute()
    # the intersections summed over bands of pixels give the same
    assert (
        mask_ap(pred_masks, pred_scores, pred_labels, gt_masks, gt_labels, crowd, chunk=37) == ours
    )
    assert ours["AP"] == pytest.approx(100 * float(expected["map"]), abs=1e-6)
    assert ours["AP50"] == pytest.approx(100 * float(expected["map_50"]), abs=1e-6)


def _result_and_target(rng: np.random.Generator, image_id: int) -> tuple:
    gt = random_panoptic(rng, 40)
    pred = perturbed(rng, gt)
    seg = np.zeros(pred.shape[:2], dtype=np.int32)
    segments = []
    for k, (c, i) in enumerate(np.unique(pred.reshape(-1, 2), axis=0).tolist()):
        if 0 <= c < 5:
            seg[(pred[..., 0] == c) & (pred[..., 1] == i)] = k + 1
            segments.append(Segment(id=k + 1, category_id=c, isthing=c in THINGS))
    sem_gt = np.where((gt[..., 0] >= 0) & (gt[..., 0] < 5), gt[..., 0], 255)
    sem_pred = np.where((pred[..., 0] >= 0) & (pred[..., 0] < 5), pred[..., 0], 0)
    scores = torch.nn.functional.one_hot(torch.from_numpy(sem_pred), 5).permute(2, 0, 1).float()
    # instances: the thing segments, shifted, with random scores
    keys = [tuple(k) for k in np.unique(gt.reshape(-1, 2), axis=0).tolist() if k[0] in THINGS]
    masks = [(gt[..., 0] == c) & (gt[..., 1] == i) for c, i in keys]
    gt_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, 40, 40), bool))
    gt_labels = torch.tensor([c for c, _ in keys], dtype=torch.int64)
    result = SegmentationResult(
        sem_seg=scores,
        panoptic_seg=torch.from_numpy(seg),
        segments=segments,
        instances=InstanceSet(
            torch.roll(gt_masks, int(rng.integers(0, 6)), dims=2),
            gt_labels,
            torch.from_numpy(rng.random(len(keys)).astype(np.float32)),
        ),
        file_name=f"img{image_id}.png",
        image_id=image_id,
    )
    target = EvalTarget(
        sem_seg=torch.from_numpy(sem_gt),
        panoptic=torch.from_numpy(gt),
        instances=InstanceSet(gt_masks, gt_labels),
    )
    return result, target


def _has_id(html: str, ident: str) -> bool:
    return f"id='{ident}'" in html or f'id="{ident}"' in html


def _collector(worst_k: int = 3) -> ReportCollector:
    names = [f"class {i}" for i in range(5)]
    colors = [(200, 40 * i, 10) for i in range(5)]
    return ReportCollector(
        "panoptic", 5, THINGS, STUFFS, names, colors, worst_k=worst_k, thumb_size=32
    )


def test_worst_images_kept_bounded_and_merged_ranks_equal_one_collector() -> None:
    rng = np.random.default_rng(1)
    items = [_result_and_target(rng, i) for i in range(10)]
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    one = _collector()
    for result, target in items:
        one.update(result, target, image)
    pq = [r["PQ"] for r in one.records]
    assert len(one.records) == 10 and len(one.worst()) == 3
    expected = sorted(range(10), key=lambda i: (pq[i], f"img{i}.png|{i}"))[:3]
    assert [r["image_id"] for r, *_ in one.worst()] == expected
    png, legend = one.worst()[0][1:]
    assert legend and set(legend) <= set(range(5))  # the classes drawn, for the page's legend
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size[1] <= 32  # the thumbnail's long side is bounded
    # two "ranks" with interleaved images, merged, give what one collector gives
    ranks = [_collector(), _collector()]
    for i, (result, target) in enumerate(items):
        ranks[i % 2].update(result, target, image)
    merged = _collector()
    merged.merge([r.state() for r in ranks])
    assert sorted(r["image_id"] for r in merged.records) == list(range(10))
    assert [r["image_id"] for r, *_ in merged.worst()] == expected
    assert np.array_equal(merged.confusion, one.confusion)
    for name in ("tp", "fp", "fn"):
        assert np.array_equal(getattr(merged.tally, name), getattr(one.tally, name)), name
    np.testing.assert_allclose(merged.tally.iou, one.tally.iou, rtol=1e-12)  # summation order


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_semantic_and_instance_reports_rank_by_their_own_score(task: str, tmp_path: Path) -> None:
    from m2f_lightning.outputs.report import write_report

    rng = np.random.default_rng(2)
    names = [f"class {i}" for i in range(5)]
    collector = ReportCollector(
        task, 5, THINGS, STUFFS, names, [(9, 9, 9)] * 5, worst_k=2, thumb_size=32
    )
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    for i in range(4):
        result, target = _result_and_target(rng, i)
        if task == "semantic":
            result.panoptic_seg, result.instances, target.panoptic = None, None, None
        else:
            result.panoptic_seg, result.sem_seg, target.panoptic, target.sem_seg = (None,) * 4
        collector.update(result, target, image)
    key = {"semantic": "mIoU", "instance": "AP"}[task]
    assert collector.rank_by == key
    worst = [r[key] for r, *_ in collector.worst()]
    assert worst == sorted(r[key] for r in collector.records)[:2]
    page = write_report(tmp_path, collector, {key: 12.5}, {"IoU": [1.0, 2.0, 3.0, 4.0, 5.0]})
    html = page.read_text()
    assert _has_id(html, "headline") and html.count("<figure class='worst'>") == 2
    assert _has_id(html, "confusion") == (task == "semantic")
    assert "pq-by-size" not in html


# ---- the command and the page ---------------------------------------------------------------


@pytest.fixture(scope="module")
def report_run(datasets: Path, tmp_path_factory) -> tuple[Path, dict[str, float]]:  # noqa: F811
    """`m2f-evaluate report=true` on the synthetic panoptic set, the model an oracle that returns
    each image's ground truth corrupted (tests/test_ddp.py), so the scores are far from 0 and 100."""
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builders, "Mask2FormerModule", NamedOracle)
        mp.setattr(commands, "load_weights_for", lambda cfg, dm, path: None)
        common = _overrides(datasets, f"checkpoint={__file__}", "report=true", "report_worst_k=3")
        results = evaluate(compose("evaluate", common, out), out)
    return out, results


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


def test_evaluate_report_writes_the_page_and_every_images_scores(
    report_run: tuple[Path, dict[str, float]],
) -> None:
    out, results = report_run
    page = (out / "report.html").read_text()
    rows = _csv_rows(out / "per_image_scores.csv")
    assert sorted(int(r["image_id"]) for r in rows) == [1, 2, 3, 4, 5]
    assert {"PQ", "SQ", "RQ", "mIoU", "pixel_acc", "AP", "AP50"} <= set(rows[0])
    assert 5 < min(float(r["PQ"]) for r in rows) < 95
    # the headline is the evaluation's own numbers
    assert f"<td>{results['PQ']:.2f}</td>" in page and f"<td>{results['mIoU']:.2f}</td>" in page
    for ident in (
        "headline",
        "per-class-PQ",
        "per-class-AP",
        "per-class-IoU",
        "pq-by-size",
        "confusion",
    ):
        assert _has_id(page, ident), ident
    assert page.count("<figure class='worst'>") == 3
    summary = json.loads((out / "eval_metrics.json").read_text())
    assert summary["report"] == str(out / "report.html")
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "https://" not in page and "<script" not in page


@pytest.mark.slow
@pytest.mark.spawns
def test_report_on_two_processes_equals_one_device(
    datasets: Path,  # noqa: F811
    tmp_path: Path,
    report_run: tuple[Path, dict[str, float]],
) -> None:
    one, _ = report_run
    two = tmp_path / "two"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builders, "Mask2FormerModule", NamedOracle)
        mp.setattr(commands, "load_weights_for", lambda cfg, dm, path: None)
        common = _overrides(datasets, f"checkpoint={__file__}", "report=true", "report_worst_k=3")
        evaluate(compose("evaluate", [*common, *TWO_RANKS], two), two)

    def by_id(folder: Path) -> dict[str, dict[str, str]]:
        return {r["image_id"]: r for r in _csv_rows(folder / "per_image_scores.csv")}

    assert by_id(two) == by_id(one)  # each image once, same scores
    worst = [line for line in (two / "report.html").read_text().splitlines() if "worst" in line]
    assert worst == [
        line for line in (one / "report.html").read_text().splitlines() if "worst" in line
    ]


def _browser():
    """(playwright's sync_playwright, chromium path), or skip with the reason (a failure under
    M2F_REQUIRE_BROWSER=1, which .ci/run sets where it installed chromium)."""
    missing = pytest.fail if os.environ.get("M2F_REQUIRE_BROWSER") == "1" else pytest.skip
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright; the dev extra has it)")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing(
            "no chromium on PATH (Debian: apt-get install -y chromium; .ci/run does it as root)"
        )
    return sync_playwright, path


def test_report_page_loads_in_a_browser_without_errors(
    report_run: tuple[Path, dict[str, float]],
) -> None:
    sync_playwright, chromium = _browser()
    out, results = report_run
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto((out / "report.html").resolve().as_uri(), wait_until="load")
            headline = page.locator("#headline tbody tr")
            names = [
                headline.nth(i).locator("td").first.inner_text() for i in range(headline.count())
            ]
            assert {"PQ", "AP", "mIoU"} <= set(names)
            assert page.locator("svg.chart").count() == 4  # PQ, AP, IoU per class; PQ by size
            bars = page.locator("#per-class-PQ rect").count()
            assert bars >= 1
            images = page.locator("img")
            assert images.count() == 1 + 3  # the confusion matrix, the 3 worst images
            widths = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
            )
            assert all(w > 0 for w in widths), widths
            assert page.locator("figure.worst").count() == 3
            assert page.locator("figure.worst .legend .chip").count() >= 3
        finally:
            browser.close()
    assert errors == []
