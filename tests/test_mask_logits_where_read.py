"""Training makes each prediction set's mask logits only where they are read (at the matcher's
points, for the matched queries, at the attention masks' sizes): the same numbers as sampling or
resizing the full logits, which stays callable as `pred_masks` (the reference here)."""

import pytest
import torch
import torch.nn.functional as F

from m2f_lightning.losses import SetCriterion
from m2f_lightning.losses.point_sampling import (
    mask_logits_at_points,
    point_sample,
    selected_mask_logits,
)
from m2f_lightning.modeling.transformer_decoder import attention_mask
from tests.helpers import tiny_model


def factors(batch=2, queries=7, channels=16, h=12, w=20, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(batch, queries, 4, generator=g),
        "mask_embed": torch.randn(batch, queries, channels, generator=g),
        "mask_features": torch.randn(batch, channels, h, w, generator=g),
    }


def full(prediction: dict[str, torch.Tensor]) -> torch.Tensor:
    """Today's full [B, Q, h, w] logits, the reference every other form is checked against."""
    return torch.einsum("bqc,bchw->bqhw", prediction["mask_embed"], prediction["mask_features"])


@pytest.mark.parametrize("num_points", [50, 240, 1000])  # features sampled / full logits
def test_logits_at_points_are_the_sampled_full_logits(num_points: int) -> None:
    prediction = factors()
    coords = torch.rand(2, num_points, 2, generator=torch.Generator().manual_seed(1))
    got = mask_logits_at_points(prediction, coords)
    torch.testing.assert_close(got, point_sample(full(prediction), coords), rtol=1e-5, atol=1e-5)


def test_selected_logits_are_the_rows_of_the_full_logits() -> None:
    queries = [torch.tensor([4, 0, 6]), torch.tensor([], dtype=torch.int64), torch.tensor([2])]
    prediction = factors(batch=3)
    got = selected_mask_logits(prediction, queries)
    want = full(prediction)[torch.tensor([0, 0, 0, 2]), torch.tensor([4, 0, 6, 2])]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and the reference form (full logits given) picks the same rows
    reference = {**prediction, "pred_masks": full(prediction)}
    assert torch.equal(selected_mask_logits(reference, queries), want)


@pytest.mark.parametrize("size", [(3, 5), (6, 10), (12, 20), (5, 7)])
def test_attention_mask_is_the_resized_full_logits_below_one_half(size) -> None:
    """The official mask: full logits resized (bilinear, align_corners=False), sigmoid < 0.5.
    Resizing the features first changes only float rounding, so the boolean can differ only
    where the reference logit is within rounding of 0 (sigmoid's 0.5): such pixels are counted
    as ties, every other pixel must agree."""
    prediction = factors(channels=64, seed=2)
    logits = F.interpolate(full(prediction), size=size, mode="bilinear", align_corners=False)
    want = logits.sigmoid().flatten(2) < 0.5
    assert torch.equal(attention_mask(full(prediction), size=size), want)  # the official form
    level = F.interpolate(
        prediction["mask_features"], size=size, mode="bilinear", align_corners=False
    )
    got = attention_mask(prediction["mask_embed"], level)
    assert got.dtype == torch.bool and got.shape == want.shape
    ties = logits.flatten(2).abs() <= 1e-5 * (1 + logits.abs().max())
    assert torch.equal(got[~ties], want[~ties])
    assert ties.float().mean() < 0.01 and 0.2 < want.float().mean() < 0.8  # not vacuous


