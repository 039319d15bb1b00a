"""`m2f-evaluate save_predictions=true` on two processes writes what one device writes: each
image exactly once (a rank's padding duplicate is not written), the per-rank JSON entries
merged on rank 0."""

import json
from pathlib import Path

import pytest

from m2f_lightning.cli import builders, commands
from m2f_lightning.cli.commands import evaluate
from tests.helpers import compose
from tests.test_ddp import TWO_RANKS, OracleModule, _overrides, datasets  # noqa: F401 (fixture)


class NamedOracle(OracleModule):
    """The oracle's results, named after their images as the real module names them."""

    def predict_batch(self, batch):
        results = super().predict_batch(batch)
        for result, name, image_id in zip(results, batch.file_names, batch.image_ids, strict=True):
            result.file_name, result.image_id = name, image_id
        return results


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "Mask2FormerModule", NamedOracle)
    monkeypatch.setattr(commands, "load_weights_for", lambda cfg, dm, path: None)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".zip"  # zips hold timestamps
    }


@pytest.mark.slow
def test_save_predictions_on_two_processes_equals_one_device(
    datasets: Path,  # noqa: F811
    tmp_path: Path,
    oracle: None,
) -> None:
    common = _overrides(datasets, f"checkpoint={__file__}", "save_predictions=true")
    evaluate(compose("evaluate", common, tmp_path / "one"), tmp_path / "one")
    evaluate(compose("evaluate", [*common, *TWO_RANKS], tmp_path / "two"), tmp_path / "two")
    one = _files(tmp_path / "one" / "predictions")
    two = _files(tmp_path / "two" / "predictions")
    name = "panoptic_val2017_m2f_results"
    data = json.loads(one[f"{name}.json"])
    assert [a["image_id"] for a in data["annotations"]] == [1, 2, 3, 4, 5]  # each once
    assert len([k for k in one if k.startswith(f"{name}/")]) == 5
    assert two.keys() == one.keys()
    assert two == one
    assert (tmp_path / "two" / "predictions" / f"{name}.zip").is_file()
