"""Edges of the set criterion that the parity tests do not reach (found by mutation testing,
docs/testing.md): one target mask, no target at all, no auxiliary outputs, the injected point
generator, the paper's defaults, and the cost helpers against their formulas."""

import torch
import torch.nn.functional as F

from m2f_lightning.losses import HungarianMatcher, SetCriterion
from m2f_lightning.losses.matcher import NONFINITE_COST, pairwise_dice, sanitize_cost
from m2f_lightning.losses.point_sampling import uncertain_point_coords_with_randomness


def one_query_outputs(h: int = 8, w: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(1, 1, 4, generator=g),
        "pred_masks": 3 * torch.randn(1, 1, h, w, generator=g),
    }


def test_a_single_target_mask_is_divided_by_one_and_scored() -> None:
    """One query, one target: the pair is matched and its mask losses are the full-mask BCE and
    dice of that pair, divided by one mask."""
    outputs = one_query_outputs()
    mask = torch.zeros(16, 24, dtype=torch.bool)
    mask[4:12, 6:20] = True
    targets = [{"labels": torch.tensor([2]), "masks": mask[None]}]
    criterion = SetCriterion(3, point_sampled=False, deep_supervision=False)
    losses = criterion(outputs, targets)
    logits = F.interpolate(
        outputs["pred_masks"][0][:, None], size=(16, 24), mode="bilinear", align_corners=False
    ).flatten(1)
    labels = mask[None].flatten(1).float()
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    p = logits.sigmoid()
    dice = 1 - (2 * (p * labels).sum() + 1) / (p.sum() + labels.sum() + 1)
    assert torch.allclose(losses["loss_mask"], 5.0 * bce, rtol=1e-5)
    assert torch.allclose(losses["loss_dice"], 5.0 * dice, rtol=1e-5)
    ce = F.cross_entropy(outputs["pred_logits"][0], torch.tensor([2]))
    assert torch.allclose(losses["loss_ce"], 2.0 * ce, rtol=1e-5)


def test_no_target_gives_zero_mask_losses() -> None:
    outputs = one_query_outputs()
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 24)}]
    losses = SetCriterion(3, deep_supervision=False)(outputs, targets)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0


def test_outputs_without_auxiliary_predictions_give_the_three_terms() -> None:
    outputs = one_query_outputs()
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 16, 24, dtype=torch.bool)}]
    losses = SetCriterion(3, num_points=16)(outputs, targets)  # deep supervision on
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss"}


def test_the_criterion_keeps_no_state_in_checkpoints_and_passes_its_mode_to_the_matcher() -> None:
    assert SetCriterion(3).state_dict() == {}  # empty_weight is rebuilt, not saved
    assert SetCriterion(3, point_sampled=False).matcher.point_sampled is False
    assert SetCriterion(3).matcher.point_sampled is True


def test_defaults_are_the_papers() -> None:
    criterion = SetCriterion(3)
    assert criterion.num_points == 12544 and criterion.matcher.num_points == 12544
    assert HungarianMatcher().num_points == 12544
    assert (criterion.oversample_ratio, criterion.importance_sample_ratio) == (3.0, 0.75)


def test_mask_losses_draw_their_points_from_the_injected_generator() -> None:
    """With `rand` set (as the HF-parity test and reproducible runs do), the losses do not
    depend on torch's global random state."""
    outputs = one_query_outputs(16, 16)
    targets = [{"labels": torch.tensor([1]), "masks": torch.rand(1, 32, 32) > 0.5}]
    criterion = SetCriterion(3, num_points=32, deep_supervision=False)
    g = torch.Generator()

    def rand(*size, device=None):
        return torch.rand(*size, generator=g, device=device)

    criterion.rand = criterion.matcher.rand = rand
    results = []
    for global_seed in (0, 1):
        g.manual_seed(7)
        torch.manual_seed(global_seed)
        results.append(criterion(outputs, targets))
    for name in ("loss_mask", "loss_dice"):
        assert torch.equal(results[0][name], results[1][name]), name


def test_importance_sampling_fills_the_random_share_even_when_it_is_one_point() -> None:
    logits = torch.randn(2, 1, 8, 8)
    calls = []

    def rand(*size, device=None):
        calls.append(size)
        return torch.full(size, 0.5) if len(calls) > 1 else torch.rand(*size)

    coords = uncertain_point_coords_with_randomness(logits, 4, 3.0, 0.75, rand=rand)
    assert coords.shape == (2, 4, 2)  # 3 uncertain + 1 random
    assert calls == [(2, 12, 2), (2, 1, 2)]
    assert torch.equal(coords[:, 3], torch.full((2, 2), 0.5))


def test_sanitize_cost_clamps_finite_costs_on_both_sides() -> None:
    cost = torch.tensor([-1e30, 1e30, float("nan"), float("-inf"), float("inf"), -3.5])
    expected = [-NONFINITE_COST, NONFINITE_COST, *[NONFINITE_COST] * 3, -3.5]
    assert sanitize_cost(cost).tolist() == expected


def test_pairwise_dice_is_the_smoothed_dice_of_every_pair() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 10, generator=g, dtype=torch.float64)
    targets = (torch.rand(2, 4, 10, generator=g) > 0.5).double()
    got = pairwise_dice(logits, targets)
    for b in range(2):
        for q in range(3):
            for n in range(4):
                p, t = logits[b, q].sigmoid(), targets[b, n]
                want = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
                assert torch.allclose(got[b, q, n], want)


def test_full_mask_matching_resizes_predictions_as_the_loss_does() -> None:
    """Without point sampling the matcher scores bilinear (align_corners=False) upsampled
    predictions against the full target masks, as `loss_masks` does."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(1, 2, 5, 7, generator=g)
    masks = torch.rand(1, 10, 14, generator=g) > 0.5
    got, target = HungarianMatcher(point_sampled=False)._sample(
        {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": pred}, [{"masks": masks}], 1
    )
    want = F.interpolate(pred, size=(10, 14), mode="bilinear", align_corners=False).flatten(2)
    assert torch.allclose(got, want)
    assert torch.equal(target[0, 0], masks[0].flatten().float())
