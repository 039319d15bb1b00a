"""The experiments are the official recipes, value for value, and docs/recipes.md says so.

The official values below are data transcribed from shared/reference/official_recipes.md (the
resolved Mask2Former configs), independently of scripts/recipe_table.py, which must agree."""

import importlib.util
from pathlib import Path

import pytest

from m2f_lightning.cli import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
R50, SWIN_L = "resnet50.tv_in1k", "swin_large_patch4_window12_384.ms_in22k"
COCO_50, COCO_100 = ("multistep", (327778, 355092)), ("multistep", (655556, 710184))
POLY = ("poly", 0.9)
LSJ = ((1024, 1024), ("lsj", 0.1, 2.0), (800, 1333))
ADE512 = ((512, 512), ("short_edge", 512, 2048), (512, 2048))
ADE640 = ((640, 640), ("short_edge", 640, 2560), (640, 2560))
CITY = ((512, 1024), ("short_edge", 1024, 4096), (1024, 2048))
MAP = ((1024, 1024), ("short_edge", 2048, 8192), (2048, 2048))
R50_FROZEN, R50_SYNC, SWIN = (
    (R50, "FrozenBN", None),
    (R50, "SyncBN", None),
    (SWIN_L, "LayerNorm", 0.3),
)

# experiment: classes, (crop, scales, test), iterations, schedule, queries, object-mask
# threshold, (weights, norm, drop path)  — official_recipes.md Table 1
OFFICIAL = {
    "coco_panoptic_r50": (133, LSJ, 368750, COCO_50, 100, 0.8, R50_FROZEN),
    "coco_panoptic_swin_l": (133, LSJ, 737500, COCO_100, 200, 0.8, SWIN),
    "coco_instance_r50": (80, LSJ, 368750, COCO_50, 100, 0.8, R50_FROZEN),
    "coco_instance_swin_l": (80, LSJ, 737500, COCO_100, 200, 0.8, SWIN),
    "ade20k_semantic_r50": (150, ADE512, 160000, POLY, 100, 0.8, R50_FROZEN),
    "ade20k_semantic_swin_l": (150, ADE640, 160000, POLY, 100, 0.8, SWIN),
    "ade20k_panoptic_r50": (150, ADE640, 160000, POLY, 100, 0.8, R50_FROZEN),
    "ade20k_instance_r50": (100, ADE640, 160000, POLY, 100, 0.8, R50_FROZEN),
    "cityscapes_semantic_r50": (19, CITY, 90000, POLY, 100, 0.8, R50_SYNC),
    "cityscapes_semantic_swin_l": (19, CITY, 90000, POLY, 100, 0.8, SWIN),
    "cityscapes_panoptic_r50": (19, CITY, 90000, POLY, 100, 0.8, R50_SYNC),
    "cityscapes_panoptic_swin_l": (19, CITY, 90000, POLY, 200, 0.8, SWIN),
    "cityscapes_instance_r50": (8, CITY, 90000, POLY, 100, 0.8, R50_SYNC),
    "mapillary_panoptic_r50": (65, MAP, 300000, POLY, 100, 0.0, R50_FROZEN),
    "mapillary_panoptic_swin_l": (65, MAP, 300000, POLY, 200, 0.0, SWIN),
    "mapillary_semantic_r50": (65, MAP, 300000, POLY, 100, 0.0, R50_FROZEN),
}
# shared by every official config (official_recipes.md N1, N3)
COMMON = {
    "batch": 16,
    "lr": 1e-4,
    "weight_decay": 0.05,
    "backbone_multiplier": 0.1,
    "clip": (0.01, "norm"),
    "points": 12544,
    "overlap_threshold": 0.8,
    "precision": "16-mixed",
}
# differences we keep on purpose: the table must give the reason
ON_PURPOSE = {"precision"}


def _official(name: str) -> dict:
    classes, (crop, scales, test), iters, schedule, queries, thr, (weights, norm, dp) = OFFICIAL[
        name
    ]
    return {
        **COMMON,
        "num_classes": classes,
        "crop": crop,
        "scales": scales,
        "test": test,
        "iterations": iters,
        "schedule": schedule,
        "queries": queries,
        "object_mask_threshold": thr,
        "weights": weights,
        "norm": norm,
        "drop_path": dp,
    }


def _script():
    spec = importlib.util.spec_from_file_location("recipe_table", ROOT / "scripts/recipe_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_experiment_has_an_official_recipe() -> None:
    experiments = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")} - {"demo"}
    assert experiments == set(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_the_composed_experiment_is_the_official_recipe(name: str) -> None:
    table = _script()
    ours = table.composed_values(table.compose_experiment(name))
    official = _official(name)
    assert set(ours) == set(official)
    differ = {k: (ours[k], official[k]) for k in official if ours[k] != official[k]}
    assert set(differ) <= ON_PURPOSE, differ
    assert set(table.ON_PURPOSE) >= ON_PURPOSE  # the table says why
    # the table's official column is this data too
    assert {k: table.OFFICIAL[name][k] for k in official} == official


@pytest.mark.slow
def test_docs_recipes_is_the_scripts_output() -> None:
    expected = _script().render()
    assert (ROOT / "docs/recipes.md").read_text() == expected, (
        "docs/recipes.md is out of date: python scripts/recipe_table.py > docs/recipes.md"
    )
