"""The README's model-zoo table: every official hub id with its task, dataset, backbone and
paper result, and the config of ours that evaluates it with the official test settings.

The data below is written from the official sources, not from our code: the hub ids are those
confirmed from hub pages (the project's reference notes on the HF port, §7, and stored hub pages
for the Swin-L Cityscapes semantic and Swin-S Cityscapes instance models), the results
are MODEL_ZOO.md of facebookresearch/Mask2Former, and the test settings (MIN/MAX_SIZE_TEST,
OBJECT_MASK_THRESHOLD, NUM_OBJECT_QUERIES) are those of the config each checkpoint was trained
with, resolved through its `_BASE_` chain in the official repository.
"""

import re
from pathlib import Path

import pytest

from m2f_lightning.checkpoints.hub import parse_hub_id
from tests.helpers import compose

ROOT = Path(__file__).resolve().parents[1]

# official config families: (MIN_SIZE_TEST, MAX_SIZE_TEST, OBJECT_MASK_THRESHOLD)
COCO = (800, 1333, 0.8)  # detectron2 defaults; Base-COCO-*Segmentation.yaml sets none
ADE_512 = (512, 2048, 0.8)  # Base-ADE20K-SemanticSegmentation.yaml (R50, Swin-T/S)
ADE_640 = (640, 2560, 0.8)  # swin/*_res640.yaml (Swin-B/L), Base-ADE20K-Panoptic
CITYSCAPES = (1024, 2048, 0.8)  # Base-Cityscapes-*Segmentation.yaml
MAPILLARY = (2048, 2048, 0.0)  # Base-MapillaryVistas-*; the R50 configs set threshold 0.0
# TEST.AUG (MIN_SIZES, MAX_SIZE) of the families whose configs define it ("ms+flip")
TEST_AUG = {
    ADE_512: ([256, 384, 512, 640, 768, 896], 3584),
    ADE_640: ([320, 480, 640, 800, 960, 1120], 4480),
    CITYSCAPES: ([512, 768, 1024, 1280, 1536, 1792], 4096),
}