def seeded_rand(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda *size, device=None: torch.rand(*size, generator=g).to(device)


def task_targets(task: str, height: int, width: int) -> list[dict[str, torch.Tensor]]:
    """Targets shaped as each task's target builder makes them: semantic one mask per class
    covering the image, instance separate things on background, panoptic both; the second
    image of the batch has no segment."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    stuff = [yy < height // 3, (yy >= height // 3) & (xx < width // 2)]
    stuff.append(~(stuff[0] | stuff[1]))
    things = [
        (yy - cy).square() + (xx - cx).square() < r * r
        for cy, cx, r in ((20, 30, 9), (45, 70, 12), (10, 80, 6))
    ]
    if task == "semantic":
        masks, labels = stuff, [0, 1, 2]
    elif task == "instance":
        masks, labels = things, [3, 4, 3]
    else:
        masks, labels = stuff + things, [0, 1, 2, 3, 4, 3]
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, height, width)}
    first = {"labels": torch.tensor(labels), "masks": torch.stack(masks)}
    return [first, {**empty, "masks": empty["masks"].bool()}]


@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
@pytest.mark.parametrize("num_points", [100, 500])  # < and > the 16 x 24 mask-feature pixels
@pytest.mark.parametrize("importance", [0.0, 0.75])
def test_training_step_gives_the_same_matches_losses_and_gradients(
    task, num_points, importance
) -> None:
    """The loss's points: uniform (importance 0.0, the same points on both paths: equal within
    rounding, 1e-5), or the official 3x-oversampled most-uncertain ones (0.75): a point whose
    uncertainty ties another's within rounding may be picked on one path and not on the other
    (the logits differ by a few ulps: another order of summation; it shows with one thread), so
    there the losses agree to 1e-3 and the gradients are compared only with uniform points."""
    tol = 1e-5 if importance == 0.0 else 1e-3
    torch.manual_seed(0)
    model = tiny_model(num_classes=5).train()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 255
    targets = task_targets(task, 64, 96)
    runs = {}
    for full_masks in (True, False):  # True: today's path (full logits, sampled / indexed)
        criterion = SetCriterion(5, num_points=num_points, importance_sample_ratio=importance)
        criterion.rand = criterion.matcher.rand = seeded_rand(4)
        model.zero_grad()
        outputs = model(images, full_masks=full_masks)
        assert ("pred_masks" in outputs) == full_masks
        assert all(("pred_masks" in a) == full_masks for a in outputs["aux_outputs"])
        sets = [outputs, *outputs["aux_outputs"]]
        criterion.matcher.rand = seeded_rand(5)
        matches = [criterion.matcher(s, targets) for s in sets]
        criterion.rand = criterion.matcher.rand = seeded_rand(4)
        losses = criterion(outputs, targets)
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs[full_masks] = matches, losses, grads
    (ref_matches, ref_losses, ref_grads), (matches, losses, grads) = runs[True], runs[False]
    for ref_set, got_set in zip(ref_matches, matches, strict=True):
        for (ref_src, ref_tgt), (src, tgt) in zip(ref_set, got_set, strict=True):
            assert torch.equal(ref_src, src) and torch.equal(ref_tgt, tgt)
    assert losses.keys() == ref_losses.keys() and len(losses) == 3 * 4 + 1
    for name, value in ref_losses.items():
        torch.testing.assert_close(losses[name], value, rtol=tol, atol=tol / 10, msg=name)
    assert grads.keys() == ref_grads.keys()
    assert len(grads) > 0.9 * sum(1 for _ in model.parameters())
    if importance:
        return
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item()
        torch.testing.assert_close(grads[name], ref, rtol=tol, atol=tol * scale, msg=name)


def test_bf16_autocast_step_gives_the_losses_of_the_full_logits() -> None:
    """Under autocast the mask features are fp32 where the embeddings are bf16: the criterion,
    outside autocast, must make the logits in the dtype the decoder's product had."""
    model = tiny_model(num_classes=5).train()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    targets = [
        {"labels": torch.tensor([1, 3]), "masks": task_targets("instance", 64, 64)[0]["masks"][:2]}
    ]
    losses = []
    for full_masks in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(images, full_masks=full_masks)
        criterion = SetCriterion(5, num_points=50)
        criterion.rand = criterion.matcher.rand = seeded_rand(6)
        losses.append(criterion(outputs, targets)["loss"])
    assert torch.isfinite(losses[1])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-2, atol=1e-2)


def test_inference_makes_the_output_sets_mask_logits_only() -> None:
    """`Mask2Former.infer` (what evaluate, predict, the Segmenter and export run) makes the full
    mask logits of the output set only, and they are today's full path's within rounding."""
    torch.manual_seed(0)
    model = tiny_model(num_classes=5).eval()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        every = model(images)
        last = model.infer(images)
    assert all("pred_masks" in a for a in every["aux_outputs"])
    assert not any("pred_masks" in a for a in last["aux_outputs"])
    assert len(last["aux_outputs"]) == len(every["aux_outputs"])
    assert last["pred_masks"].shape == every["pred_masks"].shape == (2, 8, 16, 24)
    torch.testing.assert_close(last["pred_masks"], every["pred_masks"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last["pred_logits"], every["pred_logits"], rtol=1e-4, atol=1e-4)
    for aux_last, aux_every in zip(last["aux_outputs"], every["aux_outputs"], strict=True):
        torch.testing.assert_close(aux_last["pred_logits"], aux_every["pred_logits"])
    with pytest.raises(ValueError, match="full_masks must be True, False or 'last'"):
        model(images, full_masks="first")


def test_every_inference_path_runs_infer(monkeypatch) -> None:
    """build_runtime's eager callable and the Lightning module's predict_batch run
    `Mask2Former.infer` (the output set's masks only), not the every-set forward."""
    from m2f_lightning.lightning_module import Mask2FormerModule
    from m2f_lightning.predictor.runtimes import build_runtime
    from m2f_lightning.types import Batch

    model = tiny_model(num_classes=5).eval()
    seen = []
    decoder_forward = model.transformer_decoder.forward

    def spy(features, mask_features, full_masks=True):
        seen.append(full_masks)
        return decoder_forward(features, mask_features, full_masks)

    monkeypatch.setattr(model.transformer_decoder, "forward", spy)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        outputs = build_runtime(model, "eager")(images)
        assert "pred_masks" in outputs and seen == ["last"]
        module = Mask2FormerModule(
            model, task="panoptic", class_names=list("abcde"), thing_ids=[2, 3, 4], stuff_ids=[0, 1]
        )
        module.predict_batch(Batch(images, [(64, 64)], [(64, 64)], ["a.png"], [1]))
    assert seen == ["last", "last"]
