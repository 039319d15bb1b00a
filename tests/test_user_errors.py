"""Issue 12: a user's mistake is one short message naming the culprit (no traceback), a bug keeps
its traceback, nothing contradictory in the data is accepted silently, and Lightning's noise is
quiet."""

import json
import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from m2f_lightning.checkpoints import load_model
from m2f_lightning.checkpoints.reading import load_torch_file
from m2f_lightning.cli.main import run_command
from m2f_lightning.data import build_reader
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.data.validation import DataWarning
from m2f_lightning.errors import CheckpointError, DataError, RefusedPickleError, UserError
from tests.helpers import tiny_model


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, seed=3)
    write_dataset("coco_instance", tmp_path, num=2, num_val=2, seed=3)
    return tmp_path


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


PANOPTIC = Path("coco/annotations/panoptic_val2017.json")
INSTANCES = Path("coco/annotations/instances_val2017.json")


# --- one error format -------------------------------------------------------------------------


def test_a_users_mistake_is_one_line_and_exit_1_without_traceback(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def command(cfg):
        raise DataError("bad.json: annotation #3 has no image_id")

    with pytest.raises(SystemExit) as exit_info:
        run_command(command, OmegaConf.create({}))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: bad.json: annotation #3 has no image_id" in err
    assert "Traceback" not in err


def test_verbose_or_hydra_full_error_shows_the_traceback(monkeypatch, capsys) -> None:
    def command(cfg):
        raise DataError("broken")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(DataError):
        run_command(command, OmegaConf.create({"verbose": True}))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(DataError):
        run_command(command, OmegaConf.create({}))
    assert capsys.readouterr().err.count("error: broken") == 2


def test_a_bug_gets_an_error_line_and_keeps_its_traceback(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def command(cfg):
        return [][1]

    with pytest.raises(IndexError):
        run_command(command, OmegaConf.create({}))
    assert "error: unexpected IndexError" in capsys.readouterr().err


def test_error_types_stay_the_builtin_ones_callers_catch() -> None:
    assert issubclass(DataError, ValueError) and issubclass(DataError, UserError)
    assert issubclass(RefusedPickleError, pickle.UnpicklingError)


# --- annotation files -------------------------------------------------------------------------


def test_panoptic_json_without_annotations_names_the_file(coco: Path) -> None:
    edit_json(coco / PANOPTIC, lambda d: d.pop("annotations"))
    with pytest.raises(DataError, match=r"panoptic_val2017.json has no 'annotations' list"):
        build_reader("coco", "panoptic", "val", coco)


def test_panoptic_duplicate_segment_id_and_bad_iscrowd_are_named(coco: Path) -> None:
    def change(d):
        segs = d["annotations"][0]["segments_info"]
        segs.append(dict(segs[0]))
        segs[1]["iscrowd"] = 2

    edit_json(coco / PANOPTIC, change)
    with pytest.raises(DataError) as err:
        build_reader("coco", "panoptic", "val", coco)
    text = str(err.value)
    assert "listed twice" in text and "iscrowd is 2" in text and "000000000001" in text
    assert len(err.value.problems) == 2  # all problems, not the first


def test_rle_of_another_size_than_its_image_names_the_annotation(coco: Path) -> None:
    from pycocotools import mask as mask_utils

    def change(d):
        rle = mask_utils.encode(np.ones((10, 12), dtype=np.uint8, order="F"))
        ann = d["annotations"][0]
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        ann["id"] = 777

    edit_json(coco / INSTANCES, change)
    with pytest.raises(DataError, match=r"annotation id 777 .*RLE size 12x10 .*differs from its"):
        build_reader("coco", "instance", "val", coco)


def test_degenerate_polygons_are_skipped_with_one_counting_warning(coco: Path) -> None:
    def change(d):
        d["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]  # 2 points
        d["annotations"][1]["segmentation"] = []

    edit_json(coco / INSTANCES, change)
    n = len(json.loads((coco / INSTANCES).read_text())["annotations"])
    with pytest.warns(DataWarning, match=r"skipped 2 annotation\(s\) without a valid polygon"):
        reader = build_reader("coco", "instance", "val", coco)
    assert sum(len(reader[i].labels) for i in range(len(reader))) == n - 2


def test_categories_that_differ_from_the_catalog_are_listed(coco: Path) -> None:
    def change(d):
        d["categories"][0]["name"] = "human"
        d["categories"][1]["isthing"] = 0

    edit_json(coco / PANOPTIC, change)
    with pytest.warns(DataWarning) as caught:
        build_reader("coco", "panoptic", "val", coco)
    (message,) = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert "id 1 is named 'human' in the file, 'person' in the catalog" in message
    assert "id 2 ('bicycle') has isthing=0" in message


def test_a_clean_dataset_gives_no_warning(coco: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        build_reader("coco", "panoptic", "val", coco)
        build_reader("coco", "instance", "val", coco)


# --- checkpoints ------------------------------------------------------------------------------


def test_truncated_checkpoint_is_named(tmp_path: Path) -> None:
    from m2f_lightning.checkpoints import save_model

    path = save_model(tiny_model(), tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*model.pt: .*truncated"):
        load_model(path)


def test_refused_pickle_in_a_ckpt_never_suggests_weights_only_false(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": print}, path)
    with pytest.raises(RefusedPickleError) as err:
        load_torch_file(path)
    assert "evil.ckpt" in str(err.value) and "Unsupported global: GLOBAL print" in str(err.value)
    assert "weights_only=False" not in str(err.value)


# --- Lightning's noise and progress -----------------------------------------------------------


def test_srun_hint_and_litlogger_tip_are_silenced(caplog) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    from m2f_lightning.cli.builders import quiet_lightning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        rank_zero_warn("The `srun` command is available on your system but is not used.")
    assert not caught
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: try installing [litlogger](https://pypi.org/project/litlogger/)")
    assert "litlogger" not in caplog.text


def test_no_rich_bar_when_stdout_is_not_a_terminal(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks.progress import ProgressBar

    from m2f_lightning.cli.builders import build_trainer
    from tests.helpers import TINY_OVERRIDES, compose

    cfg = compose("train", TINY_OVERRIDES, tmp_path)  # pytest captures stdout: not a terminal
    trainer = build_trainer(cfg, tmp_path)
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)


def test_terminal_bar_counts_steps() -> None:
    from types import SimpleNamespace

    from m2f_lightning.callbacks import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(global_step=7, max_steps=100)
    assert bar._get_train_description(0) == "step 7/100"