# hub id: task, dataset, backbone, MODEL_ZOO.md result, official test settings, queries
ZOO = {
    "facebook/mask2former-swin-tiny-coco-panoptic": (
        "panoptic", "COCO", "Swin-T", "PQ 53.2, AP 43.3, mIoU 63.2", COCO, 100,
    ),
    "facebook/mask2former-swin-small-coco-panoptic": (
        "panoptic", "COCO", "Swin-S", "PQ 54.6, AP 44.7, mIoU 64.2", COCO, 100,
    ),
    "facebook/mask2former-swin-base-coco-panoptic": (
        "panoptic", "COCO", "Swin-B", "PQ 55.1, AP 45.2, mIoU 65.1", COCO, 100,
    ),
    "facebook/mask2former-swin-large-coco-panoptic": (
        "panoptic", "COCO", "Swin-L (IN21k)", "PQ 57.8, AP 48.6, mIoU 67.4", COCO, 200,
    ),
    "facebook/mask2former-swin-tiny-coco-instance": (
        "instance", "COCO", "Swin-T", "AP 45.0", COCO, 100,
    ),
    "facebook/mask2former-swin-small-coco-instance": (
        "instance", "COCO", "Swin-S", "AP 46.3", COCO, 100,
    ),
    "facebook/mask2former-swin-base-coco-instance": (
        "instance", "COCO", "Swin-B", "AP 46.7", COCO, 100,
    ),
    "facebook/mask2former-swin-base-IN21k-coco-instance": (
        "instance", "COCO", "Swin-B (IN21k)", "AP 48.1", COCO, 100,
    ),
    "facebook/mask2former-swin-large-coco-instance": (
        "instance", "COCO", "Swin-L (IN21k)", "AP 50.1", COCO, 200,
    ),
    "facebook/mask2former-swin-tiny-ade-semantic": (
        "semantic", "ADE20K", "Swin-T", "mIoU 47.7 (ms+flip 49.6)", ADE_512, 100,
    ),
    "facebook/mask2former-swin-small-ade-semantic": (
        "semantic", "ADE20K", "Swin-S", "mIoU 51.3 (ms+flip 52.4)", ADE_512, 100,
    ),
    "facebook/mask2former-swin-base-ade-semantic": (
        "semantic", "ADE20K", "Swin-B", "mIoU 52.4 (ms+flip 53.7)", ADE_640, 100,
    ),
    "facebook/mask2former-swin-base-IN21k-ade-semantic": (
        "semantic", "ADE20K", "Swin-B (IN21k)", "mIoU 53.9 (ms+flip 55.1)", ADE_640, 100,
    ),
    "facebook/mask2former-swin-large-ade-semantic": (
        "semantic", "ADE20K", "Swin-L (IN21k)", "mIoU 56.1 (ms+flip 57.3)", ADE_640, 100,
    ),
    "facebook/mask2former-swin-large-ade-panoptic": (
        "panoptic", "ADE20K", "Swin-L (IN21k)", "PQ 48.1, AP 34.2, mIoU 54.5", ADE_640, 200,
    ),
    "facebook/mask2former-swin-tiny-cityscapes-semantic": (
        "semantic", "Cityscapes", "Swin-T", "mIoU 82.1 (ms+flip 83.0)", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-small-cityscapes-semantic": (
        "semantic", "Cityscapes", "Swin-S", "mIoU 82.6 (ms+flip 83.6)", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-base-IN21k-cityscapes-semantic": (
        "semantic", "Cityscapes", "Swin-B (IN21k)", "mIoU 83.3 (ms+flip 84.5)", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-large-cityscapes-semantic": (
        "semantic", "Cityscapes", "Swin-L (IN21k)", "mIoU 83.3 (ms+flip 84.3)", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-tiny-cityscapes-instance": (
        "instance", "Cityscapes", "Swin-T", "AP 39.7, AP50 66.9", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-small-cityscapes-instance": (
        "instance", "Cityscapes", "Swin-S", "AP 41.8, AP50 70.4", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-base-IN21k-cityscapes-instance": (
        "instance", "Cityscapes", "Swin-B (IN21k)", "AP 42.0, AP50 68.8", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-large-cityscapes-instance": (
        "instance", "Cityscapes", "Swin-L (IN21k)", "AP 43.7, AP50 71.4", CITYSCAPES, 200,
    ),
    "facebook/mask2former-swin-tiny-cityscapes-panoptic": (
        "panoptic", "Cityscapes", "Swin-T", "PQ 63.9, AP 39.1, mIoU 80.5", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-small-cityscapes-panoptic": (
        "panoptic", "Cityscapes", "Swin-S", "PQ 64.8, AP 40.7, mIoU 81.8", CITYSCAPES, 100,
    ),
    "facebook/mask2former-swin-large-cityscapes-panoptic": (
        "panoptic", "Cityscapes", "Swin-L (IN21k)", "PQ 66.6, AP 43.6, mIoU 82.9", CITYSCAPES, 200,
    ),
    "facebook/mask2former-swin-large-mapillary-vistas-semantic": (
        "semantic", "Mapillary Vistas", "Swin-L (IN21k)", "mIoU 63.2 (ms+flip 64.7)", MAPILLARY, 100,
    ),
    "facebook/mask2former-swin-large-mapillary-vistas-panoptic": (
        "panoptic", "Mapillary Vistas", "Swin-L (IN21k)", "PQ 45.5, mIoU 60.8", MAPILLARY, 200,
    ),
}  # fmt: skip
DATASETS = {
    "COCO": "coco",
    "ADE20K": "ade20k",
    "Cityscapes": "cityscapes",
    "Mapillary Vistas": "mapillary_vistas",
}
BACKBONES = {
    "Swin-T": "swin_t",
    "Swin-S": "swin_s",
    "Swin-B": "swin_b",
    "Swin-B (IN21k)": "swin_b",
    "Swin-L (IN21k)": "swin_l",
}


def readme_rows() -> dict[str, list[str]]:
    """The model-zoo table of the README: hub id → its other cells."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Official weights by name") :]
    section = section[: section.index("\n### ")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`facebook/"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_readme_table_is_the_official_list() -> None:
    rows = readme_rows()
    assert list(rows) == list(ZOO)
    for hub_id, (task, dataset, backbone, paper, _, _) in ZOO.items():
        assert rows[hub_id][:4] == [task, dataset, backbone, paper], hub_id
        assert parse_hub_id(hub_id) == (hub_id, None)


@pytest.mark.parametrize("hub_id", list(ZOO))
def test_each_hub_id_has_a_config_of_ours_with_its_official_settings(
    hub_id: str, tmp_path: Path
) -> None:
    task, dataset, backbone, _, (min_size, max_size, threshold), queries = ZOO[hub_id]
    command = readme_rows()[hub_id][4]
    overrides = re.fullmatch(r"`(experiment=\w+(?: \S+)*)`", command)
    assert overrides, command
    cfg = compose("evaluate", [*overrides[1].split(), f"checkpoint={hub_id}"], tmp_path)
    assert cfg.task.name == task
    assert cfg.dataset.name == DATASETS[dataset]
    assert cfg.backbone.name == BACKBONES[backbone]
    assert (cfg.dataset.test_min_size, cfg.dataset.test_max_size) == (min_size, max_size)
    assert cfg.inference.object_mask_threshold == threshold
    assert cfg.inference.overlap_threshold == 0.8
    assert cfg.model.net.num_queries == queries  # what init_weights= needs to fit
    family = (min_size, max_size, threshold)
    if family in TEST_AUG:
        assert (list(cfg.inference.tta_min_sizes), cfg.inference.tta_max_size) == TEST_AUG[family]
