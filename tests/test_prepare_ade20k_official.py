"""scripts/prepare_ade20k.py, read back with our readers, gives what the official Mask2Former
scripts make of the same raw files (datasets/prepare_ade20k_{sem,pan,ins}_seg.py, read through
register_ade20k_{panoptic,instance}.py):

- semantic: class k → k − 1, 0 ("other") → 255;
- panoptic: every stuff class (isthing 0 in the official list) of the semantic map is one
  segment, then every instance of annotations_instance (G ≠ 0; R = Instance100 class, mapped with
  ade20k_instance_catid_mapping.txt) is pasted over it as a thing segment; pixels of a thing class
  without an instance are void;
- instance: one instance per G ≠ 0, category = SceneParse150 id − 1 of its R class.

The expected segments are computed here from the raw files with those rules and the official
tables (tests/official_catalogs.py), not with our code. The raw files are the synthetic ADE20K
layout with a poster band (stuff), fence instances (things) and fence pixels without an instance
painted over each image, and the official mapping file."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.data import build_reader
from m2f_lightning.data.catalog import get_metadata
from m2f_lightning.data.synthetic import write_dataset
from tests import official_catalogs as official

ROOT = Path(__file__).resolve().parents[1]
IS_THING = {ade_id: bool(t) for ade_id, _, t in official.ADE20K}
INSTANCE_TO_ADE = {ins: ade_id for ins, ade_id, _ in official.ADE20K_INSTANCE}
ADE_TO_INSTANCE = {ade_id: ins for ins, ade_id in INSTANCE_TO_ADE.items()}
FENCE, POSTER = 32, 100
SPLITS = {"train": "training", "val": "validation"}


def official_mapping_file() -> str:
    """ade20k_instance_catid_mapping.txt's first two columns (the third is not read)."""
    rows = [f"{ins}\t{ade_id + 1}\t0" for ins, ade_id, _ in official.ADE20K_INSTANCE]
    return "Instacne100\tSceneParse150\tFullADE20K\n" + "\n".join(rows) + "\n"


