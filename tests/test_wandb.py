"""W&B: an offline run writes what a user will sync (config, losses, lr, metrics, validation
overlays, per-class table), and a failed run is closed so the next job of a sweep starts clean."""

import json
from pathlib import Path

import pytest

from m2f_lightning.cli.commands import train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.runs.wandb_run import wandb_group, wandb_run_id
from tests.helpers import compose, synthetic_panoptic
from tests.wandb_records import config, history, read_records, run_files, run_id


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=4, num_val=2, seed=0)
    return root


def wandb_overrides(datasets: Path, *extra: str) -> list[str]:
    return synthetic_panoptic(datasets, "logger=wandb", "test_after_training=false", *extra)


@pytest.fixture
def offline(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_offline_run_writes_config_losses_metrics_overlays_and_tables(
    datasets: Path, tmp_path: Path, offline: None
) -> None:
    import wandb

    overrides = wandb_overrides(
        datasets,
        "dataset.max_steps=2",
        "dataset.val_every_n_steps=2",
        "trainer.log_every_n_steps=1",
    )
    train(compose("train", overrides, tmp_path), output_dir=tmp_path)
    assert wandb.run is None, "the run must be finished when train returns"
    (run_file,) = run_files(tmp_path)
    run = run_file.parent
    assert run.name.endswith((tmp_path / "wandb_run_id").read_text().strip())
    assert list(run.glob("*.wandb")), "no run file to `wandb sync`"
    # offline runs keep config, history and summary in the binary run file `wandb sync` uploads
    record = next(run.glob("*.wandb")).read_bytes()
    for key in (
        "num_queries",  # the resolved config
        "class_names",  # the module's hyper-parameters
        "train/loss",
        "train/loss_dice",
        "train/loss_ce_0",
        "lr-AdamW",
        "val/PQ",
        "val/AP",
        "val/mIoU",
    ):
        assert key.encode() in record, key
    media = [str(p) for p in (run / "files" / "media").rglob("*") if p.is_file()]
    masks = [p for p in media if "/mask/val/examples" in p]
    assert masks and any("/images/val/overlays" in p for p in media), media
    tables = [p for p in media if "/table/val/per_class" in p]
    assert len(tables) == 1, "one per-class table per validation (none for the sanity check)"
    table = json.loads(Path(tables[0]).read_text())
    assert [row[0] for row in table["data"]] == ["sky", "ground", "circle", "square", "triangle"]
    # the values, read back from the run file: the validation row holds the metrics.json figures
    written = json.loads((tmp_path / "metrics.json").read_text())["val"]
    rows = [row for row in history(run_file) if "val/PQ" in row]
    assert len(rows) == 1, "one validation logged (the sanity check is not)"
    assert written["val/mIoU"] > 0, "a figure that tells values apart"
    assert {key: rows[0][key] for key in written} == pytest.approx(written, rel=1e-6, abs=1e-9)
    losses = [row["train/loss"] for row in history(run_file) if "train/loss" in row]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


@pytest.fixture
def hydra_mode(monkeypatch):
    """Sets Hydra's run-time config as `-m` (MULTIRUN, with its sweep folder) or a single run
    (RUN) would, for the test only."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test

    def set_mode(mode: RunMode, sweep_dir: str) -> None:
        cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
        cfg.hydra.mode = mode
        cfg.hydra.sweep.dir = sweep_dir
        HydraConfig.instance().set_config(cfg)

    return set_mode


def test_a_sweep_job_is_grouped_by_its_sweep_and_records_its_placement(
    datasets: Path, tmp_path: Path, offline: None, hydra_mode
) -> None:
    """In a multirun each job's W&B run has the sweep folder as its group (so one sweep is one
    group), and its config holds the placement the trainer ran with (nodes, devices, ranks)."""
    from hydra.types import RunMode

    sweep = tmp_path / "multirun" / "2026-12-07" / "07-40-00"
    hydra_mode(RunMode.MULTIRUN, str(sweep))
    job = sweep / "0"
    job.mkdir(parents=True)
    overrides = wandb_overrides(datasets, "dataset.max_steps=1", "dataset.val_every_n_steps=0")
    train(compose("train", overrides, job), output_dir=job)
    (run_file,) = run_files(job)
    (run,) = [r.run for r in read_records(run_file) if r.WhichOneof("record_type") == "run"]
    assert run.run_group == str(sweep)
    assert config(run_file)["world"] == {"num_nodes": 1, "devices": 1, "world_size": 1}


def test_the_wandb_group_is_the_users_else_the_sweep_else_none(hydra_mode) -> None:
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    unset = OmegaConf.create({"logger": {"name": "wandb", "group": None}})
    mine = OmegaConf.create({"logger": {"name": "wandb", "group": "ablation"}})
    assert wandb_group(unset) is None, "no Hydra run at all (a direct call)"
    hydra_mode(RunMode.RUN, "multirun/a")
    assert wandb_group(unset) is None, "a single run has no sweep"
    hydra_mode(RunMode.MULTIRUN, "multirun/2026-12-07/07-40-00")
    assert wandb_group(unset) == "multirun/2026-12-07/07-40-00"
    assert wandb_group(mine) == "ablation", "the user's group wins"
    hydra_mode(RunMode.MULTIRUN, "/" + "x" * 200 + "/07-40-00")
    assert wandb_group(unset) == ("x" * 200 + "/07-40-00")[-128:], "W&B's 128 characters"


def test_a_failed_run_is_closed(datasets: Path, tmp_path: Path, offline: None) -> None:
    import wandb

    cfg = compose("train", wandb_overrides(datasets, f"resume={tmp_path}/missing.ckpt"), tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        train(cfg, output_dir=tmp_path)
    assert wandb.run is None


@pytest.mark.slow
def test_a_resumed_job_keeps_its_run_id(datasets: Path, tmp_path: Path, offline: None) -> None:
    """A job stopped at step 2 and rerun (resume=auto, same folder) logs into the same W&B run:
    both offline run files carry one run id, and the rerun's rows go on from step 2. A job in
    another folder gets another id."""
    common = wandb_overrides(
        datasets,
        "checkpoint.every_n_train_steps=2",
        "dataset.val_every_n_steps=0",
        "trainer.log_every_n_steps=1",
        "dataset.max_steps=4",
    )
    train(compose("train", [*common, "trainer.max_steps=2"], tmp_path), output_dir=tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    second = train(compose("train", common, tmp_path), output_dir=tmp_path)
    assert second["global_step"] == 4
    files = run_files(tmp_path)  # by start time
    assert len(files) == 2, files
    first_id, second_id = run_id(files[0]), run_id(files[1])
    assert first_id == second_id == (tmp_path / "wandb_run_id").read_text().strip()
    steps = [
        [row["trainer/global_step"] for row in history(f) if "train/loss" in row] for f in files
    ]
    assert steps == [[0, 1], [2, 3]], "the rerun continues the run at the resumed step"
    (tmp_path / "other").mkdir()
    assert wandb_run_id(tmp_path / "other") != first_id
