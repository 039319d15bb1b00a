"""`m2f_lightning.data.rle`: the run total of a COCO RLE, read without decoding, against
pycocotools' own encoder, and every malformed string refused with a ValueError."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from m2f_lightning.data.rle import check_rle_runs


def column_runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed runs: down the columns, starting with a (possibly empty) run of 0s."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *runs] if flat[0] == 1 else runs


@pytest.mark.parametrize("seed", range(40))
def test_strings_written_by_pycocotools_cover_their_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, 2)
    mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    if seed % 5 == 0:
        mask[:] = seed % 2  # one run only, of 1s or of 0s
    rle = mask_utils.encode(np.asfortranarray(mask))
    for counts in (
        rle["counts"],
        rle["counts"].decode("ascii"),
    ):  # bytes as written, str as in JSON
        check_rle_runs(counts, int(h), int(w))
    check_rle_runs(column_runs(mask), int(h), int(w))
    # one pixel more or fewer is refused, whichever form
    with pytest.raises(ValueError, match=f"RLE runs add up to {h * w} pixels, not {h}x{w + 1}"):
        check_rle_runs(rle["counts"], int(h), int(w) + 1)
    with pytest.raises(ValueError, match=f"not {h + 1}x{w}"):
        check_rle_runs(column_runs(mask), int(h) + 1, int(w))


def test_long_runs_use_several_characters_and_differences() -> None:
    """Runs over 15 need more than one 5-bit group; from the third run on the string holds the
    difference to the run two before (here 4983 after 1000)."""
    flat = np.zeros(6000, np.uint8)
    flat[1000:1017] = 1  # runs 1000, 17, 4983 down the columns
    mask = np.asfortranarray(flat.reshape((100, 60), order="F"))
    assert column_runs(mask) == [1000, 17, 4983]
    rle = mask_utils.encode(mask)
    assert len(rle["counts"]) > 3
    check_rle_runs(rle["counts"], 100, 60)
    with pytest.raises(ValueError, match="add up to 6000 pixels, not 100x61"):
        check_rle_runs(rle["counts"], 100, 61)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ("P", "compressed RLE string ends inside a run"),  # 'P' = 48 + 0x20: more groups follow
        ("1P", "compressed RLE string ends inside a run"),
        ("p", "compressed RLE string has the character 'p'"),  # 48 + 64: out of range
        ("/", "compressed RLE string has the character '/'"),  # 47: below '0'
        ([3, 1.0], "RLE counts must be a compressed string or a list of integers"),
        ([3, True], "RLE counts must be a compressed string or a list of integers"),
        ({"a": 1}, "RLE counts must be a compressed string or a list of integers"),
        ([5, -1], "RLE has a negative run length"),
    ],
)
def test_malformed_counts_are_a_value_error_saying_what(counts: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_rle_runs(counts, 2, 2)
    assert str(err.value) == message
