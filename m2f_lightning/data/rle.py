"""How many pixels the runs of a COCO RLE cover, read without decoding it.

pycocotools decodes runs that fall short of height*width into uninitialised memory (a "mask" of
arbitrary bytes, different from run to run) and writes past the end when they run over; so a
reader checks the total before decoding.
"""

from typing import Any


def _compressed_runs(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed RLE string (COCO's format: each run a signed value in
    5-bit groups, one character each as chr(48 + group), bit 0x20 = more groups follow; from the
    third run on, the value is a difference to the run two before)."""
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("compressed RLE string ends inside a run")
            group = ord(text[pos]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"compressed RLE string has the character {text[pos]!r}")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def check_rle_runs(counts: Any, height: int, width: int) -> None:
    """Raise ValueError unless the RLE's runs are non-negative and add up to height*width."""
    if isinstance(counts, (str, bytes)):
        runs = _compressed_runs(counts)
    elif isinstance(counts, list) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in counts
    ):
        runs = counts
    else:
        raise ValueError("RLE counts must be a compressed string or a list of integers")
    if any(r < 0 for r in runs):
        raise ValueError("RLE has a negative run length")
    if sum(runs) != height * width:
        raise ValueError(f"RLE runs add up to {sum(runs)} pixels, not {height}x{width}")
