"""Plain nn.Module building blocks of Mask2Former (no Lightning, no Hydra)."""

from .backbone import TimmBackbone, resolve_backbone_name
from .mask2former import Mask2Former
from .ms_deform_attn import MSDeformAttn, set_ms_deform_attn_backend
from .pixel_decoder import MSDeformAttnPixelDecoder
from .position_encoding import PositionEmbeddingSine
from .transformer_decoder import MaskedAttentionDecoder

__all__ = [
    "Mask2Former",
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "MaskedAttentionDecoder",
    "PositionEmbeddingSine",
    "TimmBackbone",
    "resolve_backbone_name",
    "set_ms_deform_attn_backend",
]
