"""The Python predictor (`Segmenter`, issue 24.1) against `m2f-predict` on the same images, bit
for bit, and predict from the checkpoint alone (issue 24.3): task, classes, thing flags and test
size from ours, Lightning and HF checkpoints, and the errors where a checkpoint lacks them."""

import json
import pickle
import warnings
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from m2f_lightning import PredictedSegment, Segmenter, SegmenterResult
from m2f_lightning.checkpoints import load_model, save_model
from m2f_lightning.cli.commands import predict
from m2f_lightning.cli.config_schema import check_config
from m2f_lightning.data.catalog import get_metadata
from m2f_lightning.errors import CheckpointError, ConfigError, UserError
from m2f_lightning.lightning_module import Mask2FormerModule
from m2f_lightning.modeling.dtypes import UnsupportedDtypeError
from m2f_lightning.predictor.runtimes import OnnxRuntime, RuntimeFallback
from tests.helpers import compose, tiny_model

# the synthetic scenes' classes, as conf/../catalog/synthetic.json ships them
SYNTHETIC = get_metadata("synthetic")
# what every run shares: a CPU trainer, no logger, a low threshold so random weights keep segments
RUN = ["trainer=cpu", "logger=none", "dataset.num_workers=0"]
THRESHOLD = 0.1
TEST_SIZE = (64, 96)  # the test-time resize the checkpoints store


def lightning_checkpoint(path: Path, task: str, **inference) -> Path:
    """A Lightning checkpoint of a tiny random model as training writes it (the module's own
    hyper-parameters) for the synthetic classes."""
    meta = get_metadata("synthetic")
    torch.manual_seed(0)  # the same weights whichever tests ran before in this process
    model = tiny_model(num_classes=meta.num_classes)
    module = Mask2FormerModule(
        model,
        task=task,
        class_names=meta.class_names,
        thing_ids=meta.thing_ids,
        stuff_ids=meta.stuff_ids,
        inference={"object_mask_threshold": THRESHOLD, **inference},
        test_min_size=TEST_SIZE[0],
        test_max_size=TEST_SIZE[1],
    )
    torch.save(
        {
            "pytorch-lightning_version": lightning.__version__,
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(64, 80), (72, 64)]):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return {
        t: lightning_checkpoint(folder / f"{t}.ckpt", t)
        for t in ("panoptic", "instance", "semantic")
    }


def run_predict(out: Path, checkpoint: Path, images: list[Path], *extra: str) -> Path:
    """m2f-predict (its Python entry) with the checkpoint alone; returns the predictions folder."""
    inputs = ",".join(str(p) for p in images)
    cfg = compose("predict", [f"checkpoint={checkpoint}", f"inputs=[{inputs}]", *RUN, *extra], out)
    predict(cfg, out)
    return out / "predictions"


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir() if p.name != "predicted.json")
    assert names == sorted(p.name for p in b.iterdir() if p.name != "predicted.json")
    for name in names:
        if name.endswith(".json"):
            assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


# ------------------------------------------------------------------ the predictor = m2f-predict


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_segmenter_equals_predict_bit_for_bit(task, checkpoints, images, tmp_path) -> None:
    predicted = run_predict(tmp_path / "cli", checkpoints[task], images)
    seg = Segmenter.from_pretrained(checkpoints[task], device="cpu")
    assert (seg.task, seg.test_min_size, seg.test_max_size) == (task, *TEST_SIZE)
    results = seg([str(p) for p in images])
    for path, result in zip(images, results, strict=True):
        assert isinstance(result, SegmenterResult)
        assert result.image.shape[:2] == np.asarray(Image.open(path)).shape[:2]
        if task == "semantic":
            png = np.asarray(Image.open(predicted / f"{path.stem}_semantic.png"))
            assert np.array_equal(png, result.semantic.numpy())
        if task == "panoptic":
            assert result.segments, "a threshold of 0.1 keeps segments of a random model"
            listed = json.loads((predicted / "panoptic.json").read_text())["annotations"]
            (entry,) = [a for a in listed if a["image_id"] == path.stem]
            ids = SYNTHETIC.dataset_ids
            ours = [(s.id, ids[s.class_id], s.isthing, s.score, s.area) for s in result.segments]
            theirs = [
                (s["id"], s["category_id"], bool(s["isthing"]), s["score"], s["area"])
                for s in entry["segments_info"]
            ]
            assert ours == theirs
            assert all(s.class_name == SYNTHETIC.class_names[s.class_id] for s in result.segments)
        if task == "instance":
            listed = [
                d
                for d in json.loads((predicted / "instances_results.json").read_text())
                if d["image_id"] == path.stem
            ]
            inst = result.instances
            assert len(inst) == len(listed) > 0
            order = np.argsort(-inst.scores.numpy(), kind="stable")
            assert [float(inst.scores[i]) for i in order] == [d["score"] for d in listed]
            ids = [SYNTHETIC.dataset_ids[int(inst.class_ids[i])] for i in order]
            assert ids == [d["category_id"] for d in listed]
    saved = tmp_path / "saved"
    from m2f_lightning import save_results

    save_results(results, saved)
    same_files(predicted, saved)