def paint_fence_and_poster(sem_png: Path, inst_png: Path) -> None:
    """A poster band (semantic only), two fence instances, fence pixels in the semantic map that
    no instance covers, and fence-class pixels with instance id 0 (no instance) over the poster
    band; one fence instance lies over the poster band."""
    sem = np.array(Image.open(sem_png))
    inst = np.array(Image.open(inst_png))
    h, w = sem.shape
    used = int(inst[..., 1].max())
    sem[: h // 4, :] = POSTER + 1
    inst[: h // 4, :] = 0
    inst[: h // 4, w - 12 :] = (ADE_TO_INSTANCE[FENCE], 0, 0)  # G = 0: stays poster
    sem[h - h // 4 :, : w // 2] = FENCE + 1  # no instance: void
    inst[h - h // 4 :, : w // 2] = 0
    fence = ADE_TO_INSTANCE[FENCE]
    sem[2:10, 4:20] = FENCE + 1
    inst[2:10, 4:20] = (fence, used + 1, 0)  # over the poster band
    sem[h - 8 :, w - 20 : w - 4] = FENCE + 1
    inst[h - 8 :, w - 20 : w - 4] = (fence, used + 2, 0)
    Image.fromarray(sem).save(sem_png)
    Image.fromarray(inst).save(inst_png)


def official_segments(sem_png: Path, inst_png: Path) -> list[tuple[int, bool, bytes]]:
    """(ADE20K id, isthing, mask) of the segments the official prepare scripts make."""
    sem = np.array(Image.open(sem_png)).astype(np.int64) - 1
    inst = np.array(Image.open(inst_png)).astype(np.int64)
    cls, ins = inst[..., 0], inst[..., 1]
    segments = []
    for c in np.unique(sem):
        if c >= 0 and not IS_THING[int(c)]:
            mask = (sem == c) & (ins == 0)  # stuff first, instances pasted over it
            if mask.any():
                segments.append((int(c), False, np.packbits(mask).tobytes()))
    for g in np.unique(ins):
        if g == 0:
            continue
        mask = ins == g
        (r,) = np.unique(cls[mask])
        segments.append((INSTANCE_TO_ADE[int(r)], True, np.packbits(mask).tobytes()))
    return sorted(segments)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ade")
    write_dataset("ade20k", root, num=2, num_val=2, seed=5, size=(48, 64), num_shapes=(1, 2))
    ade = root / "ADEChallengeData2016"
    # the generator writes the official mapping (its first two columns)
    generated = (ade / "ade20k_instance_catid_mapping.txt").read_text().splitlines()
    assert [line.split()[:2] for line in generated[1:]] == [
        line.split()[:2] for line in official_mapping_file().splitlines()[1:]
    ]
    (ade / "ade20k_instance_catid_mapping.txt").write_text(official_mapping_file())
    for split, folder in SPLITS.items():
        (ade / f"ade20k_panoptic_{split}.json").unlink()
        (ade / f"ade20k_instance_{split}.json").unlink()
        for png in (ade / "annotations" / folder).glob("*.png"):
            paint_fence_and_poster(png, ade / "annotations_instance" / folder / png.name)
    argv = sys.argv
    sys.argv = ["prepare_ade20k.py", "--root", str(root), "--workers", "1"]
    try:
        runpy.run_path(str(ROOT / "scripts" / "prepare_ade20k.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return root


def _raw(root: Path, split: str, file_name: str) -> tuple[Path, Path]:
    ade, stem = root / "ADEChallengeData2016", Path(file_name).stem
    folder = SPLITS[split]
    return (
        ade / "annotations" / folder / f"{stem}.png",
        ade / "annotations_instance" / folder / f"{stem}.png",
    )


def _script() -> dict:
    return runpy.run_path(str(ROOT / "scripts" / "prepare_ade20k.py"))


def test_a_mapping_onto_a_stuff_class_is_an_error(tmp_path: Path) -> None:
    """The official scripts make the mapped classes things; a mapping file that maps onto a
    class our catalog (= the official list) has as stuff would give other things: refused."""
    path = tmp_path / "mapping.txt"
    path.write_text(
        f"Instacne100\tSceneParse150\tFullADE20K\n1\t{FENCE + 1}\t0\n2\t{POSTER + 1}\t0\n"
    )
    script = _script()
    with pytest.raises(script["DataError"], match=rf"{path}: .*ids \[{POSTER}\]"):
        script["read_instance_mapping"](path, get_metadata("ade20k"))
    path.write_text(official_mapping_file())
    assert script["read_instance_mapping"](path, get_metadata("ade20k")) == INSTANCE_TO_ADE


def test_an_instance_class_missing_from_the_mapping_is_an_error(tmp_path: Path) -> None:
    sem, inst = tmp_path / "sem.png", tmp_path / "inst.png"
    Image.fromarray(np.full((4, 6), FENCE + 1, np.uint8)).save(sem)
    raw = np.zeros((4, 6, 3), np.uint8)
    raw[:2] = (101, 1, 0)
    Image.fromarray(raw).save(inst)
    script = _script()
    with pytest.raises(script["DataError"], match=rf"{inst}: instance class 101 "):
        script["panoptic_of"](sem, inst, {FENCE}, INSTANCE_TO_ADE)


@pytest.mark.parametrize("split", list(SPLITS))
def test_panoptic_segments_are_the_official_ones(prepared: Path, split: str) -> None:
    reader = build_reader("ade20k", "panoptic", split, prepared)
    assert len(reader) == 2
    for i in range(len(reader)):
        sample = reader[i]
        got = sorted(
            (
                reader.metadata.dataset_ids[s["category"]],
                reader.metadata.is_thing[s["category"]],
                np.packbits(sample.id_map == s["id"]).tobytes(),
            )
            for s in sample.segments
        )
        expected = official_segments(*_raw(prepared, split, sample.file_name))
        assert got == expected
        kinds = {(c, t) for c, t, _ in got}
        assert (POSTER, False) in kinds and (FENCE, True) in kinds
        assert sum(c == FENCE for c, _, _ in got) == 2  # the two instances, nothing else


@pytest.mark.parametrize("split", list(SPLITS))
def test_instances_are_the_official_ones(prepared: Path, split: str) -> None:
    """The instance reader accepts the fence instances (category 32) and reads every instance
    with the official category id and mask."""
    reader = build_reader("ade20k", "instance", split, prepared)
    assert len(reader) == 2
    for i in range(len(reader)):
        sample = reader[i]
        got = sorted(
            (reader.metadata.dataset_ids[int(c)], True, np.packbits(m.astype(bool)).tobytes())
            for c, m in zip(sample.labels, sample.masks, strict=True)
        )
        expected = [s for s in official_segments(*_raw(prepared, split, sample.file_name)) if s[1]]
        assert got == expected
        assert sum(c == FENCE for c, _, _ in got) == 2


def test_instance_json_categories_are_the_official_ones(prepared: Path) -> None:
    """ade20k_instance_*.json lists the official instance registration's ids and names (so our
    reader, which compares them with the catalog, and the official one see the same classes)."""
    data = json.loads((prepared / "ADEChallengeData2016" / "ade20k_instance_val.json").read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [
        (ade_id, name) for _, ade_id, name in official.ADE20K_INSTANCE
    ]


def test_semantic_labels_are_the_official_shift(prepared: Path) -> None:
    reader = build_reader("ade20k", "semantic", "val", prepared)
    for i in range(len(reader)):
        sample = reader[i]
        raw = np.array(Image.open(_raw(prepared, "val", sample.file_name)[0])).astype(np.int64)
        assert np.array_equal(sample.sem_seg, np.where(raw == 0, 255, raw - 1))
        assert (sample.sem_seg == POSTER).any() and (sample.sem_seg == FENCE).any()
