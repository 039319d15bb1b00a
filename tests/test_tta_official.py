"""The official test-time augmentation (`inference.tta_min_sizes`) against a transcription of
Mask2Former's SemanticSegmentorWithTTA with detectron2's DatasetMapperTTA, written here: the
test-time input resized by ResizeShortestEdge(min_size, MAX_SIZE) with PIL bilinear on uint8,
flipped, padded, run; the model's `sem_seg` at the original size (MaskFormer.forward: mask logits
bilinear to the padded size, then for a semantic model semantic_inference and sem_seg_postprocess,
for a panoptic model sem_seg_postprocess of the logits first); flipped back; averaged."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from PIL import Image

from m2f_lightning.cli.builders import inference_settings
from m2f_lightning.errors import ConfigError
from m2f_lightning.inference import InferenceSettings, predict_tiled

NUM_CLASSES, QUERIES = 5, 7


class TinyRandomNet(torch.nn.Module):
    """A small random network with Mask2Former's call and outputs (context through a pooled
    feature, so resizing and flipping change its answer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pixel = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.mask_embed = torch.nn.Parameter(torch.randn(QUERIES, 8))
        self.query = torch.nn.Parameter(torch.randn(QUERIES, 8))
        self.cls = torch.nn.Linear(8, NUM_CLASSES + 1)

    def forward(self, images: torch.Tensor, image_sizes=None) -> dict:
        features = F.avg_pool2d(torch.tanh(self.pixel(images.float() / 64.0 - 2.0)), 4)
        masks = torch.einsum("qc,bchw->bqhw", self.mask_embed, features) * 3.0
        logits = self.cls(self.query[None] * features.mean((-2, -1))[:, None] * 4.0)
        size = tuple(images.shape[-2:])
        return {"pred_logits": logits, "pred_masks": masks, "image_size": size, "padded_size": size}


def _d2_output_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_output_shape."""
    size = short * 1.0
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def _sem_seg_postprocess(result: torch.Tensor, img_size, output_size) -> torch.Tensor:
    """detectron2's sem_seg_postprocess: crop the padding, bilinear to the original size."""
    result = result[:, : img_size[0], : img_size[1]][None]
    return F.interpolate(result, tuple(output_size), mode="bilinear", align_corners=False)[0]


def _official_tta(model, image: np.ndarray, original, min_sizes, max_size, flip, task):
    """SemanticSegmentorWithTTA._inference_one_image on the test-time input `image` (uint8 HWC)
    whose dataset dict says height, width = `original`."""
    views = []
    for min_size in min_sizes:
        h, w = _d2_output_shape(*image.shape[:2], min_size, max_size)
        resized = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        views.append((resized, False))
        if flip:
            views.append((resized[:, ::-1], True))
    total = None
    for view, flipped in views:
        h, w = view.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1).float()
        ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32  # ImageList.from_tensors
        x = F.pad(x, (0, pw - w, 0, ph - h))[None]
        with torch.no_grad():
            out = model(x, [(h, w)])
        mask_cls = out["pred_logits"][0]
        masks = F.interpolate(out["pred_masks"], (ph, pw), mode="bilinear", align_corners=False)[0]
        probs = F.softmax(mask_cls, dim=-1)[..., :-1]

        if task == "semantic":  # SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE False
            sem = _sem_seg_postprocess(
                torch.einsum("qc,qhw->chw", probs, masks.sigmoid()), (h, w), original
            )
        else:  # panoptic configs: True
            logits = _sem_seg_postprocess(masks, (h, w), original)
            sem = torch.einsum("qc,qhw->chw", probs, logits.sigmoid())
        sem = sem.flip(dims=[2]) if flipped else sem
        total = sem if total is None else total + sem
    return total / len(views)