def test_segmenter_equals_predict_with_tta_and_sliding_windows(checkpoints, images, tmp_path):
    """Settings given as keyword arguments are the config keys of the inference group."""
    extra = [
        "inference.tta=true",
        "inference.mode=sliding",
        "inference.window=32",
        "inference.stride=16",
    ]
    predicted = run_predict(tmp_path / "cli", checkpoints["panoptic"], images, *extra)
    seg = Segmenter.from_pretrained(
        checkpoints["panoptic"], device="cpu", tta=True, mode="sliding", window=32, stride=16
    )
    assert seg.settings.tta and seg.settings.mode == "sliding"
    seg(images[0]).save(tmp_path / "one")
    png = f"{images[0].stem}_panoptic.png"
    assert (tmp_path / "one" / png).read_bytes() == (predicted / png).read_bytes()


def test_every_input_kind_gives_the_same_result(checkpoints, images) -> None:
    seg = Segmenter.from_pretrained(checkpoints["panoptic"], device="cpu")
    path = images[0]
    as_path = seg(path)
    as_pil = seg(Image.open(path))
    as_array = seg(np.asarray(Image.open(path).convert("RGB")))
    for other in (as_pil, as_array):
        assert torch.equal(other.panoptic, as_path.panoptic)
        assert other.segments == as_path.segments
    assert as_pil.file_name == str(path)  # a PIL image opened from a file keeps its name
    with pytest.raises(UserError, match="uint8"):
        seg(np.zeros((8, 8, 3), dtype=np.float32))


def test_a_batch_equals_single_images(checkpoints, images) -> None:
    for batch_size in (1, 2):
        seg = Segmenter.from_pretrained(
            checkpoints["panoptic"], device="cpu", batch_size=batch_size
        )
        both = seg(images)
        assert isinstance(both, list) and len(both) == 2
        for path, result in zip(images, both, strict=True):
            single = Segmenter.from_pretrained(checkpoints["panoptic"], device="cpu")(path)
            if batch_size == 1:
                assert torch.equal(result.panoptic, single.panoptic)
                assert result.segments == single.segments
            else:  # padded to a common size: the same image, not bit-identical logits
                assert result.panoptic.shape == single.panoptic.shape


def test_batch_of_two_equals_predict_with_the_same_batch(checkpoints, images, tmp_path) -> None:
    predicted = run_predict(
        tmp_path / "cli", checkpoints["semantic"], images, "dataset.eval_batch_size=2"
    )
    results = Segmenter.from_pretrained(checkpoints["semantic"], device="cpu", batch_size=2)(images)
    for path, result in zip(images, results, strict=True):
        png = np.asarray(Image.open(predicted / f"{path.stem}_semantic.png"))
        assert np.array_equal(png, result.semantic.numpy())


def test_bf16_runs_on_the_cpu_and_fp16_is_refused(checkpoints, images) -> None:
    result = Segmenter.from_pretrained(checkpoints["semantic"], device="cpu", dtype="bf16")(
        images[0]
    )
    assert result.semantic.shape == (64, 80)
    with pytest.raises(UnsupportedDtypeError, match=r"fp16.*cpu.*bf16.*fp32"):
        Segmenter.from_pretrained(checkpoints["semantic"], device="cpu", dtype="fp16")
    with pytest.raises(UnsupportedDtypeError, match="fp32, bf16 or fp16"):
        Segmenter.from_pretrained(checkpoints["semantic"], device="cpu", dtype="int8")


