"""`dataset=custom`: a user's own data by config alone, in COCO-panoptic, COCO-instance or
image + label-PNG form, under names and folders of their choosing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.cli.builders import build_datamodule, validate_config
from m2f_lightning.cli.commands import evaluate, train
from m2f_lightning.data.synthetic import write_dataset
from tests.helpers import TINY_OVERRIDES, compose

LSJ = "dataset.train_aug={recipe: lsj, size: 128}"


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> Path:
    """The synthetic COCO sets moved to names no built-in dataset uses."""
    scratch = tmp_path_factory.mktemp("generated")
    write_dataset("coco_panoptic", scratch, num=4, num_val=2, seed=3)
    write_dataset("coco_instance", scratch, num=4, num_val=2, seed=3)
    root = tmp_path_factory.mktemp("own")
    coco = scratch / "coco"
    for split in ("train", "val"):
        shutil.copytree(coco / f"{split}2017", root / "scenes" / "pictures" / split)
        shutil.copytree(coco / f"panoptic_{split}2017", root / "scenes" / "seg" / split)
        shutil.copy(coco / "annotations" / f"panoptic_{split}2017.json", root / f"pan_{split}.json")
        shutil.copy(
            coco / "annotations" / f"instances_{split}2017.json", root / f"ins_{split}.json"
        )
    return root


def custom(root: Path, fmt: str, task: str, *extra: str) -> list[str]:
    split = {
        "coco_panoptic": "{{images: scenes/pictures/{s}, annotations: pan_{s}.json, panoptic: scenes/seg/{s}}}",
        "coco_instance": "{{images: scenes/pictures/{s}, annotations: ins_{s}.json}}",
        "semantic_png": "{{images: sem/{s}/img, labels: sem/{s}/lbl}}",
    }[fmt]
    return [
        "dataset=custom",
        f"task={task}",
        *TINY_OVERRIDES,
        f"paths.datasets_dir={root}",
        f"dataset.source.format={fmt}",
        "dataset.source.train=" + split.format(s="train"),
        "dataset.source.val=" + split.format(s="val"),
        *extra,
    ]


def test_coco_panoptic_under_other_names_trains_and_evaluates(
    own_data: Path, tmp_path: Path
) -> None:
    args = custom(own_data, "coco_panoptic", "panoptic", LSJ, "dataset.max_steps=2")
    args += ["dataset.val_every_n_steps=2", "checkpoint.every_n_train_steps=2"]
    summary = train(compose("train", args, tmp_path / "train"), tmp_path / "train")
    assert summary["global_step"] == 2
    assert {"PQ", "PQ_th", "PQ_st", "AP", "mIoU"} <= set(summary["test"])
    # the classes are the JSON's, in its order, with its thing/stuff split
    categories = json.loads((own_data / "pan_train.json").read_text())["categories"]
    dm = build_datamodule(compose("train", args, tmp_path))
    assert dm.metadata.class_names == [c["name"] for c in categories]
    assert dm.metadata.is_thing == [bool(c["isthing"]) for c in categories]
    assert dm.metadata.dataset_ids == [c["id"] for c in categories]
    eval_args = custom(
        own_data, "coco_panoptic", "panoptic", f"checkpoint={summary['last_checkpoint']}"
    )
    results = evaluate(compose("evaluate", eval_args, tmp_path / "eval"), tmp_path / "eval")
    assert results["PQ"] == pytest.approx(summary["test"]["PQ"], abs=1e-6)


def test_coco_instance_json_serves_the_instance_task(own_data: Path, tmp_path: Path) -> None:
    cfg = compose(
        "train", custom(own_data, "coco_instance", "instance", LSJ, "debug=fast"), tmp_path
    )
    summary = train(cfg, tmp_path)
    assert summary["global_step"] == 1 and "val/AP" in summary["val"]
    with pytest.raises(
        ValueError, match="no annotations for task 'panoptic'; valid tasks: \\['instance'\\]"
    ):
        validate_config(compose("train", custom(own_data, "coco_instance", "panoptic"), tmp_path))


def test_label_pngs_with_a_class_list_serve_the_semantic_task(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        (tmp_path / "sem" / split / "img").mkdir(parents=True)
        (tmp_path / "sem" / split / "lbl").mkdir(parents=True)
        for i in range(count):
            label = np.zeros((96, 128), dtype=np.uint8)
            label[40:, :] = 1
            label[10:30, 20:60] = 2
            label[:4] = 255
            image = (rng.random((96, 128, 3)) * 60 + label[..., None] * 60).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / "sem" / split / "img" / f"{i}.jpg")
            Image.fromarray(label).save(tmp_path / "sem" / split / "lbl" / f"{i}.png")
    args = custom(
        tmp_path,
        "semantic_png",
        "semantic",
        "~dataset.train_aug",
        "+dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 96]}",
        "dataset.source.classes=[sky, road, car]",
        "debug=fast",
    )
    summary = train(compose("train", args, tmp_path / "out"), tmp_path / "out")
    assert summary["global_step"] == 1 and "val/mIoU" in summary["val"]
    with pytest.raises(ValueError, match="dataset.source.classes must list the class names"):
        build_datamodule(compose("train", args[:-2] + ["debug=fast"], tmp_path))
