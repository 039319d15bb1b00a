"""docs/recipes.md: every experiment's composed hyper-parameters beside the official Mask2Former
config's values and the result MODEL_ZOO.md reports (facts: shared/reference/official_recipes.md).

    python scripts/recipe_table.py > docs/recipes.md      (tests/test_recipes.py checks it is current)

The values on our side come from composing conf/ with Hydra, as `train.py experiment=<name>` does,
so the table cannot drift from the configs.
"""

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2f_lightning.data.transforms import short_edge_sizes  # noqa: E402

R50 = "resnet50.tv_in1k"  # = detectron2 ImageNetPretrained/torchvision/R-50.pkl (fidelity.md §1)
SWIN_L = "swin_large_patch4_window12_384.ms_in22k"  # = swin_large_patch4_window12_384_22k.pkl

_COMMON = {
    "batch": 16,
    "lr": 1e-4,
    "weight_decay": 0.05,
    "backbone_multiplier": 0.1,
    "clip": (0.01, "norm"),
    "points": 12544,
    "overlap_threshold": 0.8,
    "precision": "16-mixed",
}
_COCO = {"crop": (1024, 1024), "scales": ("lsj", 0.1, 2.0), "test": (800, 1333)}
_COCO_50EP = {"iterations": 368750, "schedule": ("multistep", (327778, 355092))}
_COCO_100EP = {"iterations": 737500, "schedule": ("multistep", (655556, 710184))}
_ADE512 = {"crop": (512, 512), "scales": ("short_edge", 512, 2048), "test": (512, 2048)}
_ADE640 = {"crop": (640, 640), "scales": ("short_edge", 640, 2560), "test": (640, 2560)}
_ADE = {"iterations": 160000, "schedule": ("poly", 0.9)}
_CITY = {
    "crop": (512, 1024),
    "scales": ("short_edge", 1024, 4096),
    "test": (1024, 2048),
    "iterations": 90000,
    "schedule": ("poly", 0.9),
}
_MAP = {
    "crop": (1024, 1024),
    "scales": ("short_edge", 2048, 8192),
    "test": (2048, 2048),
    "iterations": 300000,
    "schedule": ("poly", 0.9),
    "object_mask_threshold": 0.0,
}
_R50 = {"weights": R50, "norm": "FrozenBN", "drop_path": None}
_R50_SYNC = {"weights": R50, "norm": "SyncBN", "drop_path": None}
_SWIN_L = {"weights": SWIN_L, "norm": "LayerNorm", "drop_path": 0.3}


def _row(config: str, result: str, num_classes: int, queries: int, *parts: dict) -> dict:
    row = {"object_mask_threshold": 0.8, **_COMMON}
    for part in parts:
        row.update(part)
    row.update(config=config, result=result, num_classes=num_classes, queries=queries)
    return row


# official_recipes.md Table 1 (resolved configs) and Table 2 (MODEL_ZOO.md results)
OFFICIAL: dict[str, dict[str, Any]] = {
    "coco_panoptic_r50": _row(
        "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
        "PQ 51.9, AP 41.7, mIoU 61.7",
        133, 100, _COCO, _COCO_50EP, _R50,
    ),
    "coco_panoptic_swin_l": _row(
        "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
        "PQ 57.8, AP 48.6, mIoU 67.4",
        133, 200, _COCO, _COCO_100EP, _SWIN_L,
    ),
    "coco_instance_r50": _row(
        "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml",
        "AP 43.7",
        80, 100, _COCO, _COCO_50EP, _R50,
    ),
    "coco_instance_swin_l": _row(
        "coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
        "AP 50.1",
        80, 200, _COCO, _COCO_100EP, _SWIN_L,
    ),
    "ade20k_semantic_r50": _row(
        "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml",
        "mIoU 47.2",
        150, 100, _ADE512, _ADE, _R50,
    ),
    "ade20k_semantic_swin_l": _row(
        "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml",
        "mIoU 56.1",
        150, 100, _ADE640, _ADE, _SWIN_L,
    ),
    "ade20k_panoptic_r50": _row(
        "ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml",
        "PQ 39.7, AP 26.5, mIoU 46.1",
        150, 100, _ADE640, _ADE, _R50,
    ),
    "ade20k_instance_r50": _row(
        "ade20k/instance-segmentation/maskformer2_R50_bs16_160k.yaml",
        "AP 26.4",
        100, 100, _ADE640, _ADE, _R50,
    ),
    "cityscapes_semantic_r50": _row(
        "cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k.yaml",
        "mIoU 79.4",
        19, 100, _CITY, _R50_SYNC,
    ),
    "cityscapes_semantic_swin_l": _row(
        "cityscapes/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
        "mIoU 83.3",
        19, 100, _CITY, _SWIN_L,
    ),
    "cityscapes_panoptic_r50": _row(
        "cityscapes/panoptic-segmentation/maskformer2_R50_bs16_90k.yaml",
        "PQ 62.1, AP 37.3, mIoU 77.5",
        19, 100, _CITY, _R50_SYNC,
    ),
    "cityscapes_panoptic_swin_l": _row(
        "cityscapes/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml",
        "PQ 66.6, AP 43.6, mIoU 82.9",
        19, 200, _CITY, _SWIN_L,
    ),
    "cityscapes_instance_r50": _row(
        "cityscapes/instance-segmentation/maskformer2_R50_bs16_90k.yaml",
        "AP 37.4, AP50 61.9",
        8, 100, _CITY, _R50_SYNC,
    ),
    "mapillary_panoptic_r50": _row(
        "mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml",
        "PQ 36.3, mIoU 50.7",
        65, 100, _MAP, _R50,
    ),
    "mapillary_panoptic_swin_l": _row(
        "mapillary-vistas/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_300k.yaml",
        "PQ 45.5, mIoU 60.8",
        65, 200, _MAP, _SWIN_L,
    ),
    "mapillary_semantic_r50": _row(
        "mapillary-vistas/semantic-segmentation/maskformer2_R50_bs16_300k.yaml",
        "mIoU 57.4",
        65, 100, _MAP, _R50,
    ),
}  # fmt: skip

