"""Issue 23, family 1: a user's mistake in the config is one `error:` line naming the key, the
value and what to do, found before anything is built (no output folder, checkpoint or W&B run),
for every command; only real defects keep the "this is a bug" wording."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from m2f_lightning.classes import match_classes
from m2f_lightning.cli import config_schema
from m2f_lightning.cli.builders import validate_config
from m2f_lightning.cli.commands import evaluate, predict, train
from m2f_lightning.cli.config_schema import config_problems
from m2f_lightning.cli.doctor import doctor
from m2f_lightning.cli.export import export
from m2f_lightning.cli.main import run_command
from m2f_lightning.errors import CheckpointError, ConfigError, RefusedPickleError, UserError
from tests.helpers import compose, synthetic_panoptic, tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A file for init_weights / checkpoint: the check of the config stops before reading it."""
    path = tmp_path / "weights.pt"
    path.write_bytes(b"")
    return path


@pytest.fixture
def no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(config_schema, "visible_gpus", lambda: 0)


# (case, overrides, what the one error line starts with, what else it says)
TRAIN_CASES = [
    ("batch_size=0", ["dataset.batch_size=0"], "dataset.batch_size=0:", "integer >= 1"),
    ("batch_size=-2", ["dataset.batch_size=-2"], "dataset.batch_size=-2:", "integer >= 1"),
    ("eval_batch_size=0", ["dataset.eval_batch_size=0"], "dataset.eval_batch_size=0:", ">= 1"),
    ("devices=0", ["trainer.devices=0"], "trainer.devices=0:", "-1 or auto"),
    ("devices=two", ["trainer.devices=two"], "trainer.devices=two:", "number of devices"),
    (
        "accumulate=0",
        ["trainer.accumulate_grad_batches=0"],
        "trainer.accumulate_grad_batches=0:",
        ">= 1",
    ),
    ("lr<0", ["optimizer.lr=-1e-4"], "optimizer.lr=-0.0001:", "number > 0"),
    ("cosine", ["scheduler.name=cosine"], "scheduler.name=cosine:", "poly, multistep, constant"),
    ("num_queries=0", ["model.net.num_queries=0"], "model.net.num_queries=0:", ">= 1"),
    (
        "hidden_dim=30",
        ["model.net.hidden_dim=30"],
        "model.net.hidden_dim=30:",
        "divisible by model.net.decoder_heads=4",
    ),
    ("test_min_size=0", ["dataset.test_min_size=0"], "dataset.test_min_size=0:", ">= 1"),
    (
        "backbone",
        ["backbone.name=not_a_real_model"],
        "backbone.name=not_a_real_model:",
        "not a timm model",
    ),
    (
        "class_map",
        ["init_weights={weights}", "class_map={automobil: carr}"],
        "class_map={automobil: carr}:",
        "'automobil' is not a class of dataset 'synthetic'",
    ),
    (
        "class_map without init_weights",
        ["class_map={sky: heaven}"],
        "class_map={sky: heaven}:",
        "only with init_weights",
    ),
    (
        "init_weights missing",
        ["init_weights={weights}.missing"],
        "init_weights=",
        "existing file",
    ),
    (
        "no GPU",
        ["trainer=gpu"],
        "trainer.accelerator=gpu:",
        "no CUDA GPU: use trainer=cpu",
    ),
    (
        "unknown model key",
        ["+model.net.num_querys=50"],
        "model.net.num_querys=50:",
        "did you mean model.net.num_queries?",
    ),
    ("wandb mode", ["logger=wandb"], "WANDB_MODE (environment variable)='':", "WANDB_MODE=offline"),
]


def _train_config(overrides: list[str], tmp_path: Path, weights: Path):
    return compose(
        "train",
        synthetic_panoptic(
            tmp_path / "datasets", *(o.replace("{weights}", str(weights)) for o in overrides)
        ),
        tmp_path,
    )


@pytest.mark.parametrize("case,overrides,starts,says", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_the_check_names_key_value_and_what_to_do(
    case, overrides, starts, says, tmp_path, weights, monkeypatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "" if case == "wandb mode" else "disabled")
    cfg = _train_config(overrides, tmp_path, weights)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, "train", gpus=0)
    (line,) = err.value.problems  # one problem, one line
    assert line.startswith(starts) and says in line, line
    assert "\n" not in line


