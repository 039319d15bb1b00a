"""Two-process DDP on CPU (ddp_spawn, gloo): every validation image is scored exactly once, so
evaluation and the validation of a training give, on two ranks, the metrics of one device.

The scored model is an "oracle" that returns each image's ground truth, corrupted by an amount
that depends on the image (shifted masks, dropped segments, a relabelled instance, scores), so
PQ / AP / mIoU are far from 0 and 100 and change when an image is scored twice or missed.
"""

import zlib
from pathlib import Path

import pytest
import torch

from m2f_lightning.cli import builders, commands
from m2f_lightning.cli.commands import evaluate, train
from m2f_lightning.data.sampling import EvalSampler
from m2f_lightning.data.synthetic import write_dataset
from m2f_lightning.lightning_module import Mask2FormerModule
from m2f_lightning.types import InstanceSet, Segment, SegmentationResult
from tests.helpers import compose, synthetic_panoptic

HEADLINE = ("PQ", "PQ_th", "PQ_st", "AP", "mIoU")


class OracleModule(Mask2FormerModule):
    """Trains as usual; evaluates corrupted ground truth instead of its predictions."""

    def predict_batch(self, batch):
        results = []
        num_classes = self.model.num_classes
        for i, image_id in enumerate(batch.image_ids):
            target = batch.eval_targets[i]
            r = zlib.crc32(str(image_id).encode())
            shift = 1 + r % 7
            pairs = torch.roll(target.panoptic, shifts=shift, dims=1)
            seg = torch.zeros(pairs.shape[:2], dtype=torch.int64)
            segments = []
            keys = torch.unique(pairs.reshape(-1, 2), dim=0).tolist()
            for k, (category, instance) in enumerate(keys):
                if category < 0 or category >= num_classes or (r + k) % 4 == 0:
                    continue  # void, or a dropped segment
                segments.append({"id": len(segments) + 1, "category_id": category})
                seg[(pairs[..., 0] == category) & (pairs[..., 1] == instance)] = len(segments)
            gt = target.instances
            masks = torch.roll(gt.masks.bool(), shifts=-shift, dims=2)
            labels = gt.labels.clone()
            if len(labels) and r % 2:
                labels[0] = (labels[0] + 1) % num_classes
            # no ties across images: AP would then depend on the order images are gathered in
            scores = 0.3 + (r % 9973) / 20000 + 0.1 * torch.arange(len(labels), dtype=torch.float32)
            sem = target.sem_seg.clone()
            sem[sem == 255] = 0
            sem = torch.roll(sem, shifts=shift, dims=0)
            results.append(
                SegmentationResult(
                    panoptic_seg=seg,
                    segments=[
                        Segment(id=g["id"], category_id=g["category_id"], isthing=False)
                        for g in segments
                    ],
                    instances=InstanceSet(masks=masks, scores=scores, labels=labels),
                    sem_seg=torch.nn.functional.one_hot(sem, num_classes).permute(2, 0, 1).float(),
                )
            )
        return results


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_dataset("demo", root, num=4, num_val=5, seed=0)  # 5 images: 3 on rank 0, 2 on rank 1
    return root


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "Mask2FormerModule", OracleModule)
    monkeypatch.setattr(commands, "load_weights_for", lambda cfg, dm, path: None)


def _overrides(datasets: Path, *extra: str) -> list[str]:
    return synthetic_panoptic(datasets, "dataset.eval_batch_size=2", *extra)


def _headline(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {k: metrics[prefix + k] for k in HEADLINE}


TWO_RANKS = ["trainer.devices=2", "trainer.strategy=ddp_spawn"]


@pytest.mark.slow
def test_evaluate_on_two_processes_equals_one_device(
    datasets: Path, tmp_path: Path, oracle: None
) -> None:
    common = _overrides(datasets, f"checkpoint={__file__}")
    one = evaluate(compose("evaluate", common, tmp_path / "one"), tmp_path / "one")
    two = evaluate(compose("evaluate", [*common, *TWO_RANKS], tmp_path / "two"), tmp_path / "two")
    assert 5 < one["PQ"] < 95 and 5 < one["AP"] < 95 and 5 < one["mIoU"] < 95, one
    # on one device evaluate returns the float64 results; from ddp_spawn's children Lightning
    # sends back the logged (float32) values: compare at that precision
    as_logged = {k: float(torch.tensor(v, dtype=torch.float32)) for k, v in _headline(one).items()}
    assert _headline(two) == pytest.approx(as_logged, abs=1e-6, rel=0)


@pytest.mark.slow
def test_validation_after_training_on_two_processes_equals_one_device(
    datasets: Path, tmp_path: Path, oracle: None
) -> None:
    common = _overrides(
        datasets,
        "dataset.max_steps=2",
        "dataset.val_every_n_steps=2",
        "test_after_training=false",
    )
    one = train(compose("train", common, tmp_path / "one"), tmp_path / "one")
    two = train(compose("train", [*common, *TWO_RANKS], tmp_path / "two"), tmp_path / "two")
    # ddp_spawn trains in child processes: the step count lives in their checkpoint
    ckpt = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert 5 < one["val"]["val/PQ"] < 95, one
    assert _headline(two["val"], "val/") == pytest.approx(
        _headline(one["val"], "val/"), abs=1e-6, rel=0
    )


@pytest.mark.parametrize("num_images,world_size", [(5, 2), (2, 4), (0, 2), (7, 3)])
def test_eval_sampler_scores_every_image_once_with_equal_batches_per_rank(
    num_images: int, world_size: int
) -> None:
    shards = [list(EvalSampler(num_images, rank, world_size)) for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1  # every rank runs as many steps
    scored = sorted(key.index for shard in shards for key in shard if key.scored)
    assert scored == list(range(num_images))