# where an experiment differs from the official value on purpose: (key → why)
ON_PURPOSE: dict[str, str] = {
    "precision": "`auto` is bf16-mixed on GPUs that have bf16 (no loss scaling; the deformable "
    "attention runs in fp32 as the official op), fp16-mixed (the official AMP) on older GPUs, "
    "fp32 on CPU; `precision=16-mixed` gives the official fp16 everywhere.",
}

KEYS = [
    ("num_classes", "classes (head)"),
    ("things", "things / stuff"),
    ("crop", "crop (h, w)"),
    ("scales", "scale jitter"),
    ("test", "test size (short, max)"),
    ("batch", "images / step"),
    ("iterations", "iterations"),
    ("schedule", "schedule"),
    ("lr", "lr"),
    ("weight_decay", "weight decay"),
    ("backbone_multiplier", "backbone lr ×"),
    ("clip", "grad clip (full model)"),
    ("queries", "queries"),
    ("points", "train points"),
    ("object_mask_threshold", "object mask thr."),
    ("overlap_threshold", "overlap thr."),
    ("weights", "backbone weights"),
    ("norm", "backbone norm"),
    ("drop_path", "drop path"),
    ("precision", "precision"),
]


def compose_experiment(name: str) -> Any:
    from hydra import compose, initialize_config_dir

    from m2f_lightning.cli.main import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}"])


def composed_values(cfg: Any) -> dict[str, Any]:
    """The official config's hyper-parameters, read from a composed training config."""
    from m2f_lightning.cli.builders import images_per_step
    from m2f_lightning.data import metadata_for

    aug = cfg.dataset.train_aug
    if aug.recipe == "lsj":
        crop, scales = (aug.size, aug.size), ("lsj", aug.min_scale, aug.max_scale)
    else:
        crop = tuple(aug.crop_size)
        sizes = short_edge_sizes(
            aug.base_size, aug.get("min_ratio", 0.5), aug.get("max_ratio", 2.0)
        )
        official = short_edge_sizes(aug.base_size)
        scales = ("short_edge", aug.base_size if sizes == official else sizes, 4 * aug.base_size)
    sched = cfg.scheduler
    max_steps = int(cfg.trainer.max_steps)
    if sched.name == "multistep":
        steps = tuple(int(m) if m >= 1 else int(round(m * max_steps)) for m in sched.milestones)
        schedule: tuple = ("multistep", steps)
    else:
        schedule = (sched.name, sched.power)
    backbone = cfg.backbone
    kwargs = backbone.get("kwargs") or {}
    if "swin" in str(backbone.name):
        norm = "LayerNorm"
    elif kwargs.get("frozen_bn", True):
        norm = "FrozenBN"
    else:
        norm = "SyncBN" if cfg.trainer.get("sync_batchnorm") else "BN"
    meta = metadata_for(cfg.dataset.name, cfg.task.name)
    return {
        "num_classes": meta.num_classes,
        "things": thing_ids(meta),
        "crop": crop,
        "scales": scales,
        "test": (cfg.dataset.test_min_size, cfg.dataset.test_max_size),
        "batch": images_per_step(cfg),
        "iterations": max_steps,
        "schedule": schedule,
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "backbone_multiplier": backbone.lr_multiplier,
        "clip": (cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm),
        "queries": cfg.model.net.num_queries,
        "points": cfg.model.criterion.num_points,
        "object_mask_threshold": cfg.inference.object_mask_threshold,
        "overlap_threshold": cfg.inference.overlap_threshold,
        "weights": backbone.weights,
        "norm": norm,
        "drop_path": kwargs.get("drop_path_rate") if norm == "LayerNorm" else None,
        "precision": cfg.trainer.precision,
    }


