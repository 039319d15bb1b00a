"""Fine-tuning to a new class set by name: matched classes keep their class-head rows (names
compared case and punctuation insensitive, `class_map` for synonyms), the others start fresh;
checkpoints carry their class names and thing flags, and evaluate refuses a reordered set."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2f_lightning.checkpoints import init_from_weights, load_model, save_model
from m2f_lightning.classes import check_classes_agree, match_classes, normalize_name
from m2f_lightning.cli.builders import build_datamodule, build_module, build_trainer
from m2f_lightning.cli.commands import train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.runs.resume import load_init_weights
from tests.helpers import TINY_OVERRIDES, compose, tiny_model

OLD = ["sky", "ground", "circle", "square", "triangle"]
WEIGHT, BIAS = "transformer_decoder.class_embed.weight", "transformer_decoder.class_embed.bias"


def test_names_match_case_and_punctuation_insensitive_with_synonyms() -> None:
    assert normalize_name("Traffic-Light ") == normalize_name("traffic_light") == "trafficlight"
    assert match_classes(["SQUARE", "Sky.", "hexagon"], OLD) == {0: 3, 1: 0}
    assert match_classes(["SQUARE", "Sky.", "hexagon"], OLD, {"Hexagon": "Triangle"}) == {
        0: 3,
        1: 0,
        2: 4,
    }
    with pytest.raises(ValueError, match="'pentagon' .* not a class of the checkpoint"):
        match_classes(["hexagon"], OLD, {"hexagon": "pentagon"})
    with pytest.raises(ValueError, match="'blob' is not a class of the dataset"):
        match_classes(["hexagon"], OLD, {"blob": "circle"})


def test_comma_separated_synonyms_match_one_of_them_unambiguously() -> None:
    """The official ADE20K names list synonyms ("road, route"); checkpoints (HF, ours before the
    official names) name the class by one of them ("road"). A synonym shared by several names
    ("screen") matches only a whole name."""
    new = ["road, route", "screen door, screen", "screen", "blind, screen", "window "]
    old = ["road", "screen", "screen door", "windowpane"]
    assert match_classes(new, old) == {0: 0, 1: 2, 2: 1}
    assert match_classes(old, new) == {0: 0, 1: 2, 2: 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_classes_agree(["road", "bed"], ["road, route", "bed"], "ckpt", "ade20k")
    with pytest.warns(UserWarning, match="1 of 2 names differ"):
        check_classes_agree(["road", "windowpane"], ["road, route", "window "], "ckpt", "ade20k")


def test_init_from_weights_copies_matched_rows_and_the_no_object_row(tmp_path: Path) -> None:
    source = tiny_model(num_classes=5)
    path = save_model(source, tmp_path / "src.pt", class_names=OLD, is_thing=[0, 0, 1, 1, 1])
    torch.manual_seed(3)
    model = tiny_model(num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_weights(model, path, ["SQUARE", "Sky.", "hexagon"])
    assert report == {"matched": ["SQUARE", "Sky."], "fresh": ["hexagon"]}
    new, old = model.state_dict(), source.state_dict()
    for key in (WEIGHT, BIAS):
        assert torch.equal(new[key][0], old[key][3]) and torch.equal(new[key][1], old[key][0])
        assert torch.equal(new[key][2], fresh[key][2])  # unmatched: its fresh initialisation
        assert torch.equal(new[key][3], old[key][5])  # no-object row
    assert torch.equal(
        new["transformer_decoder.query_feat.weight"], old["transformer_decoder.query_feat.weight"]
    )
    # a synonym through class_map
    model = tiny_model(num_classes=3)
    report = init_from_weights(model, path, ["SQUARE", "Sky.", "hexagon"], {"hexagon": "triangle"})
    assert report["fresh"] == [] and torch.equal(model.state_dict()[BIAS][2], old[BIAS][4])


def test_saved_checkpoint_carries_names_and_thing_flags(tmp_path: Path) -> None:
    path = save_model(tiny_model(num_classes=5), tmp_path / "m.pt", OLD, [0, 0, 1, 1, 1])
    model = load_model(path)
    assert model.class_names == OLD and model.is_thing == [False, False, True, True, True]
    again = load_model(save_model(model, tmp_path / "again.pt"))  # names travel on
    assert again.class_names == OLD and again.is_thing == model.is_thing


def test_class_check_fails_on_reordered_and_warns_on_other_names() -> None:
    check_classes_agree(OLD, ["Sky", "GROUND", "circle", "square", "triangle"], "m.pt", "d")
    check_classes_agree(None, OLD, "m.pkl", "d")  # no names stored: nothing to compare
    with pytest.raises(ValueError, match=r"another order .*0: 'ground' in the dataset, 'sky'"):
        check_classes_agree(OLD, ["ground", "sky", "circle", "square", "triangle"], "m.pt", "d")
    with pytest.warns(UserWarning, match=r"other classes .* 1 of 5 names differ.*'hexagon'"):
        check_classes_agree(OLD, ["sky", "ground", "circle", "square", "hexagon"], "m.pt", "d")
    with pytest.warns(UserWarning, match=r"thing/stuff differs .*\['circle'\]"):
        check_classes_agree(OLD, OLD, "m.pt", "d", [0, 0, 1, 1, 1], [0, 0, 0, 1, 1])


# --- end to end: train on the synthetic demo set, fine-tune to a renamed, reordered subset


def subset_dataset(demo_root: Path, out: Path) -> list[str]:
    """The demo images as a COCO-panoptic custom dataset with classes [square, sky, pyramid
    (triangle renamed: no match), ground] spelled differently; circles become void."""
    renamed = {4: "SQUARE", 1: "Sky.", 5: "pyramid", 2: "Ground"}
    src = demo_root / "synthetic"
    for split in ("train", "val"):
        shutil.copytree(src / f"{split}2017", out / "img" / split)
        shutil.copytree(src / f"panoptic_{split}2017", out / "seg" / split)
        data = json.loads((src / "annotations" / f"panoptic_{split}2017.json").read_text())
        by_id = {c["id"]: c for c in data["categories"]}
        data["categories"] = [{**by_id[i], "name": name} for i, name in renamed.items()]
        for ann in data["annotations"]:
            dropped = [s["id"] for s in ann["segments_info"] if s["category_id"] not in renamed]
            ann["segments_info"] = [s for s in ann["segments_info"] if s["category_id"] in renamed]
            png = out / "seg" / split / ann["file_name"]
            rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
            rgb = rgb.copy()
            rgb[np.isin(ids, dropped)] = 0  # void
            Image.fromarray(rgb.astype(np.uint8)).save(png)
        (out / f"pan_{split}.json").write_text(json.dumps(data))
    split = "{{images: img/{s}, annotations: pan_{s}.json, panoptic: seg/{s}}}"
    return [
        "dataset=custom",
        f"paths.datasets_dir={out}",
        "dataset.source.format=coco_panoptic",
        "dataset.source.train=" + split.format(s="train"),
        "dataset.source.val=" + split.format(s="val"),
    ]


def per_class_pq(cfg, init: str | None, tmp_path: Path) -> tuple[dict, object]:
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    if init:
        load_init_weights(module, init)
    trainer = build_trainer(cfg, tmp_path, False, [])
    trainer.test(module, datamodule=dm, verbose=False)
    pq = module.per_class["test"]["PQ"]
    return dict(zip(dm.metadata.class_names, pq.tolist(), strict=True)), module


@pytest.mark.slow
def test_finetune_to_a_renamed_reordered_subset_keeps_the_matched_classes(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    write_dataset("demo", demo, num=8, num_val=4, seed=0)
    common = [
        *TINY_OVERRIDES,
        "task=panoptic",
        "dataset.train_aug={recipe: lsj, size: 96}",
        "dataset.test_min_size=128",
        "dataset.test_max_size=128",
    ]
    source_args = [
        "dataset=synthetic",
        f"paths.datasets_dir={demo}",
        *common,
        "dataset.max_steps=150",
        "dataset.val_every_n_steps=150",
        "checkpoint.every_n_train_steps=150",
        "test_after_training=false",
        "optimizer.lr=1e-3",
    ]
    summary = train(compose("train", source_args, tmp_path / "src"), tmp_path / "src")
    ckpt = summary["last_checkpoint"]
    assert load_model(ckpt).class_names == OLD  # the Lightning checkpoint names its classes

    source_pq, source = per_class_pq(compose("train", source_args, tmp_path), ckpt, tmp_path / "e1")
    target_args = [*subset_dataset(demo, tmp_path / "subset"), *common]
    target_pq, target = per_class_pq(compose("train", target_args, tmp_path), ckpt, tmp_path / "e2")
    print("source", source_pq, "\ntarget", target_pq)
    old, new = source.model.state_dict(), target.model.state_dict()
    for i, j in {0: 3, 1: 0, 3: 1, 4: 5}.items():  # SQUARE, Sky., Ground, no-object
        assert torch.equal(new[WEIGHT][i], old[WEIGHT][j])
    assert not torch.equal(new[WEIGHT][2], old[WEIGHT][4])  # pyramid starts fresh
    for old_name, new_name in (("sky", "Sky."), ("ground", "Ground"), ("square", "SQUARE")):
        if source_pq[old_name] > 0:
            assert target_pq[new_name] > 0
            assert target_pq[new_name] == pytest.approx(source_pq[old_name], abs=2)
    assert sum(target_pq[n] for n in ("Sky.", "Ground", "SQUARE")) > 0


def test_class_map_is_given_on_the_command_line(tmp_path: Path) -> None:
    assert compose("train", [], tmp_path).class_map is None
    cfg = compose("train", ["class_map={pyramid:triangle,tv_monitor:tv}"], tmp_path)
    assert dict(cfg.class_map) == {"pyramid": "triangle", "tv_monitor": "tv"}
    assert match_classes(["TV monitor"], ["tv-monitor"], {"tv_monitor": "tv-monitor"}) == {0: 0}
