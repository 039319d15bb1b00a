"""The experiments are the official recipes, value for value, and docs/recipes.md says so.

The official values below are data transcribed from shared/reference/official_recipes.md (the
resolved Mask2Former configs), independently of scripts/recipe_table.py, which must agree; the
thing/stuff split of each experiment's classes comes from the official class lists
(tests/official_catalogs.py)."""

import importlib.util
from pathlib import Path

import pytest

from m2f_lightning.cli.main import CONFIG_DIR
from m2f_lightning.data import metadata_for
from tests import official_catalogs

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
# the official class list each experiment's dataset registration uses (official_catalogs.py)
OFFICIAL_CLASSES = {
    "coco_panoptic": official_catalogs.COCO_PANOPTIC,
    "coco_instance": official_catalogs.COCO_INSTANCE,
    "ade20k_semantic": official_catalogs.ADE20K,
    "ade20k_panoptic": official_catalogs.ADE20K,
    "ade20k_instance": official_catalogs.OFFICIAL["ade20k_instance"],
    "cityscapes_semantic": official_catalogs.CITYSCAPES,
    "cityscapes_panoptic": official_catalogs.CITYSCAPES,
    "cityscapes_instance": official_catalogs.CITYSCAPES_INSTANCE,
    "mapillary_panoptic": official_catalogs.MAPILLARY_VISTAS,
    "mapillary_semantic": official_catalogs.MAPILLARY_VISTAS,
}


def _official_things(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(thing ids, stuff ids) of an experiment's official class list."""
    rows = OFFICIAL_CLASSES[name.rsplit("_", 1)[0].removesuffix("_swin")]
    return tuple(r[0] for r in rows if r[2]), tuple(r[0] for r in rows if not r[2])


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
        "things": _official_things(name),
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
    # the table's official column is this data too (the thing/stuff split is ours there,
    # checked here against the official class lists)
    assert {k: table.OFFICIAL[name][k] for k in official if k != "things"} == {
        k: v for k, v in official.items() if k != "things"
    }
    assert "things" not in table.OFFICIAL[name]


@pytest.mark.parametrize("prefix", sorted(OFFICIAL_CLASSES))
def test_the_table_shows_the_official_thing_stuff_split(prefix: str) -> None:
    """The `things / stuff` row and the class lists of docs/recipes.md show the official split
    (thing and stuff classes by name and dataset id)."""
    table = _script()
    name = min(n for n in OFFICIAL if n.startswith(prefix + "_"))
    things, stuff = _official_things(name)
    cfg = table.compose_experiment(name)
    shown = table._show("things", table.composed_values(cfg)["things"])
    assert shown == f"{len(things)} / {len(stuff)}"
    names = {row[0]: row[1] for row in OFFICIAL_CLASSES[prefix]}
    catalog = metadata_for(cfg.dataset.name, cfg.task.name).name
    page = table._class_lists({catalog: [name]})
    assert f"- {len(things)} things: " + "; ".join(f"{names[d]} ({d})" for d in things) in page
    if stuff:
        assert f"- {len(stuff)} stuff: " + "; ".join(f"{names[d]} ({d})" for d in stuff) in page
    else:
        assert not any(line.startswith("- ") and "stuff:" in line for line in page)


@pytest.mark.slow
def test_docs_recipes_is_the_scripts_output() -> None:
    expected = _script().render()
    assert (ROOT / "docs/recipes.md").read_text() == expected, (
        "docs/recipes.md is out of date: python scripts/recipe_table.py > docs/recipes.md"
    )
