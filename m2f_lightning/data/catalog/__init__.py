"""Category catalogs: names, dataset ids, thing/stuff and colours per dataset, as JSON data files.

Contiguous class ids (what the model predicts) are the positions in a catalog's category list.
Ids, names and thing/stuff flags are the official ones (tests/test_catalogs_official.py checks
every catalog against them): COCO from detectron2's COCO_CATEGORIES (2017 panoptic categories);
Cityscapes from cityscapesscripts' label table (train ids and colours too); ADE20K from Mask2Former's
register_ade20k_panoptic.py (things = the 100 classes of ade20k_instance_catid_mapping.txt) and
register_ade20k_instance.py (the instance task: its 100 classes, ids = SceneParse150 id − 1, in
Instance100 order); Mapillary Vistas v1.2 from register_mapillary_vistas_panoptic.py (37 things).
The instance tasks of ADE20K and Cityscapes use their thing classes only (`ade20k_instance`: 100,
`cityscapes_instance`: 8), as the official instance configs (SEM_SEG_HEAD.NUM_CLASSES 100 and 8).
Except for Cityscapes, the colours are a fixed generated palette (used for overlays only). Where a
dataset's own annotation JSON lists categories, readers check them against the catalog and fail on
unknown ids.
"""

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

CATALOG_DIR = Path(__file__).parent
AVAILABLE = sorted(p.stem for p in CATALOG_DIR.glob("*.json"))


@dataclass(frozen=True)
class DatasetMetadata:
    """Everything the model, metrics and visualisation need to know about a dataset's classes."""

    name: str
    class_names: list[str]
    dataset_ids: list[int]  # contiguous id → id used in the dataset's files
    is_thing: list[bool]
    colors: list[tuple[int, int, int]]
    ignore_label: int = 255
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def thing_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.is_thing) if t]

    @property
    def stuff_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.is_thing) if not t]

    def contiguous_id(self, dataset_id: int, source: str = "") -> int:
        """Map a file's category id to the contiguous id, with a clear error for unknown ids."""
        lookup = self._lookup
        if dataset_id not in lookup:
            where = f" in {source}" if source else ""
            raise ValueError(
                f"unknown category id {dataset_id}{where} for dataset '{self.name}' "
                f"(known ids: {min(lookup)}..{max(lookup)})"
            )
        return lookup[dataset_id]

    @property
    def _lookup(self) -> dict[int, int]:
        return {d: i for i, d in enumerate(self.dataset_ids)}


@cache
def get_metadata(name: str) -> DatasetMetadata:
    """The catalog of a dataset (coco_panoptic, coco_instance, ade20k, cityscapes, ...)."""
    path = CATALOG_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no category catalog '{name}'; available: {AVAILABLE}")
    data = json.loads(path.read_text())
    cats = data["categories"]
    extra = {k: v for k, v in data.items() if k not in ("name", "categories", "ignore_label")}
    if all("train_id" in c for c in cats):  # cityscapes, cityscapes_instance
        extra["train_ids"] = [c["train_id"] for c in cats]
    return DatasetMetadata(
        name=data["name"],
        class_names=[c["name"] for c in cats],
        dataset_ids=[int(c["id"]) for c in cats],
        is_thing=[bool(c["isthing"]) for c in cats],
        colors=[tuple(c["color"]) for c in cats],
        ignore_label=int(data.get("ignore_label", 255)),
        extra=extra,
    )
