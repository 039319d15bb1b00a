"""Mask2Former's masked-attention transformer decoder and its prediction heads."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .position_encoding import PositionEmbeddingSine


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention on `F.scaled_dot_product_attention`.

    Parameters use `nn.MultiheadAttention`'s layout (fused `in_proj_weight` rows q|k|v), so
    original checkpoints load unchanged, but the fused SDPA kernels are used.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [B, Lq, C], key/value [B, Lk, C]; blocked: bool [B, heads or 1, Lq, Lk], True = masked."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q))
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        attn_mask = None if blocked is None else ~blocked
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.embed_dim)
        return self.out_proj(out)


class AttentionLayer(nn.Module):
    """Post-norm attention sub-layer: x = norm(x + attn(x + query_pos, memory + pos, memory))."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor,
        pos: torch.Tensor | None = None,
        blocked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        key = memory if pos is None else memory + pos
        return self.norm(tgt + self.attn(tgt + query_pos, key, memory, blocked))


class FFNLayer(nn.Module):
    """Post-norm feed-forward sub-layer."""

    def __init__(self, d_model: int, dim_feedforward: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (the mask embedding head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskedAttentionDecoder(nn.Module):
    """Queries attend, layer by layer, to one feature level at a time (coarse to fine, round
    robin), each masked to the foreground of the previous layer's mask prediction.

    Returns the prediction from the learned queries plus one after every layer
    (`num_layers + 1` sets); the last is the output, the others are `aux_outputs`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
        mask_dim: int = 256,
        num_feature_levels: int = 3,
    ) -> None:
        super().__init__()
        self.num_heads = nheads
        self.num_layers = num_layers
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.cross_attn_layers = nn.ModuleList(
            AttentionLayer(hidden_dim, nheads) for _ in range(num_layers)
        )
        self.self_attn_layers = nn.ModuleList(
            AttentionLayer(hidden_dim, nheads) for _ in range(num_layers)
        )
        self.ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers)
        )
        for layers in (self.cross_attn_layers, self.self_attn_layers, self.ffn_layers):
            for param in layers.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.constant_(conv.bias, 0.0)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.checkpointing = False  # recompute each layer in backward instead of storing it

    def _layer(
        self,
        i: int,
        output: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor,
        pos: torch.Tensor,
        blocked: torch.Tensor,
    ) -> torch.Tensor:
        output = self.cross_attn_layers[i](output, memory, query_pos, pos, blocked)
        output = self.self_attn_layers[i](output, output, query_pos, query_pos)
        return self.ffn_layers[i](output)

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        full_masks: bool | str = True,
    ) -> dict[str, object]:
        """Every prediction set carries `pred_logits`, `mask_embed` [B, Q, C] and the shared
        `mask_features` [B, C, h, w]; `pred_masks` (their product, [B, Q, h, w]) per
        `full_masks`: True every set (the official form), "last" the output set only (what
        post-processing reads: inference), False none (training: the criterion makes the logits
        where it reads them). Without full logits the attention masks come from the mask features
        resized to each level, the same logits to float rounding (docs/performance.md)."""
        if full_masks != "last" and not isinstance(full_masks, bool):
            raise ValueError(f"full_masks must be True, False or 'last'; got {full_masks!r}")
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}"
            )
        memories, positions, sizes = [], [], []
        for level, feature in enumerate(multi_scale_features):
            sizes.append(feature.shape[-2:])
            positions.append(self.pe_layer(feature).flatten(2).transpose(1, 2))
            projected = self.input_proj[level](feature).flatten(2).transpose(1, 2)
            memories.append(projected + self.level_embed.weight[level][None, None, :])
        device_type = mask_features.device.type
        if torch.is_autocast_enabled(device_type):
            # the dtype autocast gives the mask products, cast once for all prediction sets (the
            # criterion makes their logits outside autocast, from these features)
            mask_features = mask_features.to(torch.get_autocast_dtype(device_type))
        # The attention masks read the mask logits resized to each level's size. Resizing is
        # linear: without full logits, the mask features resized once per level and projected
        # give the same logits at a 16th to a 64th of the full product (docs/performance.md).
        level_features = None
        if full_masks is not True:
            with torch.no_grad():
                source = mask_features
                if source.device.type == "cpu":
                    # PyTorch's CPU bilinear kernel works channels-last: given NCHW it converts
                    # (and copies back) on every call; one conversion serves the three levels
                    # with the same numbers (~70 ms less per 512² image)
                    source = source.contiguous(memory_format=torch.channels_last)
                level_features = [
                    F.interpolate(source, size=s, mode="bilinear", align_corners=False)
                    for s in sizes
                ]
        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)

        predictions = []
        every_set = full_masks is True
        prediction, mask_embed = self._predict(output, mask_features, every_set)
        predictions.append(prediction)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            if level_features is None:  # the full logits exist: resizing them is cheaper
                blocked = attention_mask(prediction["pred_masks"], size=sizes[level])
            else:
                blocked = attention_mask(mask_embed, level_features[level])
            # a query that would attend to nothing attends to everything instead
            blocked = blocked & ~blocked.all(-1, keepdim=True)  # no boolean indexing: no sync
            args = (i, output, memories[level], query_pos, positions[level], blocked[:, None])
            if self.checkpointing and torch.is_grad_enabled():
                output = checkpoint(self._layer, *args, use_reentrant=False)
            else:
                output = self._layer(*args)
            last = i == self.num_layers - 1
            with_masks = every_set or (last and full_masks == "last")
            prediction, mask_embed = self._predict(output, mask_features, with_masks)
            predictions.append(prediction)

        return {**predictions[-1], "aux_outputs": predictions[:-1]}

    def _predict(
        self, output: torch.Tensor, mask_features: torch.Tensor, with_masks: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The prediction set of the queries (with `pred_masks` when `with_masks`), and their
        mask embeddings."""
        decoded = self.decoder_norm(output)
        mask_embed = self.mask_embed(decoded)
        prediction = {
            "pred_logits": self.class_embed(decoded),
            "mask_embed": mask_embed,
            "mask_features": mask_features,
        }
        if with_masks:
            prediction["pred_masks"] = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        return prediction, mask_embed


@torch.no_grad()
def attention_mask(
    mask_source: torch.Tensor,
    level_features: torch.Tensor | None = None,
    size: torch.Size | tuple[int, int] | None = None,
) -> torch.Tensor:
    """Which pixels of a level each query does not attend to: bool [B, Q, h·w], True where the
    mask logit resized to the level (bilinear, align_corners=False) has sigmoid < 0.5.

    Either the full mask logits [B, Q, H, W] and the level's `size` (the official form), or the
    mask embeddings [B, Q, C] and the mask features already resized to the level
    (`level_features` [B, C, h, w]): the same logits, as resizing is linear.
    """
    if level_features is None:
        logits = F.interpolate(mask_source, size=size, mode="bilinear", align_corners=False)
    else:
        logits = torch.einsum("bqc,bchw->bqhw", mask_source, level_features)
    return logits.sigmoid().flatten(2) < 0.5