@pytest.mark.parametrize("case,overrides,starts,says", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_stops_with_one_error_line_before_making_anything(
    case, overrides, starts, says, tmp_path, weights, monkeypatch, capsys, no_gpu
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "" if case == "wandb mode" else "disabled")
    cfg = _train_config(overrides, tmp_path, weights)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda c: train(c, out), cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err  # one line, however long (no wrapping at the console's width)
    assert lines[0].startswith(f"error: {starts}") and says in lines[0], err
    assert "this is a bug" not in err and "Traceback" not in err
    assert not out.exists()  # no output folder: no checkpoints/, no wandb/


def test_several_problems_are_listed_together_one_line_each(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = _train_config(
        ["dataset.batch_size=0", "trainer.devices=two", "optimizer.lr=-1"], tmp_path, tmp_path
    )
    with pytest.raises(SystemExit):
        run_command(lambda c: train(c, tmp_path / "run"), cfg)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert [line.split(":")[1].strip() for line in lines] == [
        "dataset.batch_size=0",
        "trainer.devices=two",
        "optimizer.lr=-1",
    ]


@pytest.mark.parametrize(
    "value,ok",
    [(1, True), (-1, True), ("auto", True), ("2", True), ("0,1", True), ([0, 1], True),
     (0, False), (-2, False), ("0", False), ("two", False), ([], False), (1.5, False)],
)  # fmt: skip
def test_devices_takes_lightnings_spellings_only(value, ok: bool) -> None:
    assert (config_schema.devices(value) is None) == ok


def test_an_interpolation_that_does_not_resolve_names_the_key(tmp_path: Path) -> None:
    cfg = compose("train", ["dataset.batch_size=${nothing.here}"], tmp_path)
    with pytest.raises(ConfigError, match=r"^dataset\.batch_size cannot be read: "):
        validate_config(cfg, "train", gpus=0)


def test_a_gpu_recipe_on_fewer_gpus_says_how_to_keep_its_batch(tmp_path: Path) -> None:
    cfg = compose("train", ["experiment=coco_panoptic_r50"], tmp_path)
    assert config_problems(cfg, "train", gpus=8, added=[]) == ([], [])
    (line,), _ = config_problems(cfg, "train", gpus=1, added=[])
    assert line == (
        "trainer.devices=8: this machine has 1 GPU(s): use trainer.devices=1 "
        "trainer.accumulate_grad_batches=8 (same images per step)"
    )
    (line,), _ = config_problems(cfg, "train", gpus=0, added=[])
    assert line.startswith("trainer.accelerator=gpu: this machine has no CUDA GPU: use trainer=cpu")
    # checking a dataset or exporting needs no GPU, whatever the trainer group says
    assert config_problems(cfg, "doctor", gpus=0, added=[]) == ([], [])


def test_an_added_key_nothing_reads_is_warned_with_the_nearest_key(tmp_path: Path) -> None:
    cfg = compose(
        "train",
        ["+dataset.batchsize=4", "+trainer.limit_train_batches=2", "+dataset.pin_memory=false"],
        tmp_path,
    )
    problems, notes = config_problems(
        cfg,
        "train",
        gpus=0,
        added=["dataset.batchsize", "trainer.limit_train_batches", "dataset.pin_memory"],
    )
    assert problems == []  # a Trainer and a datamodule argument are keys too
    assert notes == [
        "'+dataset.batchsize' is not a key m2f-lightning reads: it is ignored; did you mean "
        "dataset.batch_size?"
    ]
    with pytest.warns(UserWarning, match=r"did you mean dataset\.batch_size\?"):
        config_schema.check_config(cfg, "train", gpus=0, added=["dataset.batchsize"])


# --- the other commands ------------------------------------------------------------------------

OTHER_CASES = [
    ("evaluate", evaluate, ["dataset.eval_batch_size=0"], "dataset.eval_batch_size=0:"),
    ("evaluate", evaluate, ["checkpoint={weights}.missing"], "checkpoint="),
    ("evaluate", evaluate, ["trainer=gpu"], "trainer.accelerator=gpu:"),
    ("predict", predict, ["split=val", "inputs=[a.jpg]"], "inputs=[a.jpg]: predict needs either"),
    ("predict", predict, ["dataset.test_min_size=0"], "dataset.test_min_size=0:"),
    ("doctor", doctor, ["dataset.num_workers=-1"], "dataset.num_workers=-1:"),
    ("export", export, ["format=tflite"], "format=tflite: must be one of onnx, torch_export"),
    ("export", export, ["opset=12"], "opset=12: must be an integer >= 17"),
]


@pytest.mark.parametrize(
    "name,command,overrides,starts", OTHER_CASES, ids=[f"{c[0]}:{c[2][0]}" for c in OTHER_CASES]
)
def test_every_command_checks_its_config_first(
    name, command, overrides, starts, tmp_path, weights, monkeypatch, capsys, no_gpu
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    extra = [] if name == "doctor" else [f"checkpoint={weights}"]
    if name == "predict" and not any(o.startswith(("split", "inputs")) for o in overrides):
        extra.append("split=val")
    cfg = compose(
        name, [*extra, *(o.replace("{weights}", str(weights)) for o in overrides)], tmp_path
    )
    with pytest.raises(SystemExit) as exit_info:
        run_command(command, cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {starts}"), err
    assert "this is a bug" not in err and "Traceback" not in err


def test_evaluate_without_a_checkpoint_says_so(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit):
        run_command(evaluate, compose("evaluate", [], tmp_path))
    assert capsys.readouterr().err.startswith("error: checkpoint is not set: give the weights")


# --- errors found later: clear, not "a bug" ----------------------------------------------------


def test_nonfinite_loss_stop_is_an_error_line_not_a_bug(monkeypatch, capsys) -> None:
    from m2f_lightning.lightning_module import NonFiniteGuard

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def diverges(cfg):
        guard = NonFiniteGuard(limit=1)
        guard.record(False, torch.tensor(float("nan")))
        guard.end_step(7)

    with pytest.raises(SystemExit) as exit_info:
        run_command(diverges, OmegaConf.create({}))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: training stopped at step 7: the loss was NaN or infinite")
    assert "Lower the learning rate" in err and "this is a bug" not in err


def test_init_weights_of_another_hidden_size_names_the_sizes(tmp_path: Path) -> None:
    from m2f_lightning.checkpoints import init_from_weights, save_model

    names = ["a", "b", "c"]
    path = save_model(tiny_model(num_classes=3, hidden_dim=64), tmp_path / "wide.pt", names)
    with pytest.raises(CheckpointError) as err:
        init_from_weights(tiny_model(num_classes=3), path, names)
    assert f"init_weights={path} has another architecture" in str(err.value)
    assert "hidden_dim=64 in the file, 32 in the model" in str(err.value)


def test_train_from_weights_of_another_size_stops_before_its_folder(
    tmp_path, monkeypatch, capsys
) -> None:
    from m2f_lightning.checkpoints import save_model
    from m2f_lightning.data.synthetic import write_dataset

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    write_dataset("demo", tmp_path / "datasets", num=4, num_val=2, seed=0)
    path = save_model(tiny_model(num_classes=5, hidden_dim=64), tmp_path / "wide.pt")
    cfg = _train_config([f"init_weights={path}"], tmp_path, path)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda c: train(c, out), cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: init_weights={path} has another architecture"), err
    assert "hidden_dim=64 in the file, 32 in the model" in err and "this is a bug" not in err
    assert not out.exists()


def test_backbone_arguments_the_timm_model_does_not_take_are_a_config_error(tmp_path) -> None:
    from m2f_lightning.cli.builders import build_model

    cfg = compose(
        "train",
        ["backbone=r50", "backbone.weights=null", "++backbone.kwargs.embed_dim=16"],
        tmp_path,
    )
    with pytest.raises(
        ConfigError,
        match=r"^model\.net: backbone 'resnet50' does not take the arguments .*embed_dim",
    ):
        build_model(cfg, 5)


def test_class_map_naming_no_class_of_the_checkpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"class_map: 'carr' \(for 'car'\) is not a class of"):
        match_classes(["car"], ["auto"], {"car": "carr"})


def test_a_backbone_file_with_python_objects_is_refused_saying_how_to_save_it(
    tmp_path: Path,
) -> None:
    import argparse

    from m2f_lightning.modeling.backbone_weights import read_weights_file

    path = tmp_path / "resnet.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(RefusedPickleError) as err:
        read_weights_file(path)
    text = str(err.value)
    assert isinstance(err.value, UserError)
    assert f"backbone weights file {path} is refused: it holds Python objects" in text
    assert "torch.save(model.state_dict()" in text and "weights_only" not in text


# --- through the real command line -------------------------------------------------------------


def _cli(tmp_path: Path, entry: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(WANDB_MODE="disabled", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    code = f"import sys; from m2f_lightning.cli.main import {entry}; sys.exit({entry}())"
    return subprocess.run(
        [sys.executable, "-c", code, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_prints_one_line_per_problem_and_makes_no_folder(tmp_path: Path) -> None:
    done = _cli(
        tmp_path,
        "train_main",
        "experiment=coco_panoptic_r50",
        "dataset.batch_size=0",
        "+dataset.batchsize=3",
    )
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: dataset.batch_size=0: must be an integer >= 1 (images per device and step)",
        "error: trainer.accelerator=gpu: this machine has no CUDA GPU: use trainer=cpu "
        "(trainer.accelerator=cpu trainer.devices=1), or run on a GPU machine",
    ]
    assert "did you mean dataset.batch_size?" in done.stderr
    assert "Traceback" not in done.stderr and "this is a bug" not in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_export_with_a_bad_format_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"")
    done = _cli(tmp_path, "export_main", f"checkpoint={tmp_path / 'm.pt'}", "format=tflite")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        "error: format=tflite: must be one of onnx, torch_export"
    ), done.stderr
    assert "Traceback" not in done.stderr
