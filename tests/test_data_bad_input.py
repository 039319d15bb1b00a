"""Bad files give errors that name the file; odd but valid images are converted."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.data import build_reader
from m2f_lightning.data.io import DataError, read_image
from m2f_lightning.data.synthetic import write_dataset


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, seed=3)
    return tmp_path


def panoptic_json(root: Path) -> Path:
    return root / "coco" / "annotations" / "panoptic_val2017.json"


def test_missing_image_is_named(coco: Path) -> None:
    (coco / "coco" / "val2017" / "000000000001.jpg").unlink()
    with pytest.raises(DataError, match="missing file: .*000000000001.jpg"):
        build_reader("coco", "panoptic", "val", coco)[0]


def test_corrupt_image_is_named(coco: Path) -> None:
    (coco / "coco" / "val2017" / "000000000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="corrupt or unreadable image .*000000000001.jpg"):
        build_reader("coco", "panoptic", "val", coco)[0]


def test_annotation_of_another_size_is_named(coco: Path) -> None:
    png = coco / "coco" / "panoptic_val2017" / "000000000001.png"
    Image.open(png).resize((50, 40)).save(png)
    with pytest.raises(DataError, match="000000000001.png is 50x40 but its image"):
        build_reader("coco", "panoptic", "val", coco)[0]


def test_segment_listed_but_absent_from_png(coco: Path) -> None:
    data = json.loads(panoptic_json(coco).read_text())
    data["annotations"][0]["segments_info"].append({"id": 4242, "category_id": 1, "iscrowd": 0})
    panoptic_json(coco).write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"segment ids \[4242\] listed .* absent from the PNG"):
        build_reader("coco", "panoptic", "val", coco)[0]


def test_segment_in_png_but_not_listed(coco: Path) -> None:
    data = json.loads(panoptic_json(coco).read_text())
    dropped = data["annotations"][0]["segments_info"].pop()
    panoptic_json(coco).write_text(json.dumps(data))
    with pytest.raises(
        DataError, match=rf"segment ids \[{dropped['id']}\] in the PNG are not listed"
    ):
        build_reader("coco", "panoptic", "val", coco)[0]


def test_unknown_category_id_is_named(coco: Path) -> None:
    data = json.loads(panoptic_json(coco).read_text())
    data["annotations"][0]["segments_info"][0]["category_id"] = 12  # not a COCO panoptic id
    panoptic_json(coco).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown category id 12 in .*panoptic_val2017.json"):
        build_reader("coco", "panoptic", "val", coco)


def test_image_without_segments_is_allowed(coco: Path) -> None:
    data = json.loads(panoptic_json(coco).read_text())
    data["annotations"][0]["segments_info"] = []
    panoptic_json(coco).write_text(json.dumps(data))
    png = coco / "coco" / "panoptic_val2017" / "000000000001.png"
    Image.fromarray(np.zeros((160, 224, 3), dtype=np.uint8)).save(png)
    sample = build_reader("coco", "panoptic", "val", coco)[0]
    assert sample.segments == [] and (sample.id_map == 0).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_odd_image_modes_become_rgb_uint8(tmp_path: Path, mode: str) -> None:
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode == "P":
        image = Image.fromarray(rgb).convert("P")
    else:
        image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / "x.png"
    image.save(path)
    out = read_image(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if mode == "I;16":  # 16-bit grey scaled to 8 bits, in all three channels
        expected = np.repeat(rgb[..., :1], 3, axis=2)
        assert np.abs(out.astype(int) - expected).max() <= 1
    else:  # the pixels PIL's own RGB conversion gives (grey replicated, alpha dropped, palette)
        expected = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(out, expected)
        if mode != "L":
            assert np.abs(out.astype(int) - rgb).max() <= (0 if mode == "RGBA" else 64)


def _rotated_jpeg(path: Path) -> None:
    """A 20x40 (HxW) JPEG, left half white, tagged "rotate 90° clockwise to display"."""
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(path, exif=exif, quality=100)


def test_exif_rotation_is_applied_as_detectron2_does(tmp_path: Path) -> None:
    """detectron2's read_image applies EXIF orientation; so do we (white half ends up on top)."""
    _rotated_jpeg(tmp_path / "r.jpg")
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50


def test_exif_rotated_image_against_stored_grid_annotation_is_named(coco: Path) -> None:
    """An annotation drawn on the unrotated grid no longer matches: error, not a shifted mask."""
    image = coco / "coco" / "val2017" / "000000000001.jpg"
    stored = np.asarray(Image.open(image))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(image, exif=exif, quality=95)
    with pytest.raises(DataError, match="000000000001.png is .* but its image .*000000000001.jpg"):
        build_reader("coco", "panoptic", "val", coco)[0]