def test_half_weights_are_refused_at_the_forward_with_what_to_use(checkpoints) -> None:
    model = load_model(checkpoints["semantic"]).half()
    with pytest.raises(UnsupportedDtypeError, match=r"torch.float16.*dtype='bf16'"):
        model(torch.zeros(1, 3, 64, 64))


def test_overlay_and_save_write_what_predict_writes(checkpoints, images, tmp_path) -> None:
    result = Segmenter.from_pretrained(checkpoints["panoptic"], device="cpu")(images[0])
    overlay = result.overlay()
    assert isinstance(overlay, Image.Image) and overlay.height >= 64
    written = result.save(tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["img0_overlay.png", "img0_panoptic.png", "panoptic.json"]
    assert Image.open(tmp_path / "img0_overlay.png").size == overlay.size
    assert isinstance(result.segments[0], PredictedSegment)
    # an in-memory image: files named image0_*
    array = np.asarray(Image.open(images[0]))
    names = {
        p.name
        for p in Segmenter.from_pretrained(checkpoints["panoptic"], device="cpu")(array).save(
            tmp_path / "a"
        )
    }
    assert "image0_panoptic.png" in names


def test_keyword_arguments_override_the_checkpoint(checkpoints, images) -> None:
    seg = Segmenter.from_pretrained(
        checkpoints["panoptic"],
        device="cpu",
        task="semantic",
        test_min_size=32,
        object_mask_threshold=0.5,
    )
    assert (seg.task, seg.test_min_size, seg.settings.object_mask_threshold) == (
        "semantic",
        32,
        0.5,
    )
    assert seg(images[0]).panoptic is None
    with pytest.raises(ConfigError, match="tta_scales"):
        Segmenter.from_pretrained(checkpoints["panoptic"], device="cpu", tta_scale=[1.0])


# ------------------------------------------------------------------ predict from the checkpoint


def test_predict_from_a_lightning_checkpoint_equals_naming_its_dataset(
    checkpoints, images, tmp_path
):
    """Before: "predicts 5 classes but dataset 'coco' (panoptic) has 133"."""
    alone = run_predict(tmp_path / "alone", checkpoints["panoptic"], images)
    named = run_predict(
        tmp_path / "named",
        checkpoints["panoptic"],
        images,
        "task=panoptic",
        "dataset=synthetic",
        "dataset.eval_batch_size=1",
        f"dataset.test_min_size={TEST_SIZE[0]}",
        f"dataset.test_max_size={TEST_SIZE[1]}",
        f"dataset.object_mask_threshold={THRESHOLD}",
    )
    same_files(alone, named)


def test_a_named_dataset_that_does_not_fit_is_still_an_error(checkpoints, images, tmp_path):
    with pytest.raises(CheckpointError, match=r"predicts 5 classes but dataset 'coco'"):
        run_predict(tmp_path, checkpoints["panoptic"], images, "dataset=coco", "task=panoptic")


def test_predict_from_our_checkpoint_file(images, tmp_path) -> None:
    model = tiny_model(num_classes=5)
    meta = SYNTHETIC
    plain = save_model(model, tmp_path / "plain.pt", meta.class_names, meta.is_thing)
    with pytest.raises(
        CheckpointError, match=r"does not store the task.*task=panoptic\|instance\|semantic"
    ):
        run_predict(tmp_path / "a", plain, images)
    with pytest.warns(UserWarning, match="stores no test-time size"):
        out = run_predict(tmp_path / "b", plain, images, "task=semantic")
    assert (out / "img0_semantic.png").is_file()
    full = save_model(
        model,
        tmp_path / "full.pt",
        meta.class_names,
        meta.is_thing,
        task="semantic",
        test_min_size=64,
        test_max_size=96,
    )
    out = run_predict(tmp_path / "c", full, images)
    seg = Segmenter.from_pretrained(full, device="cpu")
    png = np.asarray(Image.open(out / "img1_semantic.png"))
    assert np.array_equal(png, seg(images[1]).semantic.numpy())


def hf_folder(path: Path, names: list[str]) -> Path:
    from tests.test_parity_hf import build_hf

    hf = build_hf(len(names), 6, 32, 7, 3)
    hf.config.id2label = dict(enumerate(names))
    hf.config.label2id = {n: i for i, n in enumerate(names)}
    hf.save_pretrained(path)
    return path


def test_predict_from_an_hf_folder_takes_thing_flags_from_a_shipped_catalog(images, tmp_path):
    folder = hf_folder(tmp_path / "hf", SYNTHETIC.class_names)
    with pytest.raises(CheckpointError, match="task=panoptic"):
        run_predict(tmp_path / "a", folder, images)
    out = run_predict(tmp_path / "b", folder, images, "task=panoptic", "dataset.test_min_size=64")
    categories = json.loads((out / "panoptic.json").read_text())["categories"]
    assert [c["isthing"] for c in categories] == [0, 0, 1, 1, 1]  # synthetic.json's flags
    seg = Segmenter.from_pretrained(folder, device="cpu", task="panoptic", test_min_size=64)
    assert seg.metadata.is_thing == [False, False, True, True, True]


def test_hf_folder_with_unknown_classes_asks_for_the_thing_classes(images, tmp_path) -> None:
    folder = hf_folder(tmp_path / "hf", ["road", "car", "tree"])
    with pytest.raises(CheckpointError, match=r"dataset.thing_classes=\[name"):
        run_predict(tmp_path / "a", folder, images, "task=panoptic", "dataset.test_min_size=64")
    with pytest.raises(CheckpointError, match=r"thing_classes=\[names"):
        Segmenter.from_pretrained(folder, device="cpu", task="instance")
    out = run_predict(
        tmp_path / "b", folder, images, "task=panoptic", "dataset.thing_classes=[car]"
    )
    categories = json.loads((out / "panoptic.json").read_text())["categories"]
    assert [(c["name"], c["isthing"]) for c in categories] == [("road", 0), ("car", 1), ("tree", 0)]
    # semantic needs no thing flags
    out = run_predict(tmp_path / "c", folder, images, "task=semantic", "dataset.test_min_size=64")
    assert (out / "img0_semantic.png").is_file()


def test_model_zoo_pkl_asks_for_the_class_names(images, tmp_path) -> None:
    from tests.test_checkpoints_edges import swin_pkl_weights

    pkl = tmp_path / "m.pkl"
    with pkl.open("wb") as f:
        pickle.dump({"model": swin_pkl_weights(tiny_model(num_classes=5))}, f)
    with pytest.raises(CheckpointError, match=r"stores no class names.*dataset.classes=\["):
        run_predict(tmp_path / "a", pkl, images, "task=semantic")
    with pytest.raises(CheckpointError, match=r"stores no class names.*class_names=\["):
        Segmenter.from_pretrained(pkl, device="cpu", task="semantic")


def test_split_needs_a_dataset_and_other_commands_refuse_the_checkpoint_dataset(tmp_path):
    cfg = compose("predict", ["checkpoint=x", "split=val"], tmp_path)
    with pytest.raises(ConfigError, match=r"split.*dataset=coco"):
        check_config(cfg, "predict", gpus=0, added=[])
    cfg = compose("evaluate", ["checkpoint=x", "dataset=checkpoint"], tmp_path)
    with pytest.raises(ConfigError, match="dataset=checkpoint.*for m2f-predict"):
        check_config(cfg, "evaluate", gpus=0, added=[])


@pytest.mark.slow
def test_the_onnxruntime_segmenter_agrees_with_eager(checkpoints, images, tmp_path) -> None:
    """runtime='onnxruntime' (issue 26.3): the exported network, cached beside the checkpoint,
    gives the eager Segmenter's panoptic maps on ≥ 99.9% of the pixels."""
    ckpt = tmp_path / "panoptic.ckpt"
    ckpt.write_bytes(checkpoints["panoptic"].read_bytes())
    eager = Segmenter.from_pretrained(ckpt, device="cpu")
    onnx = Segmenter.from_pretrained(ckpt, device="cpu", runtime="onnxruntime")
    assert isinstance(onnx.net, OnnxRuntime)
    warnings.simplefilter("error", RuntimeFallback)  # a fallback to eager would prove nothing
    for path in images:
        want, got = eager(path).semantic, onnx(path).semantic
        assert want.shape == got.shape
        assert (want == got).float().mean() >= 0.999
    assert list(tmp_path.glob("panoptic.*.onnx")), "the export is cached beside the checkpoint"


def test_onnxruntime_is_float32_on_the_cpu(checkpoints) -> None:
    with pytest.raises(ConfigError, match="runtime='onnxruntime' runs float32 on the CPU"):
        Segmenter.from_pretrained(
            checkpoints["semantic"], device="cpu", dtype="bf16", runtime="onnxruntime"
        )
