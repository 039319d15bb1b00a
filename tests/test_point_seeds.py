"""Per-sample point seeds: an image's sampled points (matcher and mask losses) come from its own
seed, so the criterion of a batch equals the DDP combination of one-image ranks, and an image
gets the same points at any position in any batch."""

import pytest
import torch

from m2f_lightning.losses import SetCriterion
from m2f_lightning.losses import criterion as criterion_module
from m2f_lightning.runs.host_syncs import HostSyncCounter
from tests.test_host_syncs import gradients, kinds, leaves
from tests.test_losses import random_outputs, random_targets

SEEDS = [101, 202, 303, 404]


def image(outputs: dict, i: int) -> dict:
    """Image i of a batch of outputs, as a batch of one (views: gradients flow back)."""
    out = {k: v[i : i + 1] for k, v in outputs.items() if k != "aux_outputs"}
    out["aux_outputs"] = [{k: v[i : i + 1] for k, v in a.items()} for a in outputs["aux_outputs"]]
    return out


def test_a_batch_of_four_equals_four_one_image_ranks_averaged_as_ddp_does(monkeypatch) -> None:
    """no_object_weight=1.0: every rank's class-loss weight sum is its queries × images, so the
    mean of the ranks' weighted CE is the batch's (with 0.1 it is not: docs/fidelity.md). Mask
    and dice divide by the global mask count, which `global_num_masks` gives every rank."""
    base = random_outputs(batch=4, queries=8, aux=3, seed=5)
    targets = random_targets((3, 1, 0, 2), seed=6)  # an image without targets too
    criterion = SetCriterion(6, num_points=64, no_object_weight=1.0)
    batched_in = leaves(base)
    batched = criterion(batched_in, targets, SEEDS)
    batched["loss"].backward()

    # four ranks of one image: what `global_num_masks` returns under DDP (the mean count)
    per_rank = torch.tensor(sum(len(t["labels"]) for t in targets) / len(targets))
    monkeypatch.setattr(criterion_module, "global_num_masks", lambda targets, device: per_rank)
    ranks_in = leaves(base)
    ranks = [criterion(image(ranks_in, i), [targets[i]], [SEEDS[i]]) for i in range(len(targets))]
    # DDP averages the ranks' gradients: the backward of the mean of their losses
    torch.stack([r["loss"] for r in ranks]).mean().backward()
    assert len(batched) == 13
    for name, value in batched.items():
        mean = torch.stack([r[name] for r in ranks]).mean()
        torch.testing.assert_close(value, mean, rtol=1e-6, atol=0, msg=name)
    for got, want in zip(gradients(batched_in), gradients(ranks_in), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_an_image_gets_the_same_points_at_any_batch_position() -> None:
    base = random_outputs(batch=2, queries=8, aux=3, seed=7)
    targets = random_targets((3, 2), seed=8)
    # no-object weight 1: image 0's matches do not change the class loss's weight sum
    criterion = SetCriterion(6, num_points=64, no_object_weight=1.0)

    def run(order: list[int], seeds: list[int]) -> dict:
        outputs = leaves(base)
        swapped = {k: v[order] for k, v in outputs.items() if k != "aux_outputs"}
        swapped["aux_outputs"] = [
            {k: v[order] for k, v in a.items()} for a in outputs["aux_outputs"]
        ]
        losses = criterion(swapped, [targets[i] for i in order], seeds)
        losses["loss"].backward()
        return {"losses": losses, "grads": gradients(outputs)}

    torch.manual_seed(0)
    forward = run([0, 1], [SEEDS[0], SEEDS[1]])
    torch.manual_seed(1)  # the global generator plays no part
    backward = run([1, 0], [SEEDS[1], SEEDS[0]])
    for name, value in forward["losses"].items():
        torch.testing.assert_close(backward["losses"][name], value, rtol=1e-6, atol=0, msg=name)
    for got, want in zip(backward["grads"], forward["grads"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    # the seed is what decides: another seed for image 0 moves its points, not image 1's
    other = run([0, 1], [SEEDS[2], SEEDS[1]])
    masks = slice(1, None, 2)  # gradients() alternates pred_logits and pred_masks
    for got, want in zip(other["grads"][masks], forward["grads"][masks], strict=True):
        assert not torch.allclose(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-9)


def test_point_seeds_must_match_the_batch() -> None:
    with pytest.raises(ValueError, match="3 point seeds for a batch of 2 images"):
        SetCriterion(6, num_points=64)(random_outputs(aux=0), random_targets((1, 1)), [1, 2, 3])


def test_seeded_points_add_no_host_round_trip() -> None:
    """Creating and seeding the per-image generators is host-side: still the one copy of the
    costs."""
    outputs, targets = leaves(random_outputs(aux=9)), random_targets((3, 0))
    criterion = SetCriterion(6, num_points=64)
    with HostSyncCounter() as syncs:
        criterion(outputs, targets, [5, 6])["loss"].backward()
    assert kinds(syncs) == [("d2h", "cpu")], syncs.events
