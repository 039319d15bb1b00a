"""Every reader reads back exactly what the synthetic generator wrote, in each real format."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m2f_lightning.data import build_reader, metadata_for, synthetic
from m2f_lightning.data.synthetic import write_dataset

FORMATS = {
    "coco_panoptic": ("coco", ["panoptic", "semantic"]),
    "coco_instance": ("coco", ["instance"]),
    "ade20k": ("ade20k", ["semantic", "panoptic", "instance"]),
    "cityscapes": ("cityscapes", ["semantic", "panoptic", "instance"]),
    "mapillary": ("mapillary_vistas", ["semantic", "panoptic"]),
    "demo": ("synthetic", ["panoptic"]),
}


DRAWN: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # format → split → file → class map


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The generated datasets; DRAWN keeps the class map of every scene as drawn (before any
    writer encoded it), in the contiguous ids of the format's dataset."""
    out = tmp_path_factory.mktemp("datasets")
    original = synthetic.draw_scene
    for i, fmt in enumerate(FORMATS):
        scenes = []
        synthetic.draw_scene = lambda *a, _s=scenes, **k: _s.append(original(*a, **k)) or _s[-1]
        try:
            manifest = write_dataset(fmt, out, num=3, seed=i)
        finally:
            synthetic.draw_scene = original
        _, contiguous = synthetic._category_ids(FORMATS[fmt][0])
        DRAWN[fmt] = {}
        for split, entries in manifest["splits"].items():
            DRAWN[fmt][split] = {}
            for name, scene in zip(entries, scenes[: len(entries)], strict=True):
                classes = np.full(scene.segment_map.shape, 255)
                for seg in scene.segments:
                    classes[scene.segment_map == seg["id"]] = contiguous[seg["role"]]
                DRAWN[fmt][split][name] = classes
            scenes = scenes[len(entries) :]
    return out


def run_prepare_script(name: str, root: Path, *args: str) -> None:
    """Run scripts/<name> on the datasets root, as a user would (with this checkout's package,
    not whichever one is installed)."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    script = repo / "scripts" / name
    subprocess.run([sys.executable, str(script), "--root", str(root), *args], check=True, env=env)


def pixel_counts(classes: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(classes[classes != 255], return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_readers_round_trip_the_generated_dataset(root: Path, fmt: str) -> None:
    dataset, tasks = FORMATS[fmt]
    manifest = json.loads((root / f"{fmt}_manifest.json").read_text())
    for task in tasks:
        meta = metadata_for(dataset, task)
        for split in ("train", "val"):
            reader = build_reader(dataset, task, split, root)
            expected = manifest["splits"][split]
            if task == "instance" and split == "train":  # images without a non-crowd thing
                assert len(reader) == sum(bool(e["segments"]) for e in expected.values())
            else:
                assert len(reader) == len(expected)
            for i in range(len(reader)):
                sample = reader[i]
                truth = expected[Path(sample.file_name).name]
                drawn = DRAWN[fmt][split][Path(sample.file_name).name]
                if sample.id_map is not None:
                    non_crowd = [s for s in sample.segments if not s["iscrowd"]]
                    assert len(non_crowd) == truth["segments"]
                    assert sorted({s["category"] for s in non_crowd}) == truth["classes"]
                    classes = np.full(sample.id_map.shape, 255)
                    for s in sample.segments:
                        classes[sample.id_map == s["id"]] = s["category"]
                    assert pixel_counts(classes) == truth["pixels"]
                    assert int((sample.id_map == 0).sum()) == truth["void"]
                    np.testing.assert_array_equal(classes, drawn)  # every pixel, where drawn
                elif sample.sem_seg is not None:
                    assert pixel_counts(sample.sem_seg) == truth["pixels"]
                    np.testing.assert_array_equal(sample.sem_seg, drawn)
                else:
                    # the manifest counts in the dataset's full catalog; ADE20K and Cityscapes
                    # instance use their thing classes only: compare by class name there
                    subset = meta.name in ("ade20k_instance", "cityscapes_instance")
                    full = metadata_for(dataset, "semantic") if subset else meta
                    things = {meta.class_names[i] for i in meta.thing_ids} if subset else None
                    thing_pixels = {
                        (full.class_names[int(k)] if subset else k): v
                        for k, v in truth["pixels"].items()
                        if (
                            full.class_names[int(k)] in things
                            if subset
                            else int(k) in meta.thing_ids
                        )
                    }
                    got: dict[str, int] = {}
                    for mask, label in zip(sample.masks, sample.labels, strict=True):
                        name = meta.class_names[label] if subset else str(label)
                        got[name] = got.get(name, 0) + int(mask.sum())
                    # COCO JSON stores non-crowd instances as polygons traced from the masks:
                    # rasterising them back differs along the boundary, so allow that much
                    tolerance = 0.15 if type(reader).__name__ == "CocoInstanceReader" else 0.0
                    for k, v in thing_pixels.items():
                        assert abs(got[k] - v) <= tolerance * v, (k, got[k], v)
                        # and where they lie: the union of the class's masks against the drawing
                        union = np.zeros(drawn.shape, dtype=bool)
                        for mask, label in zip(sample.masks, sample.labels, strict=True):
                            if (meta.class_names[label] if subset else str(label)) == k:
                                union |= np.asarray(mask, dtype=bool)
                        drawn_id = full.class_names.index(k) if subset else int(k)
                        wrong = int((union != (drawn == drawn_id)).sum())
                        assert wrong <= 2 * tolerance * v, (k, wrong, v)


def test_unknown_task_for_a_dataset_names_the_valid_ones(root: Path) -> None:
    with pytest.raises(ValueError, match=r"valid tasks: \['semantic', 'panoptic'\]"):
        build_reader("mapillary_vistas", "instance", "train", root)


def test_missing_root_shows_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"(?s)coco dataset not found.*annotations.*make_synthetic"
    ):
        build_reader("coco", "panoptic", "train", tmp_path)


def test_root_comes_from_the_environment(root: Path, monkeypatch) -> None:
    monkeypatch.setenv("M2F_DATASETS", str(root))
    assert len(build_reader("coco", "panoptic", "val")) == 2


def test_crowded_scenes_keep_every_listed_segment(tmp_path: Path) -> None:
    """The benchmark's COCO-like density (12-30 things drawn) still round-trips exactly."""
    manifest = write_dataset(
        "coco_panoptic", tmp_path, num=3, num_val=2, seed=9, size=(96, 128), num_shapes=(12, 30)
    )
    reader = build_reader("coco", "panoptic", "train", tmp_path)
    for i in range(len(reader)):
        sample = reader[i]
        truth = manifest["splits"]["train"][Path(sample.file_name).name]
        assert len([s for s in sample.segments if not s["iscrowd"]]) == truth["segments"]
        assert int((sample.id_map == 0).sum()) == truth["void"]
    assert max(len(reader[i].segments) for i in range(len(reader))) > 8
    with pytest.raises(ValueError, match="num_shapes"):
        write_dataset("demo", tmp_path, num=1, num_shapes=(5, 2))