def thing_ids(meta: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(thing, stuff) classes of a catalog by dataset id: what PQ, AP and the panoptic
    inference treat as things."""
    ids = meta.dataset_ids
    return tuple(ids[i] for i in meta.thing_ids), tuple(ids[i] for i in meta.stuff_ids)


def _class_lists(catalogs: dict[str, list[str]]) -> list[str]:
    """Per catalog used by the experiments (catalog → experiments): its thing and stuff
    classes, `name (dataset id)`."""
    from m2f_lightning.data.catalog import get_metadata

    lines = ["## Thing and stuff classes", ""]
    lines += [
        "Per class catalog (`m2f_lightning/data/catalog/`): `name (dataset id)`, separated by",
        "`;`. The same ids, names and flags as the official registrations",
        "(`tests/test_catalogs_official.py`, `tests/test_recipes.py`). Semantic experiments",
        "predict every class alike.",
        "",
    ]
    for catalog, experiments in catalogs.items():
        meta = get_metadata(catalog)
        things, stuff = thing_ids(meta)
        show = {d: f"{n} ({d})" for d, n in zip(meta.dataset_ids, meta.class_names, strict=True)}
        lines += [
            f"### `{catalog}` ({', '.join(f'`{e}`' for e in experiments)})",
            "",
            f"- {len(things)} things: " + "; ".join(show[d] for d in things),
        ]
        if stuff:
            lines.append(f"- {len(stuff)} stuff: " + "; ".join(show[d] for d in stuff))
        lines.append("")
    return lines


def _show(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "things":
        return f"{len(value[0])} / {len(value[1])}"
    if key == "crop":
        return f"{value[0]}×{value[1]}"
    if key == "scales":
        if value[0] == "lsj":
            return f"LSJ {value[1]}–{value[2]}"
        return f"short edge int(x·0.1·{value[1]}), x=5..20; max {value[2]}"
    if key == "test":
        return f"{value[0]} / {value[1]}"
    if key == "schedule":
        if value[0] == "multistep":
            return "step ×0.1 at " + ", ".join(f"{s:,}" for s in value[1])
        return f"poly {value[1]}"
    if key == "clip":
        return f"{value[0]} (L2 {value[1]})"
    if key == "iterations":
        return f"{value:,}"
    return str(value)


def render() -> str:
    lines = [
        "# Recipes: our experiments beside the official Mask2Former configs",
        "",
        "Generated by `python scripts/recipe_table.py > docs/recipes.md` from the composed configs",
        "(`train.py experiment=<name>`); `tests/test_recipes.py` fails when an experiment differs",
        "from the official value or when this page is out of date. Official values: the resolved",
        "configs of facebookresearch/Mask2Former (with detectron2's defaults); results: MODEL_ZOO.md.",
        "A cell reads `ours` when both agree, `ours (official: …)` where they differ. The",
        "thing/stuff split (listed per dataset at the end) is checked against the official class",
        "lists by the tests (`tests/official_catalogs.py`).",
        "",
        "Every experiment also has the official model (9 decoder layers + the learned-query",
        "prediction, hidden 256, 6 deformable encoder layers), matcher and loss weights (class 2,",
        "mask 5, dice 5, no-object 0.1), AdamW with no weight decay on norms and embeddings, and",
        "the evaluation the official evaluators run (docs/architecture.md, metrics/).",
        "",
    ]
    from m2f_lightning.data import metadata_for

    catalogs: dict[str, list[str]] = {}
    for name, official in OFFICIAL.items():
        cfg = compose_experiment(name)
        ours = composed_values(cfg)
        catalogs.setdefault(metadata_for(cfg.dataset.name, cfg.task.name).name, []).append(name)
        lines += [
            f"## `experiment={name}`",
            "",
            f"Official: `configs/{official['config']}`. Paper (MODEL_ZOO.md): {official['result']}.",
            "",
            "| hyper-parameter | value |",
            "|---|---|",
        ]
        for key, label in KEYS:
            if key not in official:  # checked against the official lists by the tests
                lines.append(f"| {label} | {_show(key, ours[key])} |")
                continue
            mine, theirs = _show(key, ours[key]), _show(key, official[key])
            cell = mine if ours[key] == official[key] else f"{mine} (official: {theirs})"
            if ours[key] != official[key] and key in ON_PURPOSE:
                cell += " †"
            lines.append(f"| {label} | {cell} |")
        lines.append("")
    lines += _class_lists(catalogs)
    lines += ["## Where we differ on purpose", ""]
    lines += [f"- † {key}: {why}" for key, why in ON_PURPOSE.items()]
    lines += [
        "",
        "`experiment=demo` is not an official recipe (a tiny model on synthetic scenes,",
        "shared/reference/demo_recipe.md).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
