"""The precisions a model runs inference in, as `precision=` runs them in evaluate and predict:
the weights stay float32 and the forward runs under autocast (bf16 or fp16 mixed precision; the
deformable attention, the whole pixel decoder, runs in fp32 whatever is chosen). Weights cast to
a half type (`model.half()`) are refused at the forward with an error saying what to use."""

import torch

from ..errors import UserError

# the names a user may give → the autocast dtype (None: fp32, no autocast)
NAMES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "float32": None,
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "16-mixed": torch.float16,
}


class UnsupportedDtypeError(UserError, TypeError):
    """A precision this device, or this model, does not run."""


def autocast_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `dtype` on `device` (None: float32, no autocast): fp32, bf16 and
    fp16 on CUDA; fp32 and bf16 on the CPU."""
    if dtype is None or dtype == torch.float32:
        return None
    if isinstance(dtype, torch.dtype):
        chosen: torch.dtype | None = dtype if dtype in (torch.bfloat16, torch.float16) else None
        known = chosen is not None
    else:
        known = str(dtype).lower() in NAMES
        chosen = NAMES.get(str(dtype).lower())
    if not known:
        raise UnsupportedDtypeError(
            f"dtype={dtype!r} is not a precision m2f-lightning runs: choose fp32, bf16 or fp16 "
            "(fp16 on CUDA only)"
        )
    if chosen == torch.float16 and device.type != "cuda":
        raise UnsupportedDtypeError(
            f"dtype=fp16 does not run on device '{device}' (float16 autocast is for CUDA GPUs): "
            "use dtype=bf16 (mixed precision) or dtype=fp32 on the CPU, or device='cuda'"
        )
    return chosen


def refuse_half_weights(module: torch.nn.Module, args: tuple) -> None:
    """A forward pre-hook: the model's weights must be float32 (mixed precision is autocast's:
    the pixel decoder runs in fp32 by design, and cannot take half weights)."""
    weight = next(module.parameters(), None)
    if weight is not None and weight.dtype != torch.float32:
        raise UnsupportedDtypeError(
            f"the model's weights are {weight.dtype} on {weight.device}: Mask2Former runs with "
            "float32 weights (its pixel decoder runs in fp32 by design), so model.half() or "
            "model.to(torch.bfloat16) cannot run. Keep the weights float32 and run in mixed "
            "precision: Segmenter.from_pretrained(..., dtype='bf16') (or 'fp16' on CUDA), "
            "precision=bf16-mixed in the commands, or torch.autocast(device_type, torch.bfloat16)"
        )
