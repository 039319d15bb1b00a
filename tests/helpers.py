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


# Hydra overrides that shrink any composed config to a model that trains in milliseconds
TINY_OVERRIDES = [
    "backbone=swin_t",
    "backbone.weights=null",
    "++backbone.kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], window_size: 4, drop_path_rate: 0.0}",
    "model.net.num_queries=6",
    "model.net.hidden_dim=32",
    "model.net.mask_dim=32",
    "model.net.pixel_decoder_dim=32",
    "model.net.encoder_layers=1",
    "model.net.encoder_ffn_dim=32",
    "model.net.encoder_heads=4",
    "model.net.decoder_layers=3",
    "model.net.decoder_heads=4",
    "model.net.decoder_ffn_dim=32",
    "model.net.norm_groups=8",
    "model.criterion.num_points=64",
    "trainer=cpu",
    "logger=none",
    "dataset.num_workers=0",
    "dataset.batch_size=2",
    "dataset.eval_batch_size=2",
    "dataset.test_min_size=96",
    "dataset.test_max_size=160",
]


def synthetic_panoptic(datasets, *extra: str) -> list[str]:
    """Overrides of a tiny panoptic run on the built-in synthetic scenes under `datasets`
    (LSJ at 128), then `extra`."""
    return [
        "task=panoptic",
        "dataset=synthetic",
        *TINY_OVERRIDES,
        f"paths.datasets_dir={datasets}",
        "dataset.train_aug={recipe: lsj, size: 128}",
        *extra,
    ]


def compose(config_name: str, overrides: list[str], output_dir) -> "DictConfig":  # noqa: F821
    """Compose a real config from conf/ (as the CLI does) with outputs redirected to a tmp dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from m2f_lightning.cli.main import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def coco_custom_source(fmt: str, annotations: str) -> dict:
    """`dataset.source` of a custom dataset laid out as COCO under the root: images, the
    `<annotations>_<split>2017.json` files and the panoptic PNG folders, for train and val."""
    source: dict = {
        split: {
            "images": f"coco/{split}2017",
            "annotations": f"coco/annotations/{annotations}_{split}2017.json",
            "panoptic": f"coco/panoptic_{split}2017",
        }
        for split in ("train", "val")
    }
    source["format"] = fmt
    return source
