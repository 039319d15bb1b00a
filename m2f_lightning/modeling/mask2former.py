"""Mask2Former: backbone → pixel decoder → masked-attention decoder, with normalisation and
padding done inside the model so callers feed plain 0..255 RGB images of any size."""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..types import ModelOutput
from .backbone import TimmBackbone
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedAttentionDecoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Mask2Former(nn.Module):
    """The universal segmentation model of Cheng et al. (CVPR 2022).

    Every size is a keyword argument; `model.config` is the dict that rebuilds the model through
    `Mask2Former.from_config`. The defaults are the paper's (R50, 100 queries, 9 decoder layers).
    `backbone_weights` is a timm tag (`resnet50.tv_in1k`), a local weights file or None (random
    init); `backbone_pretrained` is its deprecated spelling (True: the paper's tag).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        num_queries: int = 100,
        hidden_dim: int = 256,
        mask_dim: int = 256,
        pixel_decoder_dim: int = 256,
        encoder_layers: int = 6,
        encoder_ffn_dim: int = 1024,
        encoder_heads: int = 8,
        encoder_points: int = 4,
        decoder_layers: int = 9,
        decoder_heads: int = 8,
        decoder_ffn_dim: int = 2048,
        norm_groups: int = 32,
        size_divisibility: int = 32,
        backbone_pretrained: bool | str | None = None,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        backbone_kwargs = dict(backbone_kwargs or {})
        self.config: dict[str, Any] = {
            "num_classes": num_classes,
            "backbone": backbone,
            "backbone_weights": None,  # weights live in the state dict once built
            "backbone_kwargs": backbone_kwargs,
            "num_queries": num_queries,
            "hidden_dim": hidden_dim,
            "mask_dim": mask_dim,
            "pixel_decoder_dim": pixel_decoder_dim,
            "encoder_layers": encoder_layers,
            "encoder_ffn_dim": encoder_ffn_dim,
            "encoder_heads": encoder_heads,
            "encoder_points": encoder_points,
            "decoder_layers": decoder_layers,
            "decoder_heads": decoder_heads,
            "decoder_ffn_dim": decoder_ffn_dim,
            "norm_groups": norm_groups,
            "size_divisibility": size_divisibility,
        }
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility
        self.backbone = TimmBackbone(
            backbone, weights=backbone_weights, pretrained=backbone_pretrained, **backbone_kwargs
        )
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            self.backbone.channels,
            conv_dim=pixel_decoder_dim,
            mask_dim=mask_dim,
            encoder_layers=encoder_layers,
            encoder_ffn_dim=encoder_ffn_dim,
            encoder_heads=encoder_heads,
            encoder_points=encoder_points,
            norm_groups=norm_groups,
        )
        self.transformer_decoder = MaskedAttentionDecoder(
            in_channels=pixel_decoder_dim,
            num_classes=num_classes,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            nheads=decoder_heads,
            dim_feedforward=decoder_ffn_dim,
            num_layers=decoder_layers,
            mask_dim=mask_dim,
        )
        self.set_checkpointing(checkpointing)
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False
        )

    def set_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing on (or off) for the backbone stages (timm's), the
        pixel-decoder encoder layers and the transformer decoder layers."""
        self.checkpointing = bool(enabled)
        if hasattr(self.backbone.body, "set_grad_checkpointing"):
            self.backbone.body.set_grad_checkpointing(self.checkpointing)
        self.pixel_decoder.encoder.checkpointing = self.checkpointing
        self.transformer_decoder.checkpointing = self.checkpointing

    def compile_network(self, cache_dir: str | None = None, **compile_kwargs: Any) -> None:
        """Opt-in `torch.compile` of the backbone, pixel decoder and transformer decoder (for
        training or inference; post-processing stays eager), in place (`nn.Module.compile`: the
        state dict keys stay the same). Each new input shape compiles again until Dynamo marks
        sizes dynamic (from the second shape on). `cache_dir`: where Inductor
        keeps its compiled graphs (TORCHINDUCTOR_CACHE_DIR, FX graph cache on), so that a second
        run with the same shapes loads them instead of compiling again."""
        if cache_dir is not None:
            import os

            import torch._inductor.config as inductor_config

            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
            inductor_config.fx_graph_cache = True
        for part in (self.backbone, self.pixel_decoder, self.transformer_decoder):
            part.compile(**compile_kwargs)

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> "Mask2Former":
        """Rebuild a model from `model.config` (optionally overriding entries)."""
        return cls(**{**config, **overrides})

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got {images.shape[1]}")
        if not (images.is_floating_point() or images.dtype == torch.uint8):
            raise ValueError(f"images must be RGB in 0..255 (float or uint8), got {images.dtype}")

    def preprocess(
        self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Normalise with the ImageNet mean/std, zero what lies outside each image's
        `image_sizes` (a batch padded by the caller with any value), then zero-pad bottom/right
        to the size divisibility: zero after normalisation, as detectron2 pads."""
        self._check_images(images)
        x = (images.float() - self.pixel_mean) / self.pixel_std
        if image_sizes is not None:
            if len(image_sizes) != x.shape[0]:
                raise ValueError(f"{len(image_sizes)} image sizes for a batch of {x.shape[0]}")
            for i, (h, w) in enumerate(image_sizes):
                x[i, :, h:, :] = 0
                x[i, :, :, w:] = 0
        div = self.size_divisibility
        pad_h = (div - x.shape[2] % div) % div
        pad_w = (div - x.shape[3] % div) % div
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: Sequence[Sequence[int]] | None = None,
        full_masks: bool | str = True,
    ) -> ModelOutput:
        """images: [B, 3, H, W] RGB in 0..255; `image_sizes`: the (h, w) of each image when the
        batch was padded by the caller. Returns the `ModelOutput` of the contract, with the mask
        logits `pred_masks` of every prediction set (`full_masks=True`), of the output set only
        (`"last"`: inference, what post-processing reads) or of none (`False`: training, the
        criterion makes them from `mask_embed` and `mask_features` where it reads them)."""
        x = self.preprocess(images, image_sizes)
        features = self.backbone(x)
        mask_features, multi_scale = self.pixel_decoder(features)
        outputs = self.transformer_decoder(multi_scale, mask_features, full_masks)
        outputs["image_size"] = (int(images.shape[2]), int(images.shape[3]))
        outputs["padded_size"] = (int(x.shape[2]), int(x.shape[3]))
        return outputs

    def infer(
        self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]] | None = None
    ) -> ModelOutput:
        """What inference runs (evaluate, predict, `Segmenter`, export): `forward` with the mask
        logits of the output set only, the only ones post-processing reads. The earlier sets'
        attention masks then come from the mask features resized to each level, which equals
        resizing their full logits up to float rounding; that skips 9 of the 10 full-resolution
        mask products (docs/performance.md)."""
        return self(images, image_sizes, full_masks="last")
