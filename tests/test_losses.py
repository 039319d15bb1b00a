"""The set criterion: parity with the HF port, optimal matching, DDP normaliser, robustness."""

import itertools
import os
from unittest import mock

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from m2f_lightning.losses import HungarianMatcher, SetCriterion
from tests.loss_inputs import num_masks_worker, random_targets

WEIGHTS = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def random_outputs(batch=2, queries=10, classes=6, h=16, w=24, aux=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def one():
        return {
            "pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
            "pred_masks": 3 * torch.randn(batch, queries, h, w, generator=g),
        }

    outputs = one()
    outputs["aux_outputs"] = [one() for _ in range(aux)]
    return outputs


def test_loss_equals_the_hf_port_with_the_same_points() -> None:
    outputs, targets = random_outputs(), random_targets((3, 5))
    config = Mask2FormerConfig(num_labels=6, train_num_points=196)
    hf = Mask2FormerLoss(config, {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0})
    ours = SetCriterion(6, num_points=196)
    aux = [
        {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
        for a in outputs["aux_outputs"]
    ]
    # HF draws its points with torch.rand, matcher and losses interleaved per set; we match all
    # sets first: record HF's draws and hand each of ours the same points (matcher: (1, P, 2))
    draws: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    rand = torch.rand

    def recording(*size, **kwargs):
        out = rand(*size, **kwargs)
        draws[tuple(size) == (1, 196, 2)].append(out)
        return out

    with mock.patch("torch.rand", recording):
        ref = hf(
            outputs["pred_masks"],
            outputs["pred_logits"],
            [t["masks"].float() for t in targets],
            [t["labels"] for t in targets],
            aux,
        )
    ours.matcher.rand = lambda *size, **kwargs: draws[True].pop(0)
    ours.rand = lambda *size, **kwargs: draws[False].pop(0)
    got = ours(outputs, targets)
    assert draws == {True: [], False: []}
    assert len(got) == 3 * 4 + 1
    total = 0.0
    for key, value in ref.items():
        name = key.replace("loss_cross_entropy", "loss_ce")
        weighted = value.item() * WEIGHTS[name.rstrip("0123456789").rstrip("_")]
        total += weighted
        assert got[name].item() == pytest.approx(weighted, rel=1e-5), name
    assert got["loss"].item() == pytest.approx(total, rel=1e-5)


def test_returns_thirty_terms_and_the_total_for_ten_prediction_sets() -> None:
    losses = SetCriterion(6, num_points=64)(random_outputs(aux=9), random_targets((2, 4)))
    assert len(losses) == 31
    assert losses["loss"].item() == pytest.approx(
        sum(v.item() for k, v in losses.items() if k != "loss"), rel=1e-6
    )


def brute_force(cost: np.ndarray) -> float:
    rows, cols = cost.shape
    return min(
        cost[list(perm), list(range(cols))].sum()
        for perm in itertools.permutations(range(rows), cols)
    )


@pytest.mark.parametrize("counts", [(3, 1), (5, 0), (4, 4)])
def test_matching_is_optimal(counts) -> None:
    outputs = random_outputs(queries=5, aux=0, seed=3)
    targets = random_targets(counts, seed=4)
    matcher = HungarianMatcher(num_points=500)
    captured = {}
    original = matcher.rand
    matcher.rand = lambda *a, **k: captured.setdefault(len(captured), original(*a, **k))
    matches = matcher(outputs, targets)
    # recompute the cost with the same points, independently of the matcher
    from m2f_lightning.losses.point_sampling import point_sample

    for i, (rows, cols) in enumerate(matches):
        n = counts[i]
        assert len(rows) == len(cols) == n
        if n == 0:
            continue
        coords = captured[i]
        pred = point_sample(outputs["pred_masks"][i : i + 1], coords)[0]
        tgt = point_sample(targets[i]["masks"][None].float(), coords)[0]
        probs = outputs["pred_logits"][i].softmax(-1)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        cost = np.zeros((pred.shape[0], n))
        for q in range(pred.shape[0]):
            for t in range(n):
                p = pred[q].sigmoid()
                dice = 1 - (2 * (p * tgt[t]).sum() + 1) / (p.sum() + tgt[t].sum() + 1)
                cost[q, t] = (
                    5 * bce(pred[q], tgt[t]).item()
                    + 2 * -probs[q, targets[i]["labels"][t]].item()
                    + 5 * dice.item()
                )
        assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(brute_force(cost), abs=1e-4)


def test_nan_predictions_do_not_break_matching() -> None:
    outputs = random_outputs(aux=0)
    outputs["pred_masks"][0, :3] = float("nan")
    matches = HungarianMatcher(num_points=64)(outputs, random_targets((3, 2)))
    assert [len(r) for r, _ in matches] == [3, 2]


def test_no_targets_gives_a_finite_loss_with_class_gradients() -> None:
    outputs = random_outputs(aux=1)
    for o in [outputs, *outputs["aux_outputs"]]:
        o["pred_logits"].requires_grad_(True)
    losses = SetCriterion(6, num_points=64)(outputs, random_targets((0, 0)))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_inputs_give_the_fp32_loss(dtype) -> None:
    """Half-precision outputs under autocast are scored in float32: the loss equals, to float32
    rounding, the loss of the same (rounded) values given as float32. A loss computed in the
    half type would be off by ~1e-3 (bf16) / ~1e-4 (fp16) relative."""
    outputs, targets = random_outputs(aux=1), random_targets((2, 3))
    criterion = SetCriterion(6, num_points=64)
    half = {
        "pred_logits": outputs["pred_logits"].to(dtype),
        "pred_masks": outputs["pred_masks"].to(dtype),
        "aux_outputs": [{k: v.to(dtype) for k, v in a.items()} for a in outputs["aux_outputs"]],
    }
    upcast = {
        "pred_logits": half["pred_logits"].float(),
        "pred_masks": half["pred_masks"].float(),
        "aux_outputs": [{k: v.float() for k, v in a.items()} for a in half["aux_outputs"]],
    }
    torch.manual_seed(0)
    reference = criterion(upcast, targets)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=dtype):
        got = criterion(half, targets)
    assert got["loss"].dtype == torch.float32
    for name, value in reference.items():
        assert got[name].dtype == torch.float32, name
        assert got[name].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-7), name


