"""Training precision: `auto` is the paper's mixed precision where the hardware has it.

The official configs train with AMP (fp16 with loss scaling). `auto` picks bf16 autocast on GPUs
that support it (same speed, no loss scaling, fp32's range), fp16 autocast with a GradScaler on
older GPUs, and fp32 on CPU. The deformable attention (the whole pixel decoder), the matcher and
the losses disable autocast and run in fp32 whatever is chosen here.
"""

from collections.abc import Mapping
from typing import Any

VALID = ("auto", "32", "32-true", "16-mixed", "bf16-mixed", "64", "64-true")


def resolve_precision(value: Any, cuda_available: bool, bf16_supported: bool) -> str:
    """Lightning's `precision` for a config value; only `auto` depends on the hardware."""
    value = "32" if value is None else str(value)
    if value not in VALID:
        raise ValueError(f"precision must be one of {', '.join(VALID)}; got {value}")
    if value != "auto":
        return value
    if not cuda_available:
        return "32"
    return "bf16-mixed" if bf16_supported else "16-mixed"


def trainer_precision(trainer_kwargs: Mapping[str, Any]) -> str:
    """`resolve_precision` for the keyword arguments of a `lightning.Trainer`: CUDA counts only
    when the trainer may use it (accelerator gpu/cuda/auto)."""
    import torch

    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    # native bf16 only (Ampere and newer): emulated bf16 on older GPUs is slower than fp16
    bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    return resolve_precision(trainer_kwargs.get("precision", "32"), cuda, bf16)
