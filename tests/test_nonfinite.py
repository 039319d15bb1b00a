"""NaN never crashes training: the matcher replaces non-finite costs before SciPy sees them, a
step with a non-finite loss is skipped (no optimiser update, `train/skipped_steps`), and
`max_nonfinite_steps` consecutive skips stop the run with the step and the last finite loss."""

import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from scipy.optimize import linear_sum_assignment

from m2f_lightning.lightning_module import Mask2FormerModule, NonFiniteGuard, NonFiniteLossError
from m2f_lightning.losses import HungarianMatcher
from m2f_lightning.losses.matcher import NONFINITE_COST, sanitize_cost
from tests.test_lightning_module import loader, make_module
from tests.test_losses import random_outputs, random_targets


def full_mask_matcher() -> HungarianMatcher:
    return HungarianMatcher(point_sampled=False)  # no random points: two calls see the same costs


def test_sanitize_cost_replaces_nan_and_inf_by_one_large_finite_value() -> None:
    cost = torch.tensor([1.5, float("nan"), float("inf"), float("-inf"), 1e30, -1e30])
    out = sanitize_cost(cost)
    assert torch.isfinite(out).all()
    assert out.tolist() == [1.5, NONFINITE_COST, NONFINITE_COST, NONFINITE_COST] + [
        NONFINITE_COST,
        -NONFINITE_COST,
    ]


def test_scipy_itself_rejects_nan_costs() -> None:
    """What the sanitising protects against (the crash of the official repo and the HF port)."""
    with pytest.raises(ValueError, match="invalid numeric entries"):
        linear_sum_assignment([[float("nan"), 1.0], [1.0, 2.0]])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_match_like_the_finite_queries_alone(bad: float) -> None:
    outputs = random_outputs(aux=0, queries=10)
    targets = random_targets((3, 4))
    broken = [0, 2, 5, 7]  # queries of image 0 with broken class and mask logits
    outputs["pred_logits"][0, broken] = bad
    outputs["pred_masks"][0, broken] = bad
    matches = full_mask_matcher()(outputs, targets)
    assert [len(r) for r, _ in matches] == [3, 4]
    rows, cols = matches[0]
    assert not set(rows.tolist()) & set(broken)  # finite queries are always preferred
    # and among the finite ones the matching is the optimal one
    keep = [q for q in range(10) if q not in broken]
    reduced = {k: v[:, keep] for k, v in outputs.items() if k != "aux_outputs"}
    ref_rows, ref_cols = full_mask_matcher()(reduced, targets)[0]
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == sorted(
        zip([keep[r] for r in ref_rows.tolist()], ref_cols.tolist(), strict=True)
    )


def test_all_nan_outputs_still_give_a_full_matching() -> None:
    outputs = random_outputs(aux=0)
    outputs["pred_logits"][:] = float("nan")
    outputs["pred_masks"][:] = float("nan")
    matches = HungarianMatcher(num_points=64)(outputs, random_targets((3, 5)))
    assert [len(r) for r, _ in matches] == [3, 5]
    assert [sorted(c.tolist()) for _, c in matches] == [[0, 1, 2], [0, 1, 2, 3, 4]]


def test_guard_counts_consecutive_skips_and_stops_with_step_and_last_loss() -> None:
    guard = NonFiniteGuard(limit=3)
    guard.record(True, torch.tensor(2.5))
    assert guard.end_step(0) is False
    guard.record(False, torch.tensor(float("nan")))
    assert guard.end_step(1) is True
    guard.record(True, torch.tensor(2.0))
    assert guard.end_step(2) is False  # a finite step resets the count
    # an accumulated step with one bad micro-batch is skipped whole
    guard.record(True, torch.tensor(1.0))
    guard.record(False, torch.tensor(float("inf")))
    assert guard.end_step(3) is True
    guard.record(False, torch.tensor(float("nan")))
    assert guard.end_step(4) is True
    guard.record(False, torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"step 5.*last finite loss was 2.0000 at step 2"):
        guard.end_step(5)
    assert guard.skipped == 4


class NaNAt:
    """Wraps a model's forward: the outputs of the calls in `bad_calls` become NaN."""

    def __init__(self, model: torch.nn.Module, bad_calls: set[int]) -> None:
        self.forward, self.bad_calls, self.calls = model.forward, bad_calls, 0

    def __call__(self, *args, **kwargs):
        outputs = self.forward(*args, **kwargs)
        self.calls += 1
        if self.calls - 1 in self.bad_calls:
            nan = float("nan")
            outputs["pred_logits"] = outputs["pred_logits"] * nan
            for key in ("pred_masks", "mask_embed"):  # training outputs: no full mask logits
                if key in outputs:
                    outputs[key] = outputs[key] * nan
            for aux in outputs["aux_outputs"]:
                aux["pred_logits"] = aux["pred_logits"] * nan
        return outputs


def trainer(tmp_path: Path, steps: int, log_every: int = 1, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=log_every,
        **kwargs,
    )