def test_full_mask_mode_equals_a_direct_computation() -> None:
    outputs, targets = random_outputs(aux=0), random_targets((2, 3))
    criterion = SetCriterion(6, point_sampled=False)
    losses = criterion(outputs, targets)
    matches = criterion.matcher(outputs, targets)
    up = torch.nn.functional.interpolate(
        outputs["pred_masks"], size=(64, 96), mode="bilinear", align_corners=False
    )
    bce, dice = 0.0, 0.0
    for i, (rows, cols) in enumerate(matches):
        for q, t in zip(rows.tolist(), cols.tolist(), strict=True):
            x, y = up[i, q].flatten(), targets[i]["masks"][t].flatten().float()
            bce += torch.nn.functional.binary_cross_entropy_with_logits(x, y).item()
            p = x.sigmoid()
            dice += 1 - ((2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)).item()
    num_masks = 5  # weight 5 each, normalised by the 2 + 3 target masks
    assert losses["loss_mask"].item() == pytest.approx(5 * bce / num_masks, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(5 * dice / num_masks, rel=1e-5)


@pytest.mark.spawns
def test_num_masks_is_averaged_over_ranks() -> None:
    manager = mp.Manager()
    results = manager.dict()
    port = str(29500 + os.getpid() % 1000)
    mp.spawn(num_masks_worker, args=(port, results), nprocs=2, join=True)
    assert dict(results) == {0: 6.0, 1: 6.0}
