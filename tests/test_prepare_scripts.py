"""The README's prepare scripts in parallel and after an interruption: `--workers 2` writes the
same bytes as `--workers 1`, and a run that stopped part-way (a crash on one input under two
workers; a run killed in the middle of writing a PNG) completes on the rerun with the same bytes
as an uninterrupted run."""

import io
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from m2f_lightning.data.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]

# script → (format written by the generator, dataset folder, outputs it writes: globs under it)
SCRIPTS = {
    "prepare_ade20k.py": (
        "ade20k",
        "ADEChallengeData2016",
        [
            "annotations_detectron2/**/*.png",
            "ade20k_panoptic_*/*.png",
            "ade20k_panoptic_*.json",
            "ade20k_instance_*.json",
        ],
    ),
    "prepare_coco_semantic.py": ("coco_panoptic", "coco", ["panoptic_semseg_*/*.png"]),
}


def prepare(script: str, root: Path, workers: int) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "scripts" / script), "--root", str(root)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*args, "--workers", str(workers)], capture_output=True, text=True, env=env, timeout=600
    )


def outputs(script: str, root: Path) -> dict[str, bytes]:
    _, folder, globs = SCRIPTS[script]
    base = root / folder
    files = {p for g in globs for p in base.glob(g) if p.is_file()}
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(files)}


def raw_dataset(script: str, root: Path) -> Path:
    """The generated dataset without the files the script derives (10 training images: more
    than one chunk of 8 jobs, so both workers get some)."""
    fmt, folder, globs = SCRIPTS[script]
    write_dataset(fmt, root, num=10, num_val=3, seed=3, num_shapes=(1, 3))
    for g in globs:
        for path in (root / folder).glob(g):
            path.unlink()
    return root


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no `except Exception` catches it."""


def run_killed_while_saving(script: str, root: Path, at: int) -> None:
    """Run the script in this process (one worker) and stop it while it writes its `at`-th PNG,
    after half of that file's bytes reached the disk."""
    real_save, calls = Image.Image.save, []

    def save(image, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) < at:
            return real_save(image, fp, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(image, buffer, *args, **kwargs)
        data = buffer.getvalue()
        Path(fp).write_bytes(data[: len(data) // 2])
        raise Killed

    argv = sys.argv
    sys.argv = [script, "--root", str(root), "--workers", "1"]
    Image.Image.save = save
    try:
        with pytest.raises(Killed):
            runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    finally:
        Image.Image.save, sys.argv = real_save, argv
    assert len(calls) == at


@pytest.mark.slow
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_prepare_with_two_workers_and_after_an_interruption_writes_the_same_bytes(
    tmp_path: Path, script: str
) -> None:
    raw = raw_dataset(script, tmp_path / "raw")
    runs = {}
    for workers in (1, 2):
        root = tmp_path / f"workers{workers}"
        shutil.copytree(raw, root)
        done = prepare(script, root, workers)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[workers] = outputs(script, root)
    reference = runs[1]
    assert sum(name.endswith(".png") for name in reference) >= 13, sorted(reference)
    assert runs[2] == reference

    # stopped by an error under two workers: one training input unreadable part-way
    root = tmp_path / "crashed"
    shutil.copytree(raw, root)
    folder = root / SCRIPTS[script][1]
    inputs = sorted(
        p for p in folder.rglob("*.png") if p.parent.name in ("training", "panoptic_train2017")
    )
    broken = inputs[len(inputs) // 2]
    original = broken.read_bytes()
    broken.write_bytes(b"not a png")
    stopped = prepare(script, root, 2)
    assert stopped.returncode != 0
    assert len(outputs(script, root)) < len(reference), "the crash must leave work to do"
    broken.write_bytes(original)
    rerun = prepare(script, root, 2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert outputs(script, root) == reference

    # killed in the middle of writing its 5th PNG: the rerun redoes that file
    root = tmp_path / "killed"
    shutil.copytree(raw, root)
    run_killed_while_saving(script, root, at=5)
    assert len(outputs(script, root)) < len(reference)
    rerun = prepare(script, root, 2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert outputs(script, root) == reference
    assert not list(root.rglob("*.partial"))