def test_a_nan_step_is_skipped_and_training_goes_on(tmp_path: Path) -> None:
    module = make_module()
    module.model.forward = NaNAt(module.model, bad_calls={1})
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            snapshots.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})

    fit = trainer(tmp_path, 3)
    fit.callbacks.append(Snapshot())
    fit.fit(module, train_dataloaders=loader(3))
    assert fit.global_step == 3
    assert module.nonfinite.skipped == 1
    assert fit.logged_metrics["train/skipped_steps"] == 1
    changed = [
        any(not torch.equal(a[k], b[k]) for k in a)
        for a, b in zip(snapshots, snapshots[1:], strict=False)
    ]
    assert changed == [False, True]  # step 1 (NaN) left every weight as it was; step 2 trained
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    optimizer = fit.optimizers[0]
    first_moments = [s["exp_avg"] for s in optimizer.state.values()]
    assert all(torch.isfinite(m).all() for m in first_moments)
    # the fused AdamW skipped the step on the device: its step count is that of 2 updates
    assert all(group["fused"] for group in optimizer.param_groups)
    assert {float(s["step"]) for s in optimizer.state.values()} == {2.0}


def test_bf16_mixed_with_clipping_skips_a_nan_step_on_the_device(tmp_path: Path) -> None:
    """Lightning's mixed-precision plugin refuses to clip for a fused optimiser; the module
    clips itself under bf16-mixed, and the NaN step is still skipped whole."""
    module = make_module()
    module.model.forward = NaNAt(module.model, bad_calls={1})
    before = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 1:
                before.update({k: v.clone() for k, v in pl_module.model.state_dict().items()})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 1:
                after = pl_module.model.state_dict()
                assert all(torch.equal(before[k], after[k]) for k in after)

    fit = trainer(tmp_path, 3, precision="bf16-mixed", gradient_clip_val=0.01)
    fit.callbacks.append(Snapshot())
    fit.fit(module, train_dataloaders=loader(3))
    assert fit.global_step == 3 and module.nonfinite.skipped == 1
    assert all(group["fused"] for group in fit.optimizers[0].param_groups)


def test_the_guard_checks_at_the_logging_interval_naming_the_step_the_limit_was_reached(
    tmp_path: Path,
) -> None:
    """Between logging intervals the guard reads nothing; the check at the next interval
    stops the run naming the step where `max_nonfinite_steps` in a row was reached."""
    module = make_module()
    module.nonfinite.limit = 2
    module.model.forward = NaNAt(module.model, bad_calls={1, 2, 3, 4, 5})
    with pytest.raises(
        NonFiniteLossError,
        match=r"stopped at step 2 \(seen at step 4\).*finite loss was \S+ at step 0",
    ):
        trainer(tmp_path, 6, log_every=5).fit(module, train_dataloaders=loader(6))


def test_guard_close_step_reads_nothing_and_check_warns_once_per_interval() -> None:
    guard = NonFiniteGuard(limit=0)  # never stop
    for step, finite in enumerate([True, False, False, True]):
        guard.record(finite, torch.tensor(1.0 if finite else float("nan")))
        assert isinstance(guard.close_step(step), torch.Tensor)
    with pytest.warns(UserWarning, match=r"step 2: .*2 skipped since the last check, 0 in a row"):
        guard.check(3)
    assert guard.skipped == 2


def test_consecutive_nan_steps_stop_the_run_naming_step_and_last_loss(tmp_path: Path) -> None:
    module = make_module()
    module.nonfinite.limit = 2
    module.model.forward = NaNAt(module.model, bad_calls={1, 2, 3})
    with pytest.raises(
        NonFiniteLossError, match=r"stopped at step 2.*last finite loss was \S+ at step 0"
    ):
        trainer(tmp_path, 4).fit(module, train_dataloaders=loader(4))


class NaNImagesOnRank1(Mask2FormerModule):
    """Rank 1's second batch is NaN: only that rank sees a non-finite loss."""

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx == 1:
            batch = dataclasses.replace(batch, images=batch.images * float("nan"))
        return super().training_step(batch, batch_idx)


class SaveWeights(L.Callback):
    """Each rank writes its weights after every step (rank, step) to `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}_step{batch_idx}.pt")


@pytest.mark.slow
def test_a_nan_on_one_ddp_rank_skips_the_step_on_every_rank(tmp_path: Path) -> None:
    """The flag is summed over ranks on the device: both ranks skip step 1 (weights as after
    step 0), train on at step 2, and stay identical and finite."""
    made = make_module()
    module = NaNImagesOnRank1(
        made.model, **{k: v for k, v in made.hparams.items() if k != "model_config"}
    )
    module.criterion = made.criterion
    fit = trainer(tmp_path, 3, strategy="ddp_spawn", devices=2)
    fit.callbacks.append(SaveWeights(tmp_path))
    fit.fit(module, train_dataloaders=loader(6))
    weights = {
        (rank, step): torch.load(tmp_path / f"rank{rank}_step{step}.pt", weights_only=True)
        for rank in (0, 1)
        for step in range(3)
    }

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    for step in range(3):
        assert same(weights[0, step], weights[1, step]), f"ranks differ after step {step}"
        assert all(torch.isfinite(v).all() for v in weights[0, step].values())
    assert same(weights[0, 0], weights[0, 1])  # step 1 skipped on rank 0 too
    assert not same(weights[0, 1], weights[0, 2])  # and step 2 trained