@pytest.mark.parametrize(
    ("task", "input_hw", "original", "min_sizes", "max_size", "flip"),
    [
        ("semantic", (37, 53), (75, 106), [24, 40, 56], 3584, True),
        ("semantic", (53, 37), (40, 28), [30, 44], 64, True),  # 44 → long side capped at 64
        ("panoptic", (37, 53), (75, 106), [24, 48], 3584, True),
        ("panoptic", (41, 41), (41, 41), [32, 50], 4000, False),
    ],
)
def test_official_mode_equals_the_official_algorithm(
    task, input_hw, original, min_sizes, max_size, flip
) -> None:
    model = TinyRandomNet().eval()
    rng = np.random.default_rng(sum(input_hw))
    image = rng.integers(0, 256, (*input_hw, 3), dtype=np.uint8)
    image[: input_hw[0] // 2] //= 3  # some structure beside the noise
    expected = _official_tta(model, image, original, min_sizes, max_size, flip, task)

    settings = InferenceSettings(
        tta=True, tta_min_sizes=min_sizes, tta_max_size=max_size, tta_flip=flip
    )
    batch = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    batch[0, :, : input_hw[0], : input_hw[1]] = torch.from_numpy(image).permute(2, 0, 1)
    with torch.no_grad():
        (result,) = predict_tiled(model, batch, [input_hw], [original], task, [3, 4], settings)
    ours = result.sem_seg
    assert tuple(ours.shape) == (NUM_CLASSES, *original)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # the class map is the mean's argmax (pixels whose top two classes tie within 1e-5 aside)
    top2 = expected.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4
    assert torch.equal(result.class_map()[clear], expected.argmax(0)[clear])
    if task == "panoptic":  # segments from the views' merged queries (no official counterpart)
        assert tuple(result.panoptic_seg.shape) == tuple(original)


def test_official_mode_serves_instance_models() -> None:
    """The official TTA has no instance output; ours merges the views' queries, at the original
    size, with no semantic scores."""
    model = TinyRandomNet().eval()
    batch = torch.randint(0, 256, (1, 3, 40, 48), dtype=torch.uint8)
    settings = InferenceSettings(tta=True, tta_min_sizes=[32, 48], tta_max_size=100)
    with torch.no_grad():
        (result,) = predict_tiled(model, batch, [(40, 48)], [(60, 72)], "instance", [], settings)
    assert result.sem_seg is None
    assert result.instances is not None and tuple(result.instances.masks.shape[-2:]) == (60, 72)


def test_official_mode_is_not_the_relative_mode() -> None:
    """Absolute sizes: a 256 short side is 256 whatever the test-time size (a relative scale of
    1.0 would keep the input's 37)."""
    settings = InferenceSettings(tta=True, tta_min_sizes=[256, 384], tta_max_size=3584)
    assert settings.official_view_sizes(37, 53) == [
        ((256, 367), False),
        ((256, 367), True),
        ((384, 550), False),
        ((384, 550), True),
    ]
    assert not settings.plain
    assert not InferenceSettings(tta=False, tta_min_sizes=[256]).official_tta


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tta_min_sizes": [256, 0]}, "inference: inference.tta_min_sizes must be positive"),
        ({"tta_min_sizes": [256.5]}, "tta_min_sizes must be positive whole numbers.*256.5"),
        ({"tta_min_sizes": ["big"]}, "tta_min_sizes.*'big'"),
        ({"tta_min_sizes": [True]}, "tta_min_sizes.*True"),
        ({"tta_max_size": 0}, "tta_max_size must be positive whole numbers.*0"),
        (
            {"tta_min_sizes": [256], "tta_scales": [0.5, 1.0]},
            r"tta_min_sizes.*tta_scales.*set one \(tta_min_sizes=\[256\], tta_scales=\[0.5, 1.0\]",
        ),
        ({"tta_min_size": [256]}, "inference: .*tta_min_size"),  # a misspelt key
    ],
)
def test_bad_official_tta_settings_are_config_errors(values: dict, message: str) -> None:
    cfg = OmegaConf.create({"inference": {"tta": True, **values}})
    with pytest.raises(ConfigError, match=message):
        inference_settings(cfg)


EXPERIMENTS = Path(__file__).parents[1] / "m2f_lightning" / "conf" / "experiment"
ADE_BASE = ([256, 384, 512, 640, 768, 896], 3584)  # Base-ADE20K-SemanticSegmentation.yaml
ADE_640 = ([320, 480, 640, 800, 960, 1120], 4480)  # the res640 Swin configs, ADE20K pan./inst.
CITYSCAPES = ([512, 768, 1024, 1280, 1536, 1792], 4096)  # Base-Cityscapes-*.yaml
OFFICIAL_TEST_AUG = {  # TEST.AUG (FLIP True in every one); None: the config defines no sizes
    "ade20k_semantic_r50": ADE_BASE,
    "ade20k_semantic_swin_l": ADE_640,
    "ade20k_panoptic_r50": ADE_640,
    "ade20k_instance_r50": ADE_640,
    "cityscapes_semantic_r50": CITYSCAPES,
    "cityscapes_semantic_swin_l": CITYSCAPES,
    "cityscapes_panoptic_r50": CITYSCAPES,
    "cityscapes_panoptic_swin_l": CITYSCAPES,
    "cityscapes_instance_r50": CITYSCAPES,
    "coco_panoptic_r50": None,
    "coco_panoptic_swin_l": None,
    "coco_instance_r50": None,
    "coco_instance_swin_l": None,
    "mapillary_panoptic_r50": None,
    "mapillary_panoptic_swin_l": None,
    "mapillary_semantic_r50": None,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_TEST_AUG))
def test_experiments_carry_the_official_test_aug_sizes(name: str) -> None:
    """`inference.tta=true` alone gives the official ms+flip where the official config defines
    TEST.AUG sizes; elsewhere the experiment sets none."""
    inference = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text()).get("inference", {})
    official = OFFICIAL_TEST_AUG[name]
    if official is None:
        assert "tta_min_sizes" not in inference and "tta_max_size" not in inference
        return
    assert inference["tta_min_sizes"] == official[0]
    assert inference["tta_max_size"] == official[1]
    assert inference.get("tta_flip", True) is True
    assert "tta" not in inference  # off unless asked for, as TEST.AUG.ENABLED False
    settings = InferenceSettings(tta=True, **inference)
    assert settings.official_tta and len(settings.official_view_sizes(512, 683)) == 12


def test_one_key_turns_on_the_papers_ms_flip() -> None:
    """The composed training config of an experiment with `inference.tta=true` alone."""
    from hydra import compose, initialize_config_dir

    from m2f_lightning.cli.main import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["experiment=ade20k_semantic_r50", "inference.tta=true"]
        )
        plain = compose(config_name="train", overrides=["experiment=coco_panoptic_r50"])
    settings = inference_settings(cfg)
    assert settings.official_tta and settings.tta_min_sizes == tuple(ADE_BASE[0])
    assert settings.tta_max_size == ADE_BASE[1] and settings.tta_flip
    assert not inference_settings(plain).tta and inference_settings(plain).tta_min_sizes == ()
