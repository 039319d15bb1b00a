"""Backbones: any timm model as a res2..res5 feature pyramid (NCHW, strides 4..32).

Swin models get the two things the paper's Swin has and timm's lacks: padding of every stage to
the window size *before* the cyclic shift (so any input size works and matches the original and
the Hugging Face port), and a LayerNorm on each output.
"""

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn

from .backbone_weights import load_backbone_weights, resolve_weights_argument

FEATURE_NAMES = ("res2", "res3", "res4", "res5")

ALIASES = {
    "r50": "resnet50",
    "r101": "resnet101",
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window12_384",
    "swin_l": "swin_large_patch4_window12_384",
}


def resolve_backbone_name(name: str) -> str:
    """Map our short aliases (r50, swin_t, ...) to timm model names; other names pass through."""
    return ALIASES.get(name, name)


def _swin_attn_pad_then_shift(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Window attention of a timm SwinTransformerBlock with the original order of operations:
    pad to a multiple of the window, then shift, with the shift mask built on the padded size."""
    batch, height, width, channels = x.shape
    win_h, win_w = self.window_size
    pad_h = (win_h - height % win_h) % win_h
    pad_w = (win_w - width % win_w) % win_w
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = x.shape[1], x.shape[2]
    shift = tuple(self.shift_size)
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        attn_mask = self.get_attn_mask(x)
    else:
        attn_mask = None
    windows = window_partition(x, self.window_size).view(-1, win_h * win_w, channels)
    windows = self.attn(windows, mask=attn_mask)
    x = window_reverse(
        windows.view(-1, win_h, win_w, channels), self.window_size, padded_h, padded_w
    )
    if any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


class PadThenShiftSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the original padding order (a class, so models stay picklable)."""

    _attn = _swin_attn_pad_then_shift


class TimmBackbone(nn.Module):
    """A timm model as a 4-level feature pyramid `{"res2": ..., "res5": ...}`.

    Args:
        name: timm model name or alias (r50, r101, swin_t, swin_s, swin_b, swin_l).
        weights: None (random init), a timm tag such as `resnet50.tv_in1k` (downloaded once
            through the Hugging Face hub, then cached) or a local file: timm/torchvision state
            dict (.pth, .safetensors), detectron2 `R-50.pkl`, Microsoft Swin `.pth`. Loaded
            strictly (see `backbone_weights`); the Swin output norms start fresh.
        pretrained: deprecated spelling: True is the paper's tag for `name`, a string a file.
        frozen_bn: replace BatchNorm by FrozenBatchNorm2d (the paper's ResNet setting);
            default True for models with BatchNorm.
        out_norm: a LayerNorm on each output (the paper's Swin setting); default True for Swin.
        **timm_kwargs: forwarded to `timm.create_model` (embed_dim, depths, drop_path_rate, ...).
    """

    def __init__(
        self,
        name: str = "resnet50",
        weights: str | Path | None = None,
        pretrained: bool | str | Path | None = None,
        frozen_bn: bool | None = None,
        out_norm: bool | None = None,
        **timm_kwargs: object,
    ) -> None:
        super().__init__()
        self.name = resolve_backbone_name(name)
        self.is_swin = self.name.startswith("swin")
        kwargs: dict[str, object] = dict(timm_kwargs)
        if self.is_swin:
            kwargs.setdefault("strict_img_size", False)
            kwargs.setdefault("always_partition", True)
            kwargs.setdefault("drop_path_rate", 0.3)
        weights = resolve_weights_argument(self.name, weights, pretrained)
        try:
            body = timm.create_model(self.name, pretrained=False, features_only=True, **kwargs)
        except RuntimeError as err:
            raise RuntimeError(f"could not build timm backbone '{self.name}': {err}") from err
        except TypeError as err:  # an argument the timm model does not take: backbone.kwargs
            raise ValueError(
                f"backbone '{self.name}' does not take the arguments {kwargs} "
                f"(backbone.kwargs): {err}"
            ) from None
        reductions = body.feature_info.reduction()
        wanted = [reductions.index(s) for s in (4, 8, 16, 32) if s in reductions]
        if len(wanted) != 4:
            raise ValueError(
                f"backbone '{self.name}' must give features at strides 4, 8, 16, 32; it gives {reductions}"
            )
        if len(reductions) != 4:
            out_indices = [body.feature_info.out_indices[i] for i in wanted]
            body = timm.create_model(
                self.name,
                pretrained=False,
                features_only=True,
                out_indices=out_indices,
                **kwargs,
            )
        self.channels: list[int] = list(body.feature_info.channels())
        self.strides: list[int] = [4, 8, 16, 32]
        self.channels_last = getattr(body, "output_fmt", "NCHW") == "NHWC" or self.is_swin

        self.weights = weights
        if weights is not None:
            load_backbone_weights(body, self.name, kwargs, weights)

        if frozen_bn is None:
            frozen_bn = any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
        if frozen_bn:
            body = freeze_batch_norm_2d(body)
        if self.is_swin:
            for module in body.modules():
                if type(module) is SwinTransformerBlock:
                    module.__class__ = PadThenShiftSwinBlock
        self.body = body
        if out_norm is None:
            out_norm = self.is_swin
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels) if out_norm else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        outputs = {}
        for i, (name, feature) in enumerate(zip(FEATURE_NAMES, features, strict=True)):
            if self.channels_last:
                if self.out_norms is not None:
                    feature = self.out_norms[i](feature)
                feature = feature.permute(0, 3, 1, 2)
            elif self.out_norms is not None:
                feature = self.out_norms[i](feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            outputs[name] = feature.contiguous()
        return outputs
