"""scripts/gpu_check.py works before a GPU is lent: the no-CUDA message, the report table, and
every section on tiny sizes on CPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "gpu_check needs CUDA" in result.stdout
    assert not out.exists()


def test_unknown_section_is_refused():
    gpu_check = _load_script()
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--sections", "attention,warp"])


def test_synthetic_targets_follow_the_criterion_contract():
    gpu_check = _load_script()
    targets = gpu_check.synthetic_targets(2, 32, torch.device("cpu"), torch.Generator())
    assert len(targets) == 2
    for target in targets:
        assert target["masks"].dtype == torch.bool and target["masks"].shape == (6, 32, 32)
        assert target["labels"].dtype == torch.int64 and target["labels"].shape == (6,)
        assert target["masks"].flatten(1).any(1).all()
        assert int(target["labels"].max()) < gpu_check.NUM_CLASSES


def test_a_failing_model_is_reported_and_the_table_still_prints():
    gpu_check = _load_script()

    def out_of_memory() -> dict:
        raise RuntimeError("CUDA out of memory (pretend)")

    entry = gpu_check.per_model(torch.device("cpu"), out_of_memory)
    assert "out of memory" in entry["error"]
    report = {"sections": {"train": {"swin_l": entry}}, "errors": {"train/swin_l": entry["error"]}}
    rows = gpu_check.table_rows(report)
    assert rows == [("train", "swin_l", "ERROR RuntimeError: CUDA out of memory (pretend)")]


def test_paper_sizes_of_the_checked_models():
    gpu_check = _load_script()
    swin_l = gpu_check.model_kwargs("swin_l", tiny=False)
    assert swin_l["backbone"] == "swin_l" and swin_l["num_queries"] == 200
    assert swin_l["backbone_kwargs"]["drop_path_rate"] == 0.3
    assert gpu_check.model_kwargs("r50", tiny=False)["backbone"] == "r50"


def test_cpu_tiny_attention_and_cuda_cpu_sections_in_process(tmp_path, capsys):
    """The cheap sections run in this process (Triton skipped without the interpreter)."""
    gpu_check = _load_script()
    out = tmp_path / "report.json"
    args = ["--device", "cpu", "--tiny", "--sections", "attention,cuda_cpu", "--out", str(out)]
    assert gpu_check.main(args) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    attention = report["sections"]["attention"]
    assert attention["torch"]["forward_ms"] > 0
    assert report["sections"]["cuda_cpu"]["torch"]["pred_masks"]["max_abs"] == 0.0
    printed = capsys.readouterr().out
    assert "attention" in printed and "cuda_cpu" in printed and "TINY" in printed


@pytest.mark.slow
def test_cpu_tiny_syncs_section_counts_the_training_step(tmp_path, capsys):
    """The count the GPU check makes on CUDA, here on CPU: the matcher's one copy of the
    costs, nothing else, and its table row."""
    gpu_check = _load_script()
    out = tmp_path / "report.json"
    args = ["--device", "cpu", "--tiny", "--sections", "syncs", "--out", str(out)]
    assert gpu_check.main(args) == 0
    cpu = json.loads(out.read_text())["sections"]["syncs"]["cpu"]
    assert cpu["kinds"] == {"d2h": 1}, cpu["events"]
    assert "match_sets" in cpu["events"][0]
    assert "R50 train step 64² on cpu" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_cpu_tiny_run_of_every_section_with_triton_interpreted(tmp_path):
    """All four sections on tiny sizes, the Triton kernels in the interpreter (~30 s of CPU)."""
    out = tmp_path / "tiny.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    sections = report["sections"]
    assert set(sections) == {"attention", "train", "inference", "cuda_cpu", "syncs"}
    assert sections["attention"]["triton_ok"] is True
    for diff in sections["attention"]["triton_vs_torch_fp32"].values():
        assert diff["max_rel"] < 1e-5
    for diff in sections["attention"]["gather_vs_torch_fp32"].values():
        assert diff["max_rel"] < 1e-5
    for name in ("r50", "swin_l"):
        assert sections["train"][name]["losses_finite"]
        assert len(sections["train"][name]["losses"]) == sections["train"][name]["steps"]
        assert sections["inference"][name]["fp32"]["fps"] > 0
    assert sections["cuda_cpu"]["triton"]["pred_masks"]["max_abs"] < 1e-4
    assert "train" in result.stdout and "wrote" in result.stdout
