"""Every class catalog we ship equals the official class list: dataset ids, names and thing/stuff
flags in the official order (the order is the contiguous id the model predicts). The official
lists are data in tests/official_catalogs.py, transcribed from the official repositories."""

import pytest

from m2f_lightning.data.catalog import AVAILABLE, get_metadata
from tests import official_catalogs as official


def _ours(name: str) -> list[tuple[int, str, int]]:
    meta = get_metadata(name)
    return [
        (d, n, int(t))
        for d, n, t in zip(meta.dataset_ids, meta.class_names, meta.is_thing, strict=True)
    ]


def test_every_shipped_catalog_has_an_official_list() -> None:
    assert set(AVAILABLE) - {"synthetic"} == set(official.OFFICIAL)


@pytest.mark.parametrize("name", sorted(official.OFFICIAL))
def test_catalog_equals_the_official_list(name: str) -> None:
    ours, theirs = _ours(name), list(official.OFFICIAL[name])
    assert len(ours) == len(theirs)
    differ = [
        f"{i}: ours {a}, official {b}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
        if a != b
    ]
    assert not differ, "\n".join(differ)


@pytest.mark.parametrize(
    ("name", "things", "stuff"),
    [
        ("coco_panoptic", 80, 53),
        ("coco_instance", 80, 0),
        ("ade20k", 100, 50),
        ("ade20k_instance", 100, 0),
        ("cityscapes", 8, 11),
        ("cityscapes_instance", 8, 0),
        ("mapillary_vistas", 37, 28),
    ],
)
def test_thing_and_stuff_counts(name: str, things: int, stuff: int) -> None:
    """The counts the papers and official configs state (COCO 80/53, ADE20K 100/50, Cityscapes
    8/11, Mapillary Vistas v1.2 37/28)."""
    meta = get_metadata(name)
    assert (len(meta.thing_ids), len(meta.stuff_ids)) == (things, stuff)


def test_ade20k_things_are_the_official_instance_classes() -> None:
    """The official prepare_ade20k_pan_seg.py makes a class a thing exactly when it is a value of
    ade20k_instance_catid_mapping.txt; the instance task predicts those 100 classes in the order
    of their Instance100 ids, and its files name them by SceneParse150 id − 1."""
    meta, instance = get_metadata("ade20k"), get_metadata("ade20k_instance")
    mapped = [ade_id for _, ade_id, _ in official.ADE20K_INSTANCE]
    assert [meta.dataset_ids[i] for i in meta.thing_ids] == sorted(mapped)
    assert instance.dataset_ids == mapped
    assert [ins for ins, _, _ in official.ADE20K_INSTANCE] == list(range(1, 101))
    # the same class in both catalogs: fence (32) a thing, poster (100) stuff
    assert meta.is_thing[meta.contiguous_id(32)] and not meta.is_thing[meta.contiguous_id(100)]
    assert instance.class_names[instance.contiguous_id(32)] == "fence"
    with pytest.raises(ValueError, match="unknown category id 100"):
        instance.contiguous_id(100)


def test_mapillary_crosswalk_is_a_thing_and_on_rails_stuff() -> None:
    meta = get_metadata("mapillary_vistas")
    flags = dict(zip(meta.class_names, meta.is_thing, strict=True))
    assert flags["Lane Marking - Crosswalk"] and not flags["On Rails"]


@pytest.mark.parametrize("name", ["cityscapes", "cityscapes_instance"])
def test_cityscapes_train_ids_and_colours_are_cityscapesscripts(name: str) -> None:
    """Our Cityscapes catalogs claim cityscapesScripts' train ids and colours: check both."""
    meta = get_metadata(name)
    train_ids = [i for i, row in enumerate(official.CITYSCAPES) if row in official.OFFICIAL[name]]
    assert meta.extra["train_ids"] == train_ids
    assert meta.colors == [official.CITYSCAPES_COLORS[t] for t in train_ids]
