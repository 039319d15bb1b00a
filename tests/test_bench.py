"""`scripts/bench.py --quick`: every row of the table, with both timings, lands in the JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_writes_every_row_with_both_timings(tmp_path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--json", str(out)],
        check=True,
        cwd=REPO,
        timeout=900,
    )
    rows = json.loads(out.read_text())["rows"]
    names = [r["row"] for r in rows]
    for prefix in (
        "train step, batch 2, 32²",
        "train step, batch 2, 64²",
        "FLOPs per train step",
        "peak RSS",
        "inference, batch 1",
        "inference, batch 1, 64², ours runtime=onnxruntime",
        "host syncs per train step",
        "criterion",
        "PQ metric",
        "LSJ",
    ):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    assert any(n.endswith("ours checkpointed") for n in names), names
    assert len(rows) == 11
    (onnx_row,) = [r for r in rows if r["row"].endswith("runtime=onnxruntime")]
    assert onnx_row["check"]["mask_agreement"] >= 0.999, onnx_row["check"]
    for row in rows:
        assert row["ours"] > 0 and row["reference"] > 0, row
        assert row["ratio"] > 0, row
