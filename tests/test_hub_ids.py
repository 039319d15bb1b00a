"""Weights named by a Hugging Face hub id (`owner/name`): read from the hub's cache, offline.

Every test builds a tiny random HF Mask2Former, writes it into a temporary HF cache in the hub's
own layout (`models--owner--name/snapshots/<commit>/`, `refs/main`) and sets HF_HUB_OFFLINE, so
nothing is fetched: `load_model`, `m2f-convert-hf`, `m2f-evaluate` / `m2f-predict`
(`checkpoint=`), training (`init_weights=`) and the config check take the id as they take the
folder; an id not in the cache fails with one error naming it and the offline ways out.
"""

import json
import re
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from m2f_lightning.checkpoints import load_model, read_weights
from m2f_lightning.checkpoints.convert import convert_hf_main
from m2f_lightning.cli.commands import evaluate, predict, train
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.errors import CheckpointError, ConfigError, MissingCheckpointError
from tests.helpers import TINY_OVERRIDES, compose
from tests.test_readme_weights_cli import NAMES, constant_hf_dir, hf_with_names
from tests.test_train_cli import SKY, constant_prediction_metrics, ground_truth

REPO = "tiny-org/mask2former-tiny-synthetic"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# the model.net / backbone sizes of `hf_with_names` (tests/test_parity_hf.build_hf), on top of
# TINY_OVERRIDES, so that its weights fit a model built from the config (init_weights)
HF_ARCHITECTURE = [
    "++backbone.kwargs={embed_dim: 32, depths: [1, 1, 2, 1], num_heads: [1, 2, 4, 8], "
    "window_size: 7, drop_path_rate: 0.0}",
    "model.net.encoder_layers=2",
    "model.net.encoder_ffn_dim=128",
    "model.net.decoder_layers=2",
    "model.net.decoder_ffn_dim=128",
]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache of this test, offline: huggingface_hub reads both settings at import,
    so its constants are set too (a child process would read the environment)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache: Path, repo: str, folder: Path, commit: str = COMMIT) -> Path:
    """`folder`'s files as the hub's cache holds a download of `repo` at `commit` (its `main`)."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=2, num_val=2, seed=0)
    return root


@pytest.fixture
def constant_in_cache(hub_cache: Path, tmp_path: Path) -> Path:
    """The snapshot folder of `REPO`: an HF model predicting `sky` over every pixel."""
    folder = constant_hf_dir(tmp_path / "hf-constant", SKY)
    return put_in_cache(hub_cache, REPO, folder)


def synthetic(datasets: Path, task: str, *extra: str) -> list[str]:
    return [
        f"task={task}",
        "dataset=synthetic",
        *TINY_OVERRIDES,
        f"paths.datasets_dir={datasets}",
        "dataset.train_aug={recipe: lsj, size: 128}",
        *extra,
    ]


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_model_by_hub_id_is_the_cached_folder(hub_cache: Path, tmp_path: Path) -> None:
    hf = hf_with_names(NAMES)
    hf.save_pretrained(tmp_path / "hf")
    snapshot = put_in_cache(hub_cache, REPO, tmp_path / "hf")
    from_folder = load_model(snapshot)
    for spec in (REPO, f"{REPO}@{COMMIT}", f"{REPO}@main"):
        by_id = load_model(spec)
        assert_same_model(by_id, from_folder)
        assert by_id.class_names == NAMES and by_id.config == from_folder.config
    assert read_weights(REPO)[2] == NAMES
    # m2f-convert-hf takes the id too, and its file holds the same model
    dst = tmp_path / "converted.pt"
    assert convert_hf_main([REPO, str(dst)]) == 0
    assert_same_model(load_model(dst), from_folder)


def test_a_hub_id_not_in_the_cache_offline_is_one_clear_error(
    hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(MissingCheckpointError) as err:
        load_model("facebook/mask2former-swin-tiny-coco-panoptic")
    message = str(err.value)
    assert "\n" not in message
    for part in (
        "facebook/mask2former-swin-tiny-coco-panoptic",
        "not in the local HF cache",
        str(hub_cache),
        "HF_HUB_OFFLINE",
        "hf download facebook/mask2former-swin-tiny-coco-panoptic",
        "models--facebook--mask2former-swin-tiny-coco-panoptic",
        "downloaded folder's path",
    ):
        assert part in message, (part, message)
    # the config cached but not the weights (an interrupted download): the same error
    hf_with_names(NAMES).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    put_in_cache(hub_cache, REPO, tmp_path / "hf")
    with pytest.raises(MissingCheckpointError, match=f"{REPO}: .*not in the local HF cache"):
        load_model(REPO)
    # m2f-convert-hf: exit 1 with one error line
    capsys.readouterr()  # (save_pretrained's progress bars)
    assert convert_hf_main(["someone/missing-model", str(tmp_path / "x.pt")]) == 1
    err_text = capsys.readouterr().err
    assert (
        err_text.startswith("error: checkpoint someone/missing-model: ")
        and not (tmp_path / "x.pt").exists()
    )


def test_a_hub_model_that_is_no_mask2former_is_refused_before_its_weights(
    hub_cache: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "num_labels": 2}))
    put_in_cache(hub_cache, "someone/a-bert", folder)  # no weights: never asked for
    with pytest.raises(
        CheckpointError, match="hub model someone/a-bert describes a 'bert' model, not a Mask2F"
    ):
        load_model("someone/a-bert")
    # the same check on a local HF folder
    with pytest.raises(CheckpointError, match="describes a 'bert' model, not a Mask2Former"):
        load_model(folder)


def test_a_local_folder_spelled_like_a_hub_id_wins(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_with_names(NAMES).save_pretrained(tmp_path / "cached")
    put_in_cache(hub_cache, REPO, tmp_path / "cached")
    local_names = ["a", "b", "c", "d", "e"]
    work = tmp_path / "work"
    hf_with_names(local_names).save_pretrained(work / REPO)
    monkeypatch.chdir(work)
    assert load_model(REPO).class_names == local_names
    monkeypatch.chdir(tmp_path)
    assert load_model(REPO).class_names == NAMES


def test_what_is_a_path_and_what_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from m2f_lightning.checkpoints.hub import parse_hub_id

    monkeypatch.chdir(tmp_path)
    assert parse_hub_id("facebook/mask2former-swin-tiny-coco-panoptic") == (
        "facebook/mask2former-swin-tiny-coco-panoptic",
        None,
    )
    assert parse_hub_id(f"{REPO}@v1.0") == (REPO, "v1.0")
    for path in (
        "runs/last.ckpt",  # a file's suffix: a missing file, not a hub model
        "weights/m2f.pt",
        "zoo/model_final_94dc52.pkl",
        "/abs/folder",
        "./a/b",
        "~/a",
        "a/b/c",
        "single",
        "a--b/c",
        "",
    ):
        assert parse_hub_id(path) is None, path
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert parse_hub_id("owner/name") is None  # an existing folder


def test_the_config_check_takes_a_hub_id_for_checkpoint_and_init_weights(
    datasets: Path, tmp_path: Path
) -> None:
    from m2f_lightning.cli.builders import validate_config

    validate_config(
        compose("evaluate", synthetic(datasets, "panoptic", f"checkpoint={REPO}"), tmp_path),
        "evaluate",
    )
    validate_config(
        compose("train", synthetic(datasets, "panoptic", f"init_weights={REPO}"), tmp_path), "train"
    )
    with pytest.raises(ConfigError) as err:
        validate_config(
            compose(
                "evaluate", synthetic(datasets, "panoptic", "checkpoint=runs/gone.ckpt"), tmp_path
            ),
            "evaluate",
        )
    assert (
        "checkpoint=runs/gone.ckpt: must be the path of an existing file or folder, or a "
        "Hugging Face hub id" in str(err.value)
    )


@pytest.mark.slow
def test_evaluate_and_predict_with_checkpoint_a_hub_id(
    datasets: Path, constant_in_cache: Path, tmp_path: Path
) -> None:
    """The cached model predicts `sky` everywhere: the metrics are those the annotation files
    give such a prediction, and predict writes `sky` over every pixel."""
    expected = constant_prediction_metrics([g for _, g in ground_truth(datasets)], SKY)
    cfg = compose("evaluate", synthetic(datasets, "panoptic", f"checkpoint={REPO}"), tmp_path / "e")
    results = evaluate(cfg, tmp_path / "e")
    assert results["PQ"] == pytest.approx(expected["PQ"], abs=1e-4)
    assert results["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-4)
    assert json.loads((tmp_path / "e" / "eval_metrics.json").read_text())["checkpoint"] == REPO

    image = sorted((datasets / "synthetic" / "val2017").glob("*.jpg"))[0]
    extra = [f"checkpoint={REPO}", f"inputs=[{image}]"]
    predict(
        compose("predict", synthetic(datasets, "panoptic", *extra), tmp_path / "p"), tmp_path / "p"
    )
    out = tmp_path / "p" / "predictions"
    (ann,) = json.loads((out / "panoptic.json").read_text())["annotations"]
    (segment,) = ann["segments_info"]
    assert segment["category_id"] == SKY + 1  # synthetic file ids are 1..5
    rgb = np.asarray(Image.open(out / f"{image.stem}_panoptic.png"), dtype=np.int64)
    assert (rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2] == segment["id"]).all()


@pytest.mark.slow
def test_init_weights_a_hub_id_starts_training_from_it(
    datasets: Path, constant_in_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = synthetic(
        datasets, "panoptic", *HF_ARCHITECTURE, "debug=fast", f"init_weights={REPO}"
    )
    summary = train(compose("train", overrides, tmp_path / "t"), tmp_path / "t")
    assert summary["global_step"] == 1
    out = capsys.readouterr().out
    assert re.search(
        rf"init_weights: loaded {re.escape(REPO)}; class head: 5 classes kept by name, 0 fresh", out
    ), out[-2000:]


def test_predict_resumes_only_under_the_same_hub_commit(hub_cache: Path, tmp_path: Path) -> None:
    """A rerun of predict skips images done before only when the checkpoint is the same: for a
    hub id, the same cached commit (`main` moved: another model)."""
    from omegaconf import OmegaConf

    from m2f_lightning.cli.commands import prediction_settings

    hf_with_names(NAMES).save_pretrained(tmp_path / "hf")
    snapshot = put_in_cache(hub_cache, REPO, tmp_path / "hf")
    cfg = OmegaConf.create({"checkpoint": REPO, "inputs": ["a.jpg"]})
    before = prediction_settings(cfg)
    assert prediction_settings(cfg) == before
    newer = "f" * 40
    shutil.copytree(snapshot, snapshot.parent / newer)
    (snapshot.parents[1] / "refs" / "main").write_text(newer)
    assert prediction_settings(cfg) != before


def test_export_names_its_file_after_the_hub_model(tmp_path: Path) -> None:
    from m2f_lightning.cli.export import default_output

    assert default_output(REPO, "onnx") == Path("mask2former-tiny-synthetic.onnx")
    assert default_output("runs/last.ckpt", "onnx") == Path("runs/last.onnx")


def test_without_network_the_cache_answers(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE unset and the hub unreachable (its first request fails as without a
    network): a cached id loads, an id not in the cache is the one clear error."""
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    asked = []

    def unreachable(self, repo_id, **kwargs):
        asked.append(repo_id)
        raise OfflineModeIsEnabled("no network (test)")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    hf_with_names(NAMES).save_pretrained(tmp_path / "hf")
    put_in_cache(hub_cache, REPO, tmp_path / "hf")
    assert load_model(REPO).class_names == NAMES
    with pytest.raises(MissingCheckpointError, match="not in the local HF cache .* the hub cannot"):
        load_model("someone/not-cached")
    assert asked == [REPO, "someone/not-cached"]
