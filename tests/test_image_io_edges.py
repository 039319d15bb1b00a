"""Edge cases of `m2f_lightning.data.io` and the semantic reader, written from the surviving
mutants of `make mutate MODULE=readers`.

References are outside the code under test: PIL writes the 16/32-bit files and reads them back,
panopticapi's `rgb2id`/`id2rgb` (the COCO panoptic formula id = R + 256·G + 256²·B) and the
little-endian bytes of the ids give the colours, and the expected 8-bit values of 16-bit grey
images are the 8-bit values widened (v * 257) or what PIL decodes from a 16-bit colour PNG.
"""

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image

from m2f_lightning.data.datasets.semantic import SemanticReader
from m2f_lightning.data.io import DataError, check_same_size, id_to_rgb, read_image, rgb_to_id
from m2f_lightning.data.validation import DataWarning

# --- 16- and 32-bit grey images --------------------------------------------------------------

# 8-bit grey values widened to 16 bits the PNG way (v * 257): the example, a dark
# image (77..190) that per-image normalisation brightened to 106..255
EIGHT_BIT = np.array([[77, 100, 190], [77, 120, 190]])
NUMPY_DTYPE = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I": "<i4"}
# the formats PIL writes each mode to and opens again in that same mode
SUFFIX = {"I;16": ".png", "I;16L": ".im", "I;16B": ".tif", "I": ".tif"}


def _grey_file(tmp_path: Path, mode: str, values: np.ndarray, name: str = "grey") -> Path:
    height, width = values.shape
    raw = values.astype(NUMPY_DTYPE[mode]).tobytes()
    path = tmp_path / f"{name}{SUFFIX[mode]}"
    Image.frombytes(mode, (width, height), raw).save(path)
    with Image.open(path) as stored:  # the file really holds that mode
        assert stored.mode == mode
        np.testing.assert_array_equal(np.asarray(stored), values)
    return path


