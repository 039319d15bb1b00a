"""Host round trips of a training step: the counter sees what stalls a GPU (even on CPU, where
most of it dispatches nothing), a step makes exactly the one copy it is allowed, and matching
every prediction set from one copy gives the losses, gradients and matches of the per-set path."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from m2f_lightning.losses import SetCriterion
from m2f_lightning.runs.host_syncs import HostSyncCounter, count_training_step
from tests.test_lightning_module import make_batch, make_module
from tests.test_losses import random_outputs, random_targets


def kinds(counter: HostSyncCounter) -> list[tuple[str, str]]:
    return [(event.kind, event.op) for event in counter.events]


def test_counter_sees_each_kind_of_round_trip_on_cpu() -> None:
    x = torch.randn(4, 5)  # made before the block: a device tensor
    with HostSyncCounter() as syncs:
        y = x * 2
        y.sum().item()
        y.cpu().double().numpy()  # one copy: the host copy's numpy() is free
        host_index = torch.as_tensor(np.array([0, 2]))
        y[host_index]  # a host index makes the device wait for a blocking copy
        y[host_index.to(y.device, non_blocking=True)]
        y[y > 0]
        (y > 0).nonzero()
        torch.tensor(3.0, device=y.device)
        y.tolist()
        (host_index + 1).tolist()  # host tensors alone stay on the host
        y.to(torch.float64)  # a dtype change on the device
    assert kinds(syncs) == [
        ("scalar_read", "_local_scalar_dense"),
        ("d2h", "cpu"),
        ("h2d", "index"),
        ("bool_index", "index"),
        ("data_dependent", "nonzero"),
        ("h2d", "tensor"),
        ("d2h", "tolist"),
    ]
    assert all("test_host_syncs.py" in event.where for event in syncs.events)
    # the patched methods are restored
    assert torch.Tensor.cpu.__qualname__ == "TensorBase.cpu"


def test_the_losses_of_all_ten_prediction_sets_copy_to_the_host_once() -> None:
    """Matching, losses and their backward: the one copy of every set's costs, nothing else."""
    outputs, targets = leaves(random_outputs(aux=9)), random_targets((3, 0))
    criterion = SetCriterion(6, num_points=64)
    with HostSyncCounter() as syncs:
        losses = criterion(outputs, targets)
        losses["loss"].backward()
    assert kinds(syncs) == [("d2h", "cpu")], syncs.events
    assert "losses/matcher.py" in syncs.events[0].where
    assert syncs.events[0].where.endswith("match_sets")


@pytest.mark.slow
def test_a_training_step_copies_to_the_host_once_for_matching() -> None:
    """The whole second step (forward, matching, losses, logging, backward, the non-finite
    guard, clipping, the fused optimiser step): one copy of all prediction sets' costs, nothing
    else (the guard's skip flag goes to the optimiser as a device tensor). A new `.item()`,
    `.cpu()`, boolean mask or blocking copy in the step fails here, naming where it came from."""
    torch.manual_seed(0)
    # per-sample point seeds, as the training data gives them: generators made on the host
    batch = dataclasses.replace(make_batch(), point_seeds=[7, 8])
    syncs = count_training_step(make_module(), batch, step=1)
    where = [(e.kind, e.op, e.where.split("m2f_lightning/")[-1]) for e in syncs.events]
    assert len(where) == 1, where
    ((copy_kind, copy_op, copy_at),) = where
    assert (copy_kind, copy_op) == ("d2h", "cpu") and copy_at.endswith("match_sets")
    assert copy_at.startswith("losses/matcher.py")


def per_set_reference(criterion: SetCriterion, outputs: dict, targets: list[dict]) -> tuple:
    """The criterion as it was: each prediction set matched on its own (one copy each), its
    losses computed right after."""
    num_masks = torch.tensor(float(sum(len(t["labels"]) for t in targets))).clamp(min=1.0)
    float_masks = [t["masks"].float() for t in targets]
    raw, all_matches = {}, []
    for i, preds in enumerate([outputs, *outputs["aux_outputs"]]):
        matches = criterion.matcher(preds, targets, float_masks)
        all_matches.append(matches)
        mask, dice = criterion.loss_masks(preds, targets, matches, num_masks, float_masks)
        suffix = "" if i == 0 else f"_{i - 1}"
        raw[f"loss_mask{suffix}"], raw[f"loss_dice{suffix}"] = mask, dice
        raw[f"loss_ce{suffix}"] = criterion.loss_labels(preds["pred_logits"], targets, matches)
    losses = {k: v * criterion.weights[re.sub(r"_\d+$", "", k)] for k, v in raw.items()}
    losses["loss"] = sum(losses.values())
    return losses, all_matches


def seeded(criterion: SetCriterion, seed: int) -> None:
    """Matcher and losses draw from generators of their own: the points do not depend on the
    order in which the two ask for them."""
    g_match, g_loss = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    criterion.matcher.rand = lambda *size, device=None: torch.rand(*size, generator=g_match)
    criterion.rand = lambda *size, device=None: torch.rand(*size, generator=g_loss)


def leaves(outputs: dict) -> dict:
    out = {k: v.clone().requires_grad_() for k, v in outputs.items() if k != "aux_outputs"}
    out["aux_outputs"] = [
        {k: v.clone().requires_grad_() for k, v in aux.items()} for aux in outputs["aux_outputs"]
    ]
    return out


def gradients(outputs: dict) -> list[torch.Tensor]:
    sets = [outputs, *outputs["aux_outputs"]]
    return [s[k].grad for s in sets for k in ("pred_logits", "pred_masks")]


def test_one_copy_for_all_sets_gives_the_losses_gradients_and_matches_of_the_per_set_path() -> None:
    base, targets = random_outputs(aux=9, queries=8), random_targets((3, 0))
    criterion = SetCriterion(6, num_points=128)
    seeded(criterion, 0)
    ours_in = leaves(base)
    ours = criterion(ours_in, targets)
    ours["loss"].backward()
    seeded(criterion, 0)
    ref_in = leaves(base)
    ref, ref_matches = per_set_reference(criterion, ref_in, targets)
    ref["loss"].backward()
    assert ours.keys() == ref.keys() and len(ours) == 31
    for name, value in ref.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-6, atol=0, msg=name)
    for got, want in zip(gradients(ours_in), gradients(ref_in), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    seeded(criterion, 0)
    matches = criterion.matcher.match_sets([base, *base["aux_outputs"]], targets)
    assert [[(r.tolist(), c.tolist()) for r, c in m] for m in matches] == [
        [(r.tolist(), c.tolist()) for r, c in m] for m in ref_matches
    ]
    assert [len(r) for r, _ in matches[0]] == [3, 0]