def test_coco_semantic_prepared_pngs_equal_the_on_the_fly_derivation(tmp_path: Path) -> None:
    """prepare_coco_semantic.py output is read when present and matches deriving it from panoptic."""
    write_dataset("coco_panoptic", tmp_path, num=3, num_val=2, seed=4)
    derived = build_reader("coco", "semantic", "val", tmp_path)
    expected = {}
    for i in range(len(derived)):
        sample = derived[i]
        classes = np.full(sample.id_map.shape, 255, dtype=np.uint8)
        for s in sample.segments:
            classes[sample.id_map == s["id"]] = s["category"]
        expected[Path(sample.file_name).name] = classes
    run_prepare_script("prepare_coco_semantic.py", tmp_path, "--workers", "1")
    prepared = build_reader("coco", "semantic", "val", tmp_path)
    assert type(prepared).__name__ == "SemanticReader" and len(prepared) == len(expected)
    for i in range(len(prepared)):
        sample = prepared[i]
        assert np.array_equal(sample.sem_seg, expected[Path(sample.file_name).name])


def test_ade20k_prepare_script_rebuilds_panoptic_and_instances(tmp_path: Path) -> None:
    """From raw ADE20K (semantic + annotations_instance + mapping file), prepare_ade20k.py makes
    panoptic/instance annotations whose segments equal what the generator drew."""
    write_dataset("ade20k", tmp_path, num=3, num_val=2, seed=6)
    drawn = build_reader("ade20k", "panoptic", "val", tmp_path)

    def areas(sample) -> list[tuple[int, int]]:
        return sorted(
            (s["category"], int((sample.id_map == s["id"]).sum())) for s in sample.segments
        )

    expected = {Path(drawn[i].file_name).name: areas(drawn[i]) for i in range(len(drawn))}
    ade = tmp_path / "ADEChallengeData2016"
    for split in ("train", "val"):
        (ade / f"ade20k_panoptic_{split}.json").unlink()
        (ade / f"ade20k_instance_{split}.json").unlink()
        for png in (ade / f"ade20k_panoptic_{split}").glob("*.png"):
            png.unlink()
    run_prepare_script("prepare_ade20k.py", tmp_path, "--workers", "1")
    panoptic = build_reader("ade20k", "panoptic", "val", tmp_path)
    instance = build_reader("ade20k", "instance", "val", tmp_path)
    things = set(metadata_for("ade20k", "panoptic").thing_ids)
    for i in range(len(panoptic)):
        name = Path(panoptic[i].file_name).name
        assert areas(panoptic[i]) == expected[name]  # ADE20K has no crowd: all segments kept
        inst = instance[i]
        # instance labels are positions among the 100 thing classes: back to ADE150 positions
        to_ade150 = [
            panoptic.metadata.contiguous_id(d)
            for d in metadata_for("ade20k", "instance").dataset_ids
        ]
        got = sorted(
            (to_ade150[int(c)], int(m.sum())) for c, m in zip(inst.labels, inst.masks, strict=True)
        )
        assert got == [a for a in expected[name] if a[0] in things]


