"""Predict goes on (issue 12 §5): every readable input is predicted and written as soon as it is
done; unreadable inputs are named at the end and the command exits 1; directories and FIFOs
named like images are skipped as non-files, never opened nor blamed as missing."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_lightning.checkpoints.io import save_model
from m2f_lightning.cli import main as cli
from m2f_lightning.cli.commands import InputsFailed, predict
from m2f_lightning.data import torch_datasets
from tests.helpers import TINY_OVERRIDES, compose, tiny_model

ARGS = ["task=panoptic", "dataset=synthetic", *TINY_OVERRIDES, "dataset.eval_batch_size=1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_model(tiny_model(num_classes=5), path)
    return path


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    good = [_image(folder / f"good{i}.jpg", i) for i in range(3)]
    bad = folder / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    (folder / "dir.jpg").mkdir()  # a folder named like an image
    os.mkfifo(folder / "pipe.png")  # opening it would block forever
    return {"folder": folder, "good": good, "bad": bad, "missing": tmp_path / "missing.jpg"}


def test_predict_writes_every_readable_input_and_names_the_unreadable(
    tmp_path: Path, checkpoint: Path, inputs: dict, capsys: pytest.CaptureFixture
) -> None:
    listed = f"inputs=[{inputs['folder']},{inputs['missing']},{inputs['folder'] / 'pipe.png'}]"
    cfg = compose("predict", [*ARGS, f"checkpoint={checkpoint}", listed], tmp_path / "out")
    with pytest.raises(InputsFailed) as failed:
        predict(cfg, tmp_path / "out")
    assert sorted(name for name, _ in failed.value.failed) == sorted(
        [str(inputs["bad"]), str(inputs["missing"])]
    )
    assert dict(failed.value.failed)[str(inputs["missing"])] == "no such file"
    out = tmp_path / "out" / "predictions"
    for image in inputs["good"]:
        assert (out / f"{image.stem}_overlay.png").is_file()
        assert (out / f"{image.stem}_panoptic.png").is_file()
    listed_ids = {
        a["image_id"]
        for a in __import__("json").loads((out / "panoptic.json").read_text())["annotations"]
    }
    assert listed_ids == {p.stem for p in inputs["good"]}
    printed = capsys.readouterr().out
    assert f"skipped {inputs['folder'] / 'dir.jpg'}: not a regular file" in printed
    assert f"skipped {inputs['folder'] / 'pipe.png'}: not a regular file" in printed
    assert "pipe.png" not in str(failed.value) and "dir.jpg" not in str(failed.value)


def test_each_result_is_written_before_later_inputs_are_read(
    tmp_path: Path, checkpoint: Path, inputs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "predictions"
    seen: list[tuple[str, set[str]]] = []
    read_image = torch_datasets.read_image

    def spying_read(path):
        seen.append((Path(path).stem, {p.name for p in out.glob("*_overlay.png")}))
        return read_image(path)

    monkeypatch.setattr(torch_datasets, "read_image", spying_read)
    folder = tmp_path / "many"
    folder.mkdir()
    images = [_image(folder / f"img{i}.png", i) for i in range(4)]
    cfg = compose("predict", [*ARGS, f"checkpoint={checkpoint}", f"inputs={folder}"], out.parent)
    predict(cfg, out.parent)
    order = [stem for stem, _ in seen]
    assert order == [p.stem for p in images]
    # the loop prefetches one batch: when image k is read, image k-2's files are on disk
    for k in range(2, len(images)):
        assert f"{images[k - 2].stem}_overlay.png" in seen[k][1]


def test_cli_exits_1_naming_the_failed_input(
    tmp_path: Path, checkpoint: Path, inputs: dict, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    argv = [
        "m2f-predict",
        *ARGS,
        f"checkpoint={checkpoint}",
        f"inputs=[{inputs['good'][0]},{inputs['bad']}]",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # a user's view: no traceback
    with pytest.raises(SystemExit) as exit_info:
        cli.predict_main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert str(inputs["bad"]) in err and "1 input(s) could not be read" in err
    assert (tmp_path / "run" / "predictions" / "good0_overlay.png").is_file()
