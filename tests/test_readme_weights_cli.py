"""The README's weights commands as a user types them, each in its own process:
`python scripts/convert_hf.py SRC DST` (exit code, label names kept, the same outputs as the HF
model) and `m2f-evaluate checkpoint=<HF directory>` / `checkpoint=<model-zoo .pkl>` (exit code,
`eval_metrics.json` with the figures the annotation files imply for a model of known output)."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m2f_lightning.checkpoints import load_model
from m2f_lightning.data.synthetic import write_dataset
from tests.helpers import TINY_OVERRIDES, compose
from tests.test_checkpoints import to_d2_key
from tests.test_parity_hf import build_hf, max_abs_differences
from tests.test_train_cli import (
    CLASS_BIAS,
    MASK_LOGIT,
    SKY,
    constant_model,
    constant_prediction_metrics,
    ground_truth,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["sky", "ground", "circle", "square", "triangle"]  # the synthetic dataset's classes


def run_here(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command of this checkout (not the installed copy) as a user would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def m2f_evaluate(overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`m2f-evaluate ...`: the console script's code, run on this checkout."""
    script = (
        "import sys; from m2f_lightning.cli.main import evaluate_main; sys.exit(evaluate_main())"
    )
    return run_here([sys.executable, "-c", script, *overrides], cwd)


def hf_with_names(names: list[str]):
    hf = build_hf(len(names), 6, 32, 7, 3)
    hf.config.id2label = dict(enumerate(names))
    hf.config.label2id = {name: i for i, name in enumerate(names)}
    return hf


def test_convert_hf_script_keeps_the_label_names_and_the_outputs(tmp_path: Path) -> None:
    names = ["person", "traffic light", "sky-other", "road", "wall"]
    hf = hf_with_names(names)
    hf.save_pretrained(tmp_path / "hf")
    dst = tmp_path / "weights" / "m2f.pt"
    done = run_here(
        [sys.executable, str(ROOT / "scripts" / "convert_hf.py"), "hf", str(dst)], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {dst}" in done.stdout
    stored = torch.load(dst, map_location="cpu", weights_only=True)
    assert stored["class_names"] == names
    ours = load_model(dst)
    assert ours.class_names == names
    images = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255
    assert max(max_abs_differences(ours, hf, images)) <= 1e-4
    # a directory without weights: exit 1 and one error line, no file written
    (tmp_path / "empty").mkdir()
    failed = run_here(
        [sys.executable, str(ROOT / "scripts" / "convert_hf.py"), "empty", "out.pt"], tmp_path
    )
    assert failed.returncode == 1 and failed.stderr.startswith("error:"), failed.stderr[-2000:]
    assert not (tmp_path / "out.pt").exists()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=2, num_val=2, seed=0)
    return root


def evaluate_overrides(datasets: Path, run_dir: Path, checkpoint: Path) -> list[str]:
    return [
        f"checkpoint={checkpoint}",
        "task=panoptic",
        "dataset=synthetic",
        *TINY_OVERRIDES,
        f"paths.datasets_dir={datasets}",
        f"hydra.run.dir={run_dir}",
    ]


def constant_hf_dir(path: Path, category: int) -> Path:
    """An HF checkpoint directory whose model predicts `category` over every pixel, set on the
    HF modules themselves (class head, mask embedding, mask projection), as `constant_model`
    does on ours."""
    hf = hf_with_names(NAMES)
    with torch.no_grad():
        projection = hf.model.pixel_level_module.decoder.mask_projection
        projection.weight.zero_()
        projection.bias.zero_()[0] = 1.0
        embedder = hf.model.transformer_module.decoder.mask_predictor.mask_embedder
        last = embedder.get_submodule("2.0")  # the last Linear (no ReLU after it)
        last.weight.zero_()
        last.bias.zero_()[0] = MASK_LOGIT
        hf.class_predictor.weight.zero_()
        hf.class_predictor.bias.zero_()[category] = CLASS_BIAS
    hf.save_pretrained(path)
    return path


@pytest.mark.slow
def test_evaluate_from_an_hf_directory_and_a_model_zoo_pkl_on_the_command_line(
    datasets: Path, tmp_path: Path
) -> None:
    expected = constant_prediction_metrics([g for _, g in ground_truth(datasets)], SKY)
    assert 0 < expected["mIoU"] < 100
    hf_dir = constant_hf_dir(tmp_path / "hf-constant", SKY)
    # a model-zoo .pkl of the command line's architecture (it stores none): original key names
    cfg = compose("evaluate", evaluate_overrides(datasets, tmp_path, Path("unused")), tmp_path)
    weights = {to_d2_key(k): v.numpy() for k, v in constant_model(cfg, SKY).state_dict().items()}
    weights["criterion.empty_weight"] = np.ones(6, dtype=np.float32)
    pkl = tmp_path / "model_final_constant.pkl"
    with pkl.open("wb") as f:
        pickle.dump({"model": weights, "__author__": "test"}, f)
    for name, checkpoint in (("hf", hf_dir), ("pkl", pkl)):
        run_dir = tmp_path / f"eval-{name}"
        done = m2f_evaluate(evaluate_overrides(datasets, run_dir, checkpoint), tmp_path)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
        written = json.loads((run_dir / "eval_metrics.json").read_text())
        assert written["checkpoint"] == str(checkpoint)
        assert written["test"]["PQ"] == pytest.approx(expected["PQ"], abs=1e-4), name
        assert written["test"]["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-4), name
