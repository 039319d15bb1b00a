"""Predictions the official evaluators read as they are written, judged by those evaluators:
panopticapi's `pq_compute` (the COCO panoptic server's code), pycocotools' `COCO.loadRes` +
`COCOeval` (the COCO detection server's) and cityscapesScripts' pixel-level evaluation give
what `m2f-evaluate` reports; an images-only test split gets a complete results file.

panopticapi is not on PyPI under its own name; `panopticapi-lite` packages its code
(`pip install --no-deps panopticapi-lite`: its numpy<2 pin is not needed)."""

import contextlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from m2f_lightning.cli.commands import evaluate, predict, train
from m2f_lightning.data.synthetic import write_dataset
from tests.helpers import TINY_OVERRIDES, compose

pytestmark = pytest.mark.slow  # each trains a tiny model for a few steps first

AUG = {
    "coco": "dataset.train_aug={recipe: lsj, size: 128}",
    "cityscapes": "dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 128]}",
}


def _overrides(root: Path, dataset: str, task: str, *extra: str) -> list[str]:
    return [
        f"task={task}",
        f"dataset={dataset}",
        *TINY_OVERRIDES,
        f"paths.datasets_dir={root}",
        AUG[dataset],
        "inference.object_mask_threshold=0.0",  # a briefly trained model still keeps segments
        *extra,
    ]


def _trained(tmp: Path, fmt: str, dataset: str, task: str, steps: int = 40) -> tuple[Path, Path]:
    """(datasets root, checkpoint) of a tiny model trained a few steps on synthetic `fmt`, at a
    high learning rate so that its predictions are not trivial (metrics > 0)."""
    root = tmp / "datasets"
    write_dataset(fmt, root, num=4, num_val=3, seed=3)
    common = _overrides(root, dataset, task)
    cfg = compose(
        "train",
        [
            *common,
            f"dataset.max_steps={steps}",
            "optimizer.lr=1e-3",
            "dataset.val_every_n_steps=0",
            "test_after_training=false",
        ],
        tmp / "train",
    )
    train(cfg, tmp / "train")
    return root, tmp / "train" / "checkpoints" / "last.ckpt"


def _evaluate(tmp: Path, root: Path, ckpt: Path, dataset: str, task: str) -> dict[str, float]:
    cfg = compose(
        "evaluate",
        [*_overrides(root, dataset, task), f"checkpoint={ckpt}", "save_predictions=true"],
        tmp / "eval",
    )
    return evaluate(cfg, tmp / "eval")


def _predict(tmp: Path, root: Path, ckpt: Path, dataset: str, task: str, split: str) -> Path:
    out = tmp / f"pred_{split}"
    cfg = compose(
        "predict", [*_overrides(root, dataset, task), f"checkpoint={ckpt}", f"split={split}"], out
    )
    predict(cfg, out)
    return out / "predictions"


@pytest.fixture(scope="module")
def coco_panoptic(tmp_path_factory) -> tuple[Path, Path]:
    return _trained(tmp_path_factory.mktemp("coco_panoptic"), "coco_panoptic", "coco", "panoptic")