def test_cityscapes_panoptic_from_cityscapesscripts_matches_what_was_drawn(tmp_path: Path) -> None:
    """prepare_cityscapes.py (cityscapesScripts' converter, which names images
    `<id>_gtFine_leftImg8bit.png`) gives the segments the generator drew, crowd merged per class."""
    write_dataset("cityscapes", tmp_path, num=2, num_val=3, seed=11)
    drawn = build_reader("cityscapes", "panoptic", "val", tmp_path)

    def areas(sample) -> list[tuple[int, bool, int]]:
        return sorted(
            (s["category"], s["iscrowd"], int((sample.id_map == s["id"]).sum()))
            for s in sample.segments
        )

    expected = {Path(drawn[i].file_name).name: areas(drawn[i]) for i in range(len(drawn))}
    gt = tmp_path / "cityscapes" / "gtFine"
    for split in ("train", "val"):
        (gt / f"cityscapes_panoptic_{split}.json").unlink()
    run_prepare_script("prepare_cityscapes.py", tmp_path)
    converted = build_reader("cityscapes", "panoptic", "val", tmp_path)
    assert len(converted) == len(expected)
    for i in range(len(converted)):
        assert areas(converted[i]) == expected[Path(converted[i].file_name).name]


def test_cityscapes_prepare_rasterises_polygons_to_train_ids(tmp_path: Path) -> None:
    """The trainIds step of prepare_cityscapes.py (cityscapesScripts' createTrainIdLabelImgs) turns
    a `*_gtFine_polygons.json` into the `labelTrainIds` PNG that the semantic reader uses:
    road → 0, car → 13, ego vehicle → ignore, unpainted → ignore."""
    write_dataset("cityscapes", tmp_path, num=2, num_val=2, seed=3)
    sample = build_reader("cityscapes", "semantic", "val", tmp_path)[0]
    height, width = sample.sem_seg.shape
    stem = Path(sample.file_name).name.replace("_leftImg8bit.png", "")
    folder = tmp_path / "cityscapes" / "gtFine" / "val" / stem.split("_")[0]
    (folder / f"{stem}_gtFine_labelTrainIds.png").unlink()
    polygons = {
        "imgHeight": height,
        "imgWidth": width,
        "objects": [  # drawn in order, later over earlier; the top row stays unpainted
            {
                "label": "road",
                "polygon": [[0, 10], [width - 1, 10], [width - 1, height - 1], [0, height - 1]],
            },
            {"label": "car", "polygon": [[20, 30], [80, 30], [80, 60], [20, 60]]},
            {
                "label": "ego vehicle",
                "polygon": [
                    [0, height - 20],
                    [width - 1, height - 20],
                    [width - 1, height - 1],
                    [0, height - 1],
                ],
            },
        ],
    }
    (folder / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
    run_prepare_script("prepare_cityscapes.py", tmp_path)

    sem = build_reader("cityscapes", "semantic", "val", tmp_path)[0].sem_seg
    assert (sem[:10] == 255).all()  # unpainted
    assert (sem[40:50, 30:70] == 13).all()  # car
    assert (sem[15:25, 100:] == 0).all() and (sem[70 : height - 21] == 0).all()  # road
    assert (sem[height - 19 :] == 255).all()  # ego vehicle: ignored in training
    assert set(np.unique(sem).tolist()) == {0, 13, 255}
