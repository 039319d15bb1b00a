"""The training system end to end on generated data: every task × dataset runs, resume
continues, evaluate and predict write their files, precision switches (W&B: test_wandb.py,
DDP: test_ddp.py)."""

import json
import os
import re
import shutil
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from m2f_lightning.checkpoints import save_model
from m2f_lightning.cli import commands
from m2f_lightning.cli.commands import evaluate, predict, train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.modeling import Mask2Former
from m2f_lightning.runs.preemption import Preempted
from m2f_lightning.runs.resume import resume_path
from tests.helpers import TINY_OVERRIDES, compose

FORMATS = {
    "coco": ["coco_panoptic", "coco_instance"],
    "ade20k": ["ade20k"],
    "cityscapes": ["cityscapes"],
    "mapillary_vistas": ["mapillary"],
    "synthetic": ["demo"],
}
AUG = {
    "coco": "dataset.train_aug={recipe: lsj, size: 128}",
    "synthetic": "dataset.train_aug={recipe: lsj, size: 128}",
    "ade20k": "dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 96]}",
    "cityscapes": "dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 128]}",
    "mapillary_vistas": "dataset.train_aug={recipe: semantic, base_size: 96, crop_size: [96, 96]}",
}
COMBINATIONS = [
    ("coco", "panoptic"),
    ("coco", "instance"),
    ("coco", "semantic"),
    ("ade20k", "semantic"),
    ("ade20k", "panoptic"),
    ("ade20k", "instance"),
    ("cityscapes", "semantic"),
    ("cityscapes", "instance"),
    ("cityscapes", "panoptic"),
    ("mapillary_vistas", "semantic"),
    ("mapillary_vistas", "panoptic"),
    ("synthetic", "panoptic"),
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    for i, fmt in enumerate(f for fmts in FORMATS.values() for f in fmts):
        write_dataset(fmt, root, num=4, num_val=2, seed=i)
    return root


def overrides(datasets: Path, dataset: str, task: str, *extra: str) -> list[str]:
    return [
        f"task={task}",
        f"dataset={dataset}",
        *TINY_OVERRIDES,
        f"paths.datasets_dir={datasets}",
        AUG[dataset],
        *extra,
    ]


@pytest.mark.parametrize("dataset,task", COMBINATIONS)
def test_fast_dev_run_for_every_task_and_dataset(
    datasets: Path, tmp_path: Path, dataset: str, task: str
) -> None:
    cfg = compose("train", overrides(datasets, dataset, task, "debug=fast"), tmp_path)
    summary = train(cfg, output_dir=tmp_path)
    assert summary["global_step"] == 1
    expected = {"panoptic": "val/PQ", "instance": "val/AP", "semantic": "val/mIoU"}[task]
    assert expected in summary["val"]


class _RecordStart(L.Callback):
    """Records the step of the first batch a `fit` runs and the weights it starts that batch with
    (after any checkpoint was restored)."""

    def __init__(self) -> None:
        self.first_step: int | None = None
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step is None:
            self.first_step = trainer.global_step
            self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _recording(monkeypatch: pytest.MonkeyPatch, *extra: L.Callback) -> _RecordStart:
    """Adds a `_RecordStart` (and `extra` callbacks) to the callbacks of the next `train`."""
    record = _RecordStart()
    build_callbacks = _ORIGINAL_BUILD_CALLBACKS
    monkeypatch.setattr(
        commands, "build_callbacks", lambda *a: [*build_callbacks(*a), record, *extra]
    )
    return record


_ORIGINAL_BUILD_CALLBACKS = commands.build_callbacks


def _assert_starts_from(record: _RecordStart, ckpt_file: Path, step: int) -> None:
    """The recorded fit started at `step` with exactly the weights stored in `ckpt_file`."""
    assert record.first_step == step, f"fit started at step {record.first_step}, not {step}"
    saved = torch.load(ckpt_file, map_location="cpu", weights_only=True)["state_dict"]
    assert saved.keys() == record.weights.keys()
    for name, value in saved.items():
        assert torch.equal(record.weights[name], value), f"{name} not restored from {ckpt_file}"


def test_resume_continues_steps_weights_and_schedule(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resume=auto in the same folder, and resume=PATH from another, start at the checkpoint's
    step with its weights and finish the same schedule."""
    common = overrides(
        datasets,
        "synthetic",
        "panoptic",
        "checkpoint.every_n_train_steps=2",
        "dataset.val_every_n_steps=0",
        "test_after_training=false",
    )
    first = train(
        compose("train", [*common, "dataset.max_steps=4", "trainer.max_steps=2"], tmp_path),
        tmp_path,
    )
    assert first["global_step"] == 2
    step2 = tmp_path / "step2.ckpt"  # a copy: the periodic file is replaced by later ones
    shutil.copy(tmp_path / "checkpoints" / "step0000002.ckpt", step2)
    assert torch.load(step2, weights_only=False)["global_step"] == 2
    # same output dir, resume=auto: continues from last.ckpt up to 4 steps of the same schedule
    record = _recording(monkeypatch)
    second = train(compose("train", [*common, "dataset.max_steps=4"], tmp_path), tmp_path)
    _assert_starts_from(record, step2, 2)
    assert second["global_step"] == 4
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    scheduler = ckpt["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 4
    assert scheduler["_last_lr"][-1] == pytest.approx(1e-4 * (1 - 4 / 4) ** 0.9, abs=1e-12)
    # resume=PATH into a fresh folder: the same start, whatever that folder holds
    record = _recording(monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    third = train(
        compose("train", [*common, "dataset.max_steps=3", f"resume={step2}"], elsewhere), elsewhere
    )
    _assert_starts_from(record, step2, 2)
    assert third["global_step"] == 3


def test_init_weights_fine_tunes_on_another_class_set(
    datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Weights trained on one dataset start a run on another with other classes (the class head
    is re-initialised); the step count starts from 0 (not a resume)."""
    pretrain = [
        *overrides(datasets, "synthetic", "panoptic"),
        "dataset.max_steps=2",
        "dataset.val_every_n_steps=0",
        "test_after_training=false",
    ]
    train(compose("train", pretrain, tmp_path / "pre"), tmp_path / "pre")
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    finetune = overrides(datasets, "ade20k", "semantic", "debug=fast", f"init_weights={ckpt}")
    summary = train(compose("train", finetune, tmp_path / "ft"), tmp_path / "ft")
    assert summary["global_step"] == 1
    out = capsys.readouterr().out
    match = re.search(
        rf"init_weights: loaded {re.escape(str(ckpt))}; class head: (\d+) classes "
        r"kept by name, (\d+) fresh",
        out,
    )
    assert match, out[-2000:]
    assert int(match[1]) + int(match[2]) == 150 and int(match[2]) >= 145


class _SignalAtStep(L.Callback):
    """Sends this process SIGUSR1 (what SLURM sends before the time limit) after step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_preemption_signal_saves_at_the_step_and_the_rerun_finishes_the_schedule(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR1 after step 3 saves preempted.ckpt there (after last.ckpt of step 2); the rerun
    (resume=auto) starts from the newer of the two, at step 3 with its weights, and finishes."""
    common = overrides(
        datasets,
        "synthetic",
        "panoptic",
        "dataset.max_steps=6",
        "dataset.val_every_n_steps=3",
        "checkpoint.every_n_train_steps=2",  # last.ckpt at step 2, older than the signal's
    )
    _recording(monkeypatch, _SignalAtStep(3))
    with pytest.raises(Preempted, match="pre-empted at step 3"):
        train(compose("train", common, tmp_path), tmp_path)
    saved = torch.load(tmp_path / "preempted.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handler removed again
    state = json.loads((tmp_path / "summary.json").read_text())  # the sweep table's record
    assert (state["state"], state["steps"]) == ("preempted", 3)
    assert state["error"].startswith("pre-empted at step 3")
    shutil.copy(tmp_path / "preempted.ckpt", tmp_path / "preempted.ckpt.kept")  # retired below

    record = _recording(monkeypatch)
    summary = train(compose("train", common, tmp_path), tmp_path)
    _assert_starts_from(record, tmp_path / "preempted.ckpt.kept", 3)
    assert summary["global_step"] == 6
    final_state = json.loads((tmp_path / "summary.json").read_text())
    assert (final_state["state"], final_state["steps"]) == ("finished", 6)
    assert final_state["metrics"] == summary["test"]
    assert final_state["wall_seconds"] > state["wall_seconds"]  # the first attempt's time added
    assert not (tmp_path / "preempted.ckpt").exists()  # replaced by the final last.ckpt
    final = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert final["global_step"] == 6 and final["lr_schedulers"][0]["last_epoch"] == 6
    # the last validation ran on the final weights (the test after training uses them too)
    val = {k.removeprefix("val/"): v for k, v in summary["val"].items()}
    assert summary["test"] == pytest.approx(val, rel=1e-5, abs=1e-6)


# a weights file whose model predicts one class over the whole image, whatever the image:
# class logits of every query are `CLASS_BIAS` on that class and 0 elsewhere, mask logits
# `MASK_LOGIT` everywhere (constant mask features × a constant mask embedding)
CLASS_BIAS, MASK_LOGIT = 10.0, 8.0
SKY, CIRCLE = 0, 2  # synthetic: sky (stuff), ground (stuff), circle, square, triangle (things)


def constant_model(cfg, category: int) -> Mask2Former:
    """The model of `cfg` (random weights) made to predict `category` everywhere."""
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    net.pop("_target_")
    model = Mask2Former(**{**net, "num_classes": 5})
    state = model.state_dict()
    mask_features = state["pixel_decoder.mask_features.bias"]
    state["pixel_decoder.mask_features.weight"].zero_()
    mask_features.zero_()[0] = 1.0
    last = len(model.transformer_decoder.mask_embed.layers) - 1
    state[f"transformer_decoder.mask_embed.layers.{last}.weight"].zero_()
    state[f"transformer_decoder.mask_embed.layers.{last}.bias"].zero_()[0] = MASK_LOGIT
    state["transformer_decoder.class_embed.weight"].zero_()
    state["transformer_decoder.class_embed.bias"].zero_()[category] = CLASS_BIAS
    model.load_state_dict(state)
    return model


def ground_truth(datasets: Path) -> list[tuple[str, np.ndarray]]:
    """(file stem, (category, instance) pairs [H, W, 2] with contiguous categories, -1 = void) of
    each validation image, read from the panoptic PNG and JSON with PIL and json only."""
    root = datasets / "synthetic"
    data = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    contiguous = {
        c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))
    }
    out = []
    for ann in sorted(data["annotations"], key=lambda a: a["file_name"]):
        rgb = np.asarray(Image.open(root / "panoptic_val2017" / ann["file_name"]), dtype=np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        pairs = np.full((*ids.shape, 2), -1, dtype=np.int64)
        for seg in ann["segments_info"]:
            pairs[ids == seg["id"]] = (contiguous[seg["category_id"]], seg["id"])
        out.append((Path(ann["file_name"]).stem, pairs))
    return out


def constant_prediction_metrics(gts: list[np.ndarray], category: int) -> dict[str, float]:
    """PQ (panopticapi rules, tests/test_metrics.py) and mIoU (a numpy confusion matrix) of a
    prediction of `category` over every pixel of every image; 5 synthetic classes."""
    from tests.test_metrics import reference_pq

    things, stuffs = [2, 3, 4], [0, 1]
    preds = [
        np.stack([np.full(g.shape[:2], category), np.zeros(g.shape[:2], int)], -1) for g in gts
    ]
    crowds = [np.zeros(g.shape[:2], dtype=bool) for g in gts]
    (pq, _, _), _, _ = reference_pq(gts, preds, crowds, things, stuffs)
    conf = np.zeros((5, 5))
    for g in gts:
        valid = g[..., 0] >= 0
        np.add.at(conf, (g[..., 0][valid], np.full(valid.sum(), category)), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return {"PQ": 100 * pq, "mIoU": 100 * np.mean(tp[union > 0] / union[union > 0])}


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_evaluate_and_predict_use_the_weights_they_are_given(
    datasets: Path, tmp_path: Path, task: str
) -> None:
    """evaluate and predict run the model stored in `checkpoint=`: a model that predicts one
    class everywhere gets the metrics computed here from the annotation files, and predict
    writes that class over every pixel (PNGs) or in every result (instances JSON)."""
    common = overrides(datasets, "synthetic", task)
    category = CIRCLE if task == "instance" else SKY
    cfg = compose("evaluate", [*common, "checkpoint=unused"], tmp_path / "eval")
    ckpt = save_model(constant_model(cfg, category), tmp_path / "constant.pt")
    results = evaluate(
        compose("evaluate", [*common, f"checkpoint={ckpt}"], tmp_path / "eval"), tmp_path / "eval"
    )
    written = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert written["test"] == pytest.approx(results)
    gts = ground_truth(datasets)
    expected = constant_prediction_metrics([g for _, g in gts], category)
    if task == "panoptic":
        assert 0 < expected["mIoU"] < 100  # (no whole-image segment reaches IoU 0.5: PQ 0)
        assert results["PQ"] == pytest.approx(expected["PQ"], abs=1e-4)
        assert results["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-4)
    elif task == "semantic":
        assert results["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-4)
    else:  # whole-image masks overlap no synthetic shape by IoU > 0.5
        assert results["AP"] == pytest.approx(0.0, abs=1e-9)

    images = sorted((datasets / "synthetic" / "val2017").glob("*.jpg"))[:2]
    files = predict(
        compose(
            "predict",
            [*common, f"checkpoint={ckpt}", f"inputs=[{images[0]},{images[1]}]"],
            tmp_path / "pred",
        ),
        tmp_path / "pred",
    )
    out = tmp_path / "pred" / "predictions"
    assert {f"{p.stem}_overlay.png" for p in images} <= {f.name for f in files}
    sizes = {p.stem: Image.open(p).size[::-1] for p in images}
    dataset_id = category + 1  # synthetic file ids are 1..5
    score = np.exp(CLASS_BIAS) / (np.exp(CLASS_BIAS) + 5)  # softmax over 5 classes + no-object
    if task == "semantic":
        for stem, size in sizes.items():
            png = np.asarray(Image.open(out / f"{stem}_semantic.png"))
            assert png.shape == size and (png == category).all()
    elif task == "panoptic":
        data = json.loads((out / "panoptic.json").read_text())
        assert [a["image_id"] for a in data["annotations"]] == list(sizes)
        for ann in data["annotations"]:
            rgb = np.asarray(Image.open(out / f"{ann['image_id']}_panoptic.png"), dtype=np.int64)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
            assert ids.shape == sizes[ann["image_id"]] and (ids == 1).all()
            (segment,) = ann["segments_info"]  # the other queries' copies are hidden: dropped
            assert segment["category_id"] == dataset_id and segment["area"] == ids.size
            assert segment["score"] == pytest.approx(score, rel=1e-5)
    else:
        results = json.loads((out / "instances_results.json").read_text())
        top = [r for r in results if r["score"] > 0.5]
        assert len(top) == 6 * len(images)  # every query, with the one confident class
        for r in top:
            assert r["category_id"] == dataset_id
            assert r["score"] == pytest.approx(score / (1 + np.exp(-MASK_LOGIT)), rel=1e-5)
            mask = mask_util.decode(r["segmentation"])
            assert mask.shape == sizes[r["image_id"]] and mask.all()


class _OutputDtypes(L.Callback):
    """Records the dtype of the model's class logits in every forward of the fit."""

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.model.register_forward_hook(
            lambda module, args, out: self.dtypes.append(out["pred_logits"].dtype)
        )


def test_bf16_mixed_precision_trains_a_step(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """precision=bf16-mixed runs the model under bf16 autocast (its logits come out in bf16),
    keeps float32 weights, and trains a finite step."""
    record = _OutputDtypes()
    _recording(monkeypatch, record)
    cfg = compose(
        "train",
        overrides(datasets, "synthetic", "panoptic", "debug=fast", "precision=bf16-mixed"),
        tmp_path,
    )
    summary = train(cfg, output_dir=tmp_path)
    assert summary["global_step"] == 1
    assert record.dtypes and set(record.dtypes) == {torch.bfloat16}, record.dtypes


def test_compile_and_checkpointing_switches_reach_the_model(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`compile=true` compiles the trained model with the configured cache folder (the compile
    itself is tested in test_compile.py; here it is recorded, not run) and
    `model.net.checkpointing=true` builds the model with activation checkpointing on; neither by
    default."""
    compiled: list[tuple[Mask2Former, str]] = []
    monkeypatch.setattr(
        Mask2Former,
        "compile_network",
        lambda self, cache_dir=None, **kw: compiled.append((self, cache_dir)),
    )
    record = _RecordModel()
    _recording(monkeypatch, record)
    base = overrides(datasets, "synthetic", "panoptic", "debug=fast")
    train(compose("train", base, tmp_path / "default"), output_dir=tmp_path / "default")
    assert compiled == [] and record.models[-1].checkpointing is False
    cache = tmp_path / "cache"
    extra = ["compile=true", f"compile_cache_dir={cache}", "model.net.checkpointing=true"]
    train(compose("train", [*base, *extra], tmp_path / "on"), output_dir=tmp_path / "on")
    ((model, cache_dir),) = compiled
    assert model is record.models[-1] and cache_dir == str(cache)
    assert model.checkpointing is True


class _RecordModel(L.Callback):
    """Keeps the network of every fit."""

    def __init__(self) -> None:
        self.models: list[Mask2Former] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.models.append(pl_module.model)


def test_resume_path_picks_the_newer_checkpoint_and_rejects_a_missing_one(tmp_path: Path) -> None:
    """The file choice of `resume_path` (that `fit` really continues from it:
    test_preemption_signal_saves_at_the_step_and_the_rerun_finishes_the_schedule)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"resume": "auto"})
    assert resume_path(cfg, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, last)
    assert resume_path(cfg, tmp_path) == str(last)
    preempted = tmp_path / "preempted.ckpt"  # written on SIGUSR1, after last.ckpt
    torch.save({"state_dict": {}, "global_step": 1}, preempted)
    os.utime(last, ns=(1_000_000_000, 1_000_000_000))
    assert resume_path(cfg, tmp_path) == str(preempted)
    os.utime(preempted, ns=(500_000_000, 500_000_000))  # a periodic save after the signal's
    assert resume_path(cfg, tmp_path) == str(last)
    for off in (None, False, "none"):
        assert resume_path(OmegaConf.create({"resume": off}), tmp_path) is None
    assert resume_path(OmegaConf.create({"resume": str(preempted)}), tmp_path) == str(preempted)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        resume_path(OmegaConf.create({"resume": str(tmp_path / "missing.ckpt")}), tmp_path)


def test_csv_logger_writes_losses_and_lr(datasets: Path, tmp_path: Path) -> None:
    import csv

    cfg = compose(
        "train",
        overrides(
            datasets,
            "synthetic",
            "panoptic",
            "logger=csv",
            "dataset.max_steps=2",
            "dataset.val_every_n_steps=0",
            "trainer.log_every_n_steps=1",
            "test_after_training=false",
        ),
        tmp_path,
    )
    train(cfg, output_dir=tmp_path)
    (metrics_file,) = (tmp_path / "csv").rglob("metrics.csv")
    columns = next(csv.reader(metrics_file.open()))
    assert {"train/loss", "train/loss_mask", "train/loss_dice_0"} <= set(columns)
    assert any(c.startswith("lr-AdamW") for c in columns), columns


def test_compile_reaches_evaluate_and_predict(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`compile=true` (or `runtime=compile`) compiles the network that evaluate and predict run
    (recorded, not run), with the configured cache folder; not by default."""
    compiled: list[tuple[Mask2Former, str]] = []
    monkeypatch.setattr(
        Mask2Former,
        "compile_network",
        lambda self, cache_dir=None, **kw: compiled.append((self, cache_dir)),
    )
    common = overrides(datasets, "synthetic", "panoptic")
    cfg = compose("evaluate", [*common, "checkpoint=unused"], tmp_path / "eval")
    ckpt = save_model(constant_model(cfg, SKY), tmp_path / "constant.pt")
    image = sorted((datasets / "synthetic" / "val2017").glob("*.jpg"))[0]
    cache = tmp_path / "cache"
    for switch, calls in (([], 0), (["compile=true"], 2), (["runtime=compile"], 4)):
        run = [*common, f"checkpoint={ckpt}", *switch, f"compile_cache_dir={cache}"]
        evaluate(compose("evaluate", run, tmp_path / "eval"), tmp_path / "eval")
        predict(compose("predict", [*run, f"inputs=[{image}]"], tmp_path / "p"), tmp_path / "p")
        assert len(compiled) == calls
    assert [cache_dir for _, cache_dir in compiled] == [str(cache)] * 4
    assert all(isinstance(model, Mask2Former) for model, _ in compiled)
