"""m2f-doctor reads every record of every split through the readers' checks, reports every
problem at once and summarises the dataset; exit code 0 only on a clean dataset."""

import json
from pathlib import Path

import pytest

from m2f_lightning.cli.doctor import doctor
from m2f_lightning.data.synthetic import write_dataset
from tests.helpers import compose


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_dataset("coco_panoptic", tmp_path, num=4, num_val=3, seed=5)
    return tmp_path


def config(root: Path, tmp_path: Path, workers: int = 2):
    return compose(
        "doctor",
        ["task=panoptic", "dataset=coco", f"paths.datasets_dir={root}", f"workers={workers}"],
        tmp_path,
    )


def test_clean_dataset_exits_0_with_a_summary(data: Path, tmp_path: Path, capsys) -> None:
    assert doctor(config(data, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "[train] 4 records, 4 read without a problem" in out
    assert "[val] 3 records" in out
    assert "image height min/median/max 160 / 160 / 160" in out
    assert "segments per image" in out and "crowd segments" in out
    assert "class histogram" in out and "classes never seen" in out
    assert "no problems found" in out


def test_every_problem_is_reported_not_the_first(data: Path, tmp_path: Path, capsys) -> None:
    coco = data / "coco"
    (coco / "val2017" / "000000000001.jpg").unlink()  # record-level
    (coco / "train2017" / "000000000002.jpg").write_bytes(b"not a jpeg")  # record-level
    path = coco / "annotations" / "panoptic_val2017.json"
    ann = json.loads(path.read_text())
    ann["annotations"][1]["segments_info"][0]["category_id"] = 12  # file-level
    ann["annotations"][2]["segments_info"].append({"id": 4242, "category_id": 1, "iscrowd": 0})
    path.write_text(json.dumps(ann))
    assert doctor(config(data, tmp_path)) == 1
    out = capsys.readouterr().out
    assert "missing file: " in out and "000000000001.jpg" in out
    assert "corrupt or unreadable image" in out and "000000000002.jpg" in out
    assert "unknown category id 12" in out
    assert "segment ids [4242] listed" in out
    assert "4 problem(s)" in out
