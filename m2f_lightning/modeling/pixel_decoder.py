"""Mask2Former pixel decoder: a deformable-attention encoder on strides 8/16/32, then one FPN
step to stride 4 that produces the per-pixel mask features."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .ms_deform_attn import MSDeformAttn
from .position_encoding import PositionEmbeddingSine

FEATURE_KEYS = ("res2", "res3", "res4", "res5")


def _c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's xavier fill (kaiming uniform, a=1), as the original FPN convolutions use."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0.0)


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, then a ReLU FFN."""

    def __init__(
        self,
        d_model: int,
        ffn_dim: int,
        n_levels: int,
        n_heads: int,
        n_points: int,
        attn_backend: str = "auto",
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend=attn_backend)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        # in place: no second [S, ffn_dim] tensor (its allocation costs as much as the ReLU)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src), inplace=True)))


class DeformableEncoder(nn.Module):
    """A stack of deformable encoder layers; queries are all pixels of all levels."""

    def __init__(
        self,
        d_model: int,
        ffn_dim: int,
        num_layers: int,
        n_levels: int,
        n_heads: int,
        n_points: int,
        attn_backend: str = "auto",
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, ffn_dim, n_levels, n_heads, n_points, attn_backend)
            for _ in range(num_layers)
        )
        self.checkpointing = False  # recompute each layer in backward instead of storing it

    @staticmethod
    def reference_points(
        spatial_shapes: list[tuple[int, int]], batch: int, device: torch.device
    ) -> torch.Tensor:
        """Pixel centres (x, y) normalised to [0, 1], the same for every level: [B, S, levels, 2]."""
        points = []
        for height, width in spatial_shapes:
            ys, xs = torch.meshgrid(
                (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height,
                (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width,
                indexing="ij",
            )
            points.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        ref = torch.cat(points, 0)
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        ref = self.reference_points(spatial_shapes, src.shape[0], src.device)
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                src = checkpoint(layer, src, pos, ref, spatial_shapes, use_reentrant=False)
            else:
                src = layer(src, pos, ref, spatial_shapes)
        return src


class MSDeformAttnPixelDecoder(nn.Module):
    """res2..res5 backbone features → (mask features at stride 4, [stride 32, 16, 8] maps).

    Runs in fp32 even under autocast (the paper does the same: deformable attention is
    numerically fragile in half precision). `attn_backend` is the deformable attention's
    implementation ("auto", "torch", "gather" or "triton", see `ms_deform_attn_core`).
    """

    def __init__(
        self,
        in_channels: list[int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        encoder_layers: int = 6,
        encoder_ffn_dim: int = 1024,
        encoder_heads: int = 8,
        encoder_points: int = 4,
        norm_groups: int = 32,
        attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must list res2..res5 channels, got {in_channels}")
        self.in_channels = list(in_channels)
        transformer_channels = self.in_channels[1:][::-1]  # res5, res4, res3
        self.num_levels = len(transformer_channels)
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(norm_groups, conv_dim)
            )
            for c in transformer_channels
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, conv_dim))
        self.encoder = DeformableEncoder(
            conv_dim,
            encoder_ffn_dim,
            encoder_layers,
            self.num_levels,
            encoder_heads,
            encoder_points,
            attn_backend,
        )
        for name, param in self.encoder.named_parameters():
            if param.dim() > 1 and "self_attn" not in name:
                nn.init.xavier_uniform_(param)
        for module in self.encoder.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

        self.lateral_convs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(self.in_channels[0], conv_dim, kernel_size=1, bias=False),
                    nn.GroupNorm(norm_groups, conv_dim),
                )
            ]
        )
        self.output_convs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=False),
                    nn.GroupNorm(norm_groups, conv_dim),
                    nn.ReLU(inplace=True),
                )
            ]
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        for conv in (self.lateral_convs[0][0], self.output_convs[0][0], self.mask_features):
            _c2_xavier_fill(conv)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        missing = [k for k in FEATURE_KEYS if k not in features]
        if missing:
            raise KeyError(f"pixel decoder needs features {FEATURE_KEYS}; missing {missing}")
        for key, channels in zip(FEATURE_KEYS, self.in_channels, strict=True):
            if features[key].shape[1] != channels:
                raise ValueError(
                    f"feature {key} has {features[key].shape[1]} channels, expected {channels}"
                )
        device_type = features["res2"].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_fp32({k: features[k].float() for k in FEATURE_KEYS})

    def _forward_fp32(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs, pos, shapes = [], [], []
        for level, key in enumerate(("res5", "res4", "res3")):
            src = self.input_proj[level](features[key])
            shapes.append((src.shape[2], src.shape[3]))
            pos.append(self.pe_layer(src).flatten(2).transpose(1, 2) + self.level_embed[level])
            srcs.append(src.flatten(2).transpose(1, 2))
        memory = self.encoder(torch.cat(srcs, 1), torch.cat(pos, 1), shapes)
        batch = memory.shape[0]
        maps = [
            chunk.transpose(1, 2).reshape(batch, -1, h, w)
            for chunk, (h, w) in zip(
                memory.split([h * w for h, w in shapes], dim=1), shapes, strict=True
            )
        ]
        lateral = self.lateral_convs[0](features["res2"])
        fused = lateral + F.interpolate(
            maps[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        fused = self.output_convs[0](fused)
        return self.mask_features(fused), maps
