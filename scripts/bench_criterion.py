"""Criterion time for one batch of 2 images with 10 prediction sets (100 queries, 133 classes,
~15 targets per image, 512x512 input → 128x128 mask logits) vs the HF port's loss, and the
peak memory of point-sampled vs full-mask losses (the paper's 3x claim), on CPU.

    python scripts/bench_criterion.py [--threads 2]
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import load_note, paired_medians  # noqa: E402

from m2f_lightning.losses import SetCriterion  # noqa: E402


def make_batch(size: int, queries: int = 100, classes: int = 133, targets: int = 15):
    g = torch.Generator().manual_seed(0)

    def one():
        return {
            "pred_logits": torch.randn(2, queries, classes + 1, generator=g, requires_grad=True),
            "pred_masks": torch.randn(
                2, queries, size // 4, size // 4, generator=g, requires_grad=True
            ),
        }

    outputs = one()
    outputs["aux_outputs"] = [one() for _ in range(9)]
    tgts = [
        {
            "labels": torch.randint(0, classes, (targets,), generator=g),
            "masks": torch.rand(targets, size, size, generator=g) > 0.7,
        }
        for _ in range(2)
    ]
    return outputs, tgts


def saved_for_backward_mb(fn) -> float:
    """MB of distinct tensors autograd saves for the backward pass while `fn` runs."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(seen.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    outputs, targets = make_batch(args.size)
    ours = SetCriterion(133)
    hf = Mask2FormerLoss(
        Mask2FormerConfig(num_labels=133),
        {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
    )
    aux = [
        {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
        for a in outputs["aux_outputs"]
    ]
    masks = [t["masks"].float() for t in targets]
    labels = [t["labels"] for t in targets]
    t_ours, t_hf = paired_medians(
        lambda: ours(outputs, targets)["loss"].backward(),
        lambda: sum(
            hf(outputs["pred_masks"], outputs["pred_logits"], masks, labels, aux).values()
        ).backward(),
        args.repeats,
    )
    print(
        f"criterion, batch 2 x 10 prediction sets, 100 queries, 15 targets, {args.size}^2 ({load_note()}):"
    )
    print(
        f"  forward+backward: ours {t_ours:.3f} s | HF transformers {t_hf:.3f} s | speed-up x{t_hf / t_ours:.2f}"
    )
    # Training memory of the loss = what autograd keeps for the backward pass (CPU has no
    # allocator peak counter; on CUDA torch.cuda.max_memory_allocated tells the same story).
    kept = {}
    for mode, criterion in (
        ("point-sampled", ours),
        ("full-mask", SetCriterion(133, point_sampled=False)),
    ):
        kept[mode] = saved_for_backward_mb(lambda c=criterion: c(outputs, targets)["loss"])
    print(
        f"  memory kept for backward by the loss: point-sampled {kept['point-sampled']:.0f} MB | "
        f"full masks {kept['full-mask']:.0f} MB | x{kept['full-mask'] / kept['point-sampled']:.1f}"
    )


if __name__ == "__main__":
    main()
