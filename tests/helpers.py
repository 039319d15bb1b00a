"""Small builders shared by the tests."""

from m2f_lightning.modeling import Mask2Former

TINY_SWIN = {"embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8), "window_size": 7}


def tiny_model(num_classes: int = 5, backbone: str = "swin_t", **overrides: object) -> Mask2Former:
    """A Mask2Former with every width shrunk so CPU tests take milliseconds."""
    backbone_kwargs = dict(TINY_SWIN) if backbone.startswith("swin") else {}
    if backbone.startswith("swin"):
        backbone_kwargs["drop_path_rate"] = 0.0
    config = {
        "num_classes": num_classes,
        "backbone": backbone,
        "backbone_kwargs": backbone_kwargs,
        "num_queries": 8,
        "hidden_dim": 32,
        "mask_dim": 32,
        "pixel_decoder_dim": 32,
        "encoder_layers": 1,
        "encoder_ffn_dim": 64,
        "encoder_heads": 4,
        "decoder_layers": 3,
        "decoder_heads": 4,
        "decoder_ffn_dim": 64,
        "norm_groups": 8,
    }
    config.update(overrides)
    return Mask2Former(**config)
