"""The paper's optimiser recipe: AdamW with a 0.1× backbone learning rate, no weight decay on
normalisation layers and embeddings, and poly or multi-step schedules stepped per iteration."""

from collections.abc import Callable

import torch
from torch import nn

NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
)
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def build_param_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_multiplier: float = 0.1
) -> list[dict]:
    """One group per (lr, weight decay) pair.

    Backbone parameters get `lr × backbone_multiplier`; norm layers, `nn.Embedding`s (query
    features/positions, decoder level embedding) and Swin's relative position tables get no
    weight decay. The pixel decoder's `level_embed` is a plain parameter and keeps its weight
    decay, as in the original.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            group_lr = lr * backbone_multiplier if full_name.startswith("backbone.") else lr
            no_decay = (
                isinstance(module, NORM_TYPES + (nn.Embedding,)) or name in NO_DECAY_PARAM_NAMES
            )
            groups.setdefault((group_lr, 0.0 if no_decay else weight_decay), []).append(param)
    return [
        {"params": params, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), params in groups.items()
    ]


def lr_lambda(
    name: str,
    max_steps: int,
    power: float = 0.9,
    milestones: tuple[float, ...] = (0.889, 0.963),
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup_factor: float = 1.0,
) -> Callable[[int], float]:
    """Multiplier of the base learning rate at a step.

    poly: (1 − step/max_steps)^power (ends at 0); multistep: ×gamma at each milestone (a value
    below 1 is a fraction of max_steps, 1 or more an iteration: the COCO experiments give the
    official 327,778 and 355,092 of 368,750); warm-up: linear from `warmup_factor` over
    `warmup_steps`.
    """
    if name not in ("poly", "multistep", "constant"):
        raise ValueError(f"unknown scheduler '{name}': choose poly, multistep or constant")
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive for a schedule, got {max_steps}")
    steps = [int(m) if m >= 1 else int(round(m * max_steps)) for m in milestones]

    def factor(step: int) -> float:
        if name == "poly":
            value = (1.0 - min(step, max_steps) / max_steps) ** power
        elif name == "multistep":
            value = gamma ** sum(step >= s for s in steps)
        else:
            value = 1.0
        if step < warmup_steps:
            alpha = step / warmup_steps
            value *= warmup_factor * (1 - alpha) + alpha
        return value

    return factor


def build_optimizer(
    model: nn.Module,
    lr: float = 1e-4,
    weight_decay: float = 0.05,
    backbone_multiplier: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over `build_param_groups`. `fused`: torch's fused kernel (CPU and CUDA), which
    also takes a device-side `found_inf` flag to skip a step without a host read."""
    groups = build_param_groups(model, lr, weight_decay, backbone_multiplier)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def build_scheduler(
    optimizer: torch.optim.Optimizer, **kwargs
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(**kwargs))