def test_panopticapi_pq_compute_on_predict_output_equals_evaluate(
    tmp_path: Path, coco_panoptic: tuple[Path, Path]
) -> None:
    from panopticapi.evaluation import pq_compute

    root, ckpt = coco_panoptic
    ours = _evaluate(tmp_path, root, ckpt, "coco", "panoptic")
    assert ours["PQ"] > 0
    pred = _predict(tmp_path, root, ckpt, "coco", "panoptic", "val")
    name = "panoptic_val2017_m2f_results"
    data = json.loads((pred / f"{name}.json").read_text())
    assert sum(len(a["segments_info"]) for a in data["annotations"]) > 0  # non-trivial
    assert all(isinstance(a["image_id"], int) for a in data["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):
        official = pq_compute(
            str(root / "coco" / "annotations" / "panoptic_val2017.json"),
            str(pred / f"{name}.json"),
            gt_folder=str(root / "coco" / "panoptic_val2017"),
            pred_folder=str(pred / name),
        )
    assert official["All"]["pq"] == pytest.approx(ours["PQ"] / 100, abs=1e-6)
    assert official["Things"]["pq"] == pytest.approx(ours["PQ_th"] / 100, abs=1e-6)
    assert official["Stuff"]["pq"] == pytest.approx(ours["PQ_st"] / 100, abs=1e-6)
    # evaluate's save_predictions wrote the same files; the server's zip holds JSON + PNG folder
    saved = tmp_path / "eval" / "predictions"
    assert json.loads((saved / f"{name}.json").read_text()) == data
    with zipfile.ZipFile(pred / f"{name}.zip") as archive:
        names = set(archive.namelist())
    assert f"{name}.json" in names
    assert {f"{name}/{a['file_name']}" for a in data["annotations"]} <= names


def test_cocoeval_on_instance_results_equals_evaluate(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root, ckpt = _trained(tmp_path, "coco_instance", "coco", "instance", steps=300)
    ours = _evaluate(tmp_path, root, ckpt, "coco", "instance")
    assert ours["AP50"] > 0  # not a 0 = 0 comparison
    pred = _predict(tmp_path, root, ckpt, "coco", "instance", "val")
    name = "detections_val2017_m2f_results"
    detections = json.loads((pred / f"{name}.json").read_text())
    assert detections and all(isinstance(d["image_id"], int) for d in detections)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "coco" / "annotations" / "instances_val2017.json"))
        coco_eval = COCOeval(gt, gt.loadRes(str(pred / f"{name}.json")), iouType="segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert coco_eval.stats[0] == pytest.approx(ours["AP"] / 100, abs=1e-6)
    assert coco_eval.stats[1] == pytest.approx(ours["AP50"] / 100, abs=1e-6)
    with zipfile.ZipFile(pred / f"{name}.zip") as archive:
        assert archive.namelist() == [f"{name}.json"]
    saved = tmp_path / "eval" / "predictions" / f"{name}.json"
    assert json.loads(saved.read_text()) == detections


def test_cityscapes_scripts_semantic_evaluation_equals_evaluate(tmp_path: Path) -> None:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    root, ckpt = _trained(tmp_path, "cityscapes", "cityscapes", "semantic")
    ours = _evaluate(tmp_path, root, ckpt, "cityscapes", "semantic")
    assert ours["mIoU"] > 0
    pred = _predict(tmp_path, root, ckpt, "cityscapes", "semantic", "val")
    gts = sorted((root / "cityscapes" / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    preds = [
        pred / "semantic_val_m2f_results" / p.name.replace("_gtFine_labelIds", "_leftImg8bit")
        for p in gts
    ]
    values = np.unique(np.concatenate([np.unique(np.asarray(_png(p))) for p in preds]))
    assert set(values.tolist()) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25}.union(
        range(26, 34)
    )  # labelIds, not trainIds
    args = cs_eval.args
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    with contextlib.redirect_stdout(io.StringIO()):
        official = cs_eval.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)
    assert official["averageScoreClasses"] == pytest.approx(ours["mIoU"] / 100, abs=1e-6)


def _png(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


def test_images_only_test_split_gets_a_complete_results_file(
    tmp_path: Path, coco_panoptic: tuple[Path, Path]
) -> None:
    datasets, ckpt = coco_panoptic
    root = tmp_path / "datasets"
    shutil.copytree(datasets, root)
    coco = root / "coco"
    # a test-dev style split: images and an image list, no annotations
    shutil.copytree(coco / "val2017", coco / "test2017")
    images = json.loads((coco / "annotations" / "panoptic_val2017.json").read_text())["images"]
    images = [dict(info, id=info["id"] + 1000) for info in images]
    (coco / "annotations" / "image_info_test-dev2017.json").write_text(
        json.dumps({"images": images, "categories": []})
    )
    pred = _predict(tmp_path, root, ckpt, "coco", "panoptic", "test")
    name = "panoptic_test-dev2017_m2f_results"
    data = json.loads((pred / f"{name}.json").read_text())
    assert sorted(a["image_id"] for a in data["annotations"]) == sorted(i["id"] for i in images)
    for ann in data["annotations"]:
        assert (pred / name / ann["file_name"]).is_file()
    detections = json.loads((pred / "detections_test-dev2017_m2f_results.json").read_text())
    assert {d["image_id"] for d in detections} == {i["id"] for i in images}
    assert (pred / "detections_test-dev2017_m2f_results.zip").is_file()
    assert len(list((pred / "overlays").glob("*.png"))) == len(images)