def _rgb16_png(path: Path, values: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (which PIL cannot write) with `values` in every channel."""
    rgb = np.repeat(values[..., None], 3, axis=2).astype(">u2")
    rows = b"".join(b"\0" + row.tobytes() for row in rgb)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I"])
def test_16_bit_grey_keeps_its_8_bit_values_not_stretched_to_its_peak(
    tmp_path: Path, mode: str
) -> None:
    out = read_image(_grey_file(tmp_path, mode, EIGHT_BIT * 257))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], EIGHT_BIT)


def test_16_bit_grey_reads_as_pil_reads_the_same_16_bit_colour_png(tmp_path: Path) -> None:
    # values that are not multiples of 257: PIL keeps the high byte of 16-bit colour samples
    values = np.array([[0, 255, 256, 19789], [40000, 49030, 65280, 65535]])
    with Image.open(_rgb16_png(tmp_path / "rgb16.png", values)) as colour:
        assert colour.mode == "RGB"
        expected = np.asarray(colour)
    np.testing.assert_array_equal(read_image(_grey_file(tmp_path, "I;16", values)), expected)


def test_a_pixel_value_reads_the_same_whatever_the_peak_of_its_image(tmp_path: Path) -> None:
    dark = read_image(_grey_file(tmp_path, "I;16", np.array([[77 * 257, 190 * 257]]), "dark"))
    bright = read_image(_grey_file(tmp_path, "I;16", np.array([[77 * 257, 255 * 257]]), "bright"))
    assert dark[0, 0, 0] == bright[0, 0, 0] == 77


@pytest.mark.parametrize("value", [-1, 65536])
def test_32_bit_grey_outside_16_bits_is_an_error_naming_the_file(
    tmp_path: Path, value: int
) -> None:
    path = _grey_file(tmp_path, "I", np.array([[0, value], [1000, 1000]]))
    with pytest.raises(DataError, match=re.escape(str(path)) + r".*values -?\d+\.\.\d+"):
        read_image(path)


def test_16_bit_grey_holding_8_bit_values_warns_naming_the_file(tmp_path: Path) -> None:
    path = _grey_file(tmp_path, "I;16", np.array([[0, 1, 17], [128, 254, 255]]))
    with pytest.warns(DataWarning, match=re.escape(str(path)) + ".*all below 256"):
        out = read_image(path)
    assert not out.any()  # value >> 8: black, as the warning says


# --- COCO panoptic colours <-> ids -----------------------------------------------------------


def _ids_with_three_nonzero_bytes(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r, g, b = (rng.integers(1, 256, shape) for _ in range(3))
    return r + 256 * g + 65536 * b


def test_rgb_to_id_is_the_coco_panoptic_formula() -> None:
    rgb = np.array([[[1, 2, 3], [255, 255, 255]], [[7, 0, 200], [0, 0, 1]]], dtype=np.uint8)
    expected = [[1 + 2 * 256 + 3 * 65536, 16777215], [7 + 200 * 65536, 65536]]
    assert rgb_to_id(rgb).tolist() == expected
    rng = np.random.default_rng(3)
    many = rng.integers(0, 256, (300, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_id(many), rgb2id(many))


def test_id_to_rgb_matches_panopticapi_past_two_bands() -> None:
    # 600 rows: more than two 256-row bands, and a last band of 88 rows
    ids = _ids_with_three_nonzero_bytes((600, 3), seed=1)
    out = id_to_rgb(ids)
    assert out.dtype == np.uint8 and out.shape == (600, 3, 3)
    np.testing.assert_array_equal(out, id2rgb(ids))
    # the colours are the id's three low bytes, red first (little-endian)
    low_bytes = ids.astype("<u4").view(np.uint8).reshape(600, 3, 4)[..., :3]
    np.testing.assert_array_equal(out, low_bytes)


def test_id_to_rgb_blue_byte_when_green_is_zero() -> None:
    # R + 256·G smaller than B: the blue byte is exactly id // 65536
    ids = np.array([[1 + 200 * 65536, 254 + 255 * 65536], [65536, 3 + 256 * 4 + 65536 * 9]])
    expected = [[[1, 0, 200], [254, 0, 255]], [[0, 0, 1], [3, 4, 9]]]
    assert id_to_rgb(ids).tolist() == expected


def test_id_to_rgb_keeps_the_low_three_bytes_of_ids_past_24_bits_as_panopticapi() -> None:
    ids = np.random.default_rng(5).integers(0, 2**31, (20, 7))
    ids[0, :3] = [2**24, 257 * 65536 + 5, 2**31 - 1]
    out = id_to_rgb(ids)
    np.testing.assert_array_equal(out, id2rgb(ids))
    assert out[0, :3].tolist() == [[0, 0, 0], [5, 0, 1], [255, 255, 255]]


@pytest.mark.parametrize("rows", [1, 7, 256, 1000])
def test_id_to_rgb_round_trips_through_rgb_to_id(rows: int) -> None:
    ids = _ids_with_three_nonzero_bytes((40, 6), seed=rows)
    np.testing.assert_array_equal(rgb_to_id(id_to_rgb(ids, rows=rows)), ids)


# --- size check --------------------------------------------------------------------------------


def test_size_mismatch_names_both_files_with_width_by_height() -> None:
    image = np.zeros((4, 6, 3), dtype=np.uint8)  # 6 wide, 4 high
    label = np.zeros((5, 7), dtype=np.uint8)  # 7 wide, 5 high
    with pytest.raises(DataError) as err:
        check_same_size(image, label, Path("img/a.jpg"), Path("ann/a.png"))
    message = str(err.value)
    assert "ann/a.png is 7x5" in message
    assert "img/a.jpg is 6x4" in message


def test_three_channel_annotation_of_the_image_size_passes() -> None:
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    check_same_size(image, np.zeros((4, 6, 3), dtype=np.uint8), Path("a.jpg"), Path("a.png"))
    check_same_size(image, np.zeros((4, 6), dtype=np.int32), Path("a.jpg"), Path("a.png"))
    with pytest.raises(DataError, match="b.png is 4x6"):
        check_same_size(image, np.zeros((6, 4, 3), dtype=np.uint8), Path("a.jpg"), Path("b.png"))


# --- semantic reader ---------------------------------------------------------------------------


def _semantic_pair(tmp_path: Path, labels: np.ndarray) -> tuple[Path, Path, np.ndarray]:
    rgb = np.random.default_rng(0).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    image, label = tmp_path / "scene_01.jpg", tmp_path / "scene_01.png"
    Image.fromarray(rgb).save(image)
    Image.fromarray(labels).save(label)
    return image, label, np.asarray(Image.open(image).convert("RGB"))


def test_semantic_sample_carries_the_image_and_its_stem(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [2, 255, 0]], dtype=np.uint8)
    image, label, pixels = _semantic_pair(tmp_path, labels)
    sample = SemanticReader([(image, label)], num_classes=3)[0]
    np.testing.assert_array_equal(sample.image, pixels)
    assert sample.image_id == "scene_01"
    assert sample.file_name == str(image)
    np.testing.assert_array_equal(sample.sem_seg, labels)


def test_semantic_label_equal_to_num_classes_is_unknown(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 255, 0]], dtype=np.uint8)  # 3 is one past the last class
    image, label, _ = _semantic_pair(tmp_path, labels)
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(label))}: unknown class ids \[3\] \(expected 0\.\.2 or 255\)",
    ):
        SemanticReader([(image, label)], num_classes=3)[0]
