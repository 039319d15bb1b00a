"""Evaluation as the official evaluators and the official model's inference do it (facts in
shared/reference/fidelity.md §2, §7 and mask2former.md §4)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m2f_lightning import inference
from m2f_lightning.inference import postprocess, semantic_inference
from m2f_lightning.metrics import SemanticIoU


def _detectron2_miou(conf: np.ndarray) -> float:
    """SemSegEvaluator's arithmetic on a [gt, pred] confusion matrix: IoU = tp / (pos_gt +
    pos_pred − tp), averaged over the classes with pos_gt > 0."""
    tp = np.diag(conf)
    pos_gt, pos_pred = conf.sum(1), conf.sum(0)
    valid = pos_gt > 0
    return float(np.mean(tp[valid] / (pos_gt + pos_pred - tp)[valid]))


def test_miou_averages_over_the_classes_present_in_the_ground_truth() -> None:
    # class 2 is predicted but never in the ground truth: detectron2 leaves it out of the mean
    target = torch.tensor([[0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 2, 1, 1, 2]])
    metric = SemanticIoU(3)
    metric.update(pred, target)
    out = metric.compute()
    conf = np.array([[1, 0, 1], [0, 2, 0], [0, 0, 0]])
    assert out["miou"].item() == pytest.approx(_detectron2_miou(conf)) == pytest.approx(0.75)
    assert torch.isnan(out["iou_per_class"][2])


def test_miou_matches_detectron2_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, size=(2, 30, 30))
    target[target == 5] = 255  # class 5 never in the ground truth ...
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 6, target.shape))
    pred[pred == 255] = 5  # ... but predicted
    metric = SemanticIoU(6)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    valid = target != 255
    conf = np.zeros((6, 6))
    np.add.at(conf, (target[valid], pred[valid]), 1)
    assert metric.compute()["miou"].item() == pytest.approx(_detectron2_miou(conf), abs=1e-12)


@pytest.mark.parametrize("bands", [False, True])
def test_semantic_only_inference_scores_at_the_padded_size_then_resizes_the_scores(
    bands: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Official order without panoptic/instance output: upsample the mask logits to the padded
    input, softmax × sigmoid there, crop to the image, resize the K class scores; also when the
    resize to the original size runs a few rows at a time, as for a large photo."""
    torch.manual_seed(0)
    queries, classes = 5, 3
    padded, image_size, original = (
        ((96, 96), (90, 80), (131, 117)) if bands else ((32, 32), (27, 30), (41, 37))
    )
    outputs = {
        "pred_logits": torch.randn(1, queries, classes + 1),
        "pred_masks": torch.randn(1, queries, padded[0] // 4, padded[1] // 4) * 4,
        "padded_size": padded,
    }
    rows_asked = []
    if bands:
        monkeypatch.setattr(inference.resize, "FULL_FRAME_BYTES", 0)
        monkeypatch.setattr(inference.resize, "CHUNK_BYTES", 4000)
        rows = inference.resize._RowResizer.rows
        monkeypatch.setattr(
            inference.resize._RowResizer,
            "rows",
            lambda self, a, b: rows_asked.append((a, b)) or rows(self, a, b),
        )
    logits = F.interpolate(outputs["pred_masks"], size=padded, mode="bilinear")[0]
    scores = semantic_inference(outputs["pred_logits"][0], logits)[
        :, : image_size[0], : image_size[1]
    ]
    expected = F.interpolate(scores[None], size=original, mode="bilinear")[0]
    out = postprocess(outputs, [image_size], [original], "semantic")[0]["sem_seg"]
    assert tuple(out.shape) == (classes, *original)
    torch.testing.assert_close(out.full(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.argmax(0), expected.argmax(0))
    assert (len(rows_asked) > 2) == bands  # the banded variant did resize a band at a time
    # the panoptic model resizes the mask logits first (sem_seg_postprocess_before_inference)
    pan = postprocess(outputs, [image_size], [original], "panoptic")[0]["sem_seg"]
    assert (pan.full() - expected).abs().max() > 1e-3


def _eval_target(dataset: str, root, index: int = 0):
    from m2f_lightning.data import build_reader, metadata_for
    from m2f_lightning.data.targets import eval_targets

    reader = build_reader(dataset, "panoptic", "val", root)
    return reader[index], eval_targets("panoptic", metadata_for(dataset, "panoptic"), reader[index])


def test_coco_panoptic_ap_is_scored_against_the_instances_json(tmp_path) -> None:
    """The official COCO panoptic config scores AP with COCOEvaluator on instances_val2017.json;
    the panoptic PNG only when that file is absent, with a warning that says so."""
    import json

    from m2f_lightning.data.synthetic import write_dataset

    write_dataset("coco_panoptic", tmp_path, num=2, num_val=2, seed=0)
    with pytest.warns(UserWarning, match="instances_val2017.json not found.*panoptic PNGs"):
        sample, target = _eval_target("coco", tmp_path)
    assert len(target.instances.labels) == len(
        [s for s in sample.segments if s["category"] < 80]  # the thing segments of the PNG
    )
    panoptic = json.loads((tmp_path / "coco/annotations/panoptic_val2017.json").read_text())
    instances = {
        "images": panoptic["images"],
        "categories": [c for c in panoptic["categories"] if c["isthing"]],
        "annotations": [  # one square "car" (id 3) and one crowd "person" per image
            {"id": 2 * i + k, "image_id": img["id"], "category_id": cat, "iscrowd": k,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]], "area": 400,
             "bbox": [10, 10, 20, 20]}
            for i, img in enumerate(panoptic["images"]) for k, cat in ((0, 3), (1, 1))
        ],
    }  # fmt: skip
    (tmp_path / "coco/annotations/instances_val2017.json").write_text(json.dumps(instances))
    _, target = _eval_target("coco", tmp_path)
    inst = target.instances
    assert inst.labels.tolist() == [2, 0]  # contiguous ids of car and person
    assert inst.iscrowd.tolist() == [False, True]
    assert inst.masks.shape[1:] == sample.id_map.shape and inst.masks[0].sum() == 400
    assert inst.masks[0, 10:30, 10:30].all()


def test_ade20k_panoptic_scores_ap_and_miou_against_the_official_files(tmp_path) -> None:
    """ADE20K panoptic: AP against ade20k_instance_val.json, mIoU against the
    annotations_detectron2 semantic PNGs (thing pixels without an instance keep their class)."""
    from PIL import Image

    from m2f_lightning.data.datasets.instance import load_coco
    from m2f_lightning.data.synthetic import write_dataset

    write_dataset("ade20k", tmp_path, num=2, num_val=2, seed=0)
    ade = tmp_path / "ADEChallengeData2016"
    sample, target = _eval_target("ade20k", tmp_path)
    coco = load_coco(ade / "ade20k_instance_val.json")
    assert len(target.instances.labels) == len(coco.imgToAnns[sample.image_id])
    # without annotations_detectron2: derived from the panoptic PNG
    derived = target.sem_seg.clone()
    (ade / "annotations_detectron2/validation").mkdir(parents=True)
    for png in (ade / "images/validation").glob("*.jpg"):
        h, w = np.asarray(Image.open(png)).shape[:2]
        label = np.full((h, w), 7, np.uint8)
        label[0] = 255
        Image.fromarray(label).save(ade / "annotations_detectron2/validation" / f"{png.stem}.png")
    _, target = _eval_target("ade20k", tmp_path)
    assert (target.sem_seg[1:] == 7).all() and (target.sem_seg[0] == 255).all()
    assert not torch.equal(target.sem_seg, derived)


def test_cityscapes_instance_ap_is_cityscapesscripts_with_coco_ap_beside_it(tmp_path) -> None:
    """The paper's Cityscapes AP: cityscapesScripts' evalInstanceLevelSemanticLabeling on the
    gtFine instanceIds PNGs; COCO-style AP is reported beside it as AP_coco."""
    from m2f_lightning.data import build_reader, metadata_for
    from m2f_lightning.data.synthetic import write_dataset
    from m2f_lightning.data.targets import eval_targets
    from m2f_lightning.metrics import SegmentationMetrics
    from m2f_lightning.types import InstanceSet, SegmentationResult

    write_dataset("cityscapes", tmp_path, num=2, num_val=2, seed=0, size=(256, 512))
    meta = metadata_for("cityscapes", "instance")
    reader = build_reader("cityscapes", "instance", "val", tmp_path)

    def score(shift: int) -> dict[str, float]:
        metrics = SegmentationMetrics(
            "instance", meta.num_classes, meta.thing_ids, [], dataset_ids=meta.dataset_ids
        )
        for i in range(len(reader)):
            target = eval_targets("instance", meta, reader[i])
            assert target.instance_file.endswith("_gtFine_instanceIds.png")
            gt = target.instances
            keep = ~gt.iscrowd
            masks = torch.roll(gt.masks[keep], shifts=shift, dims=2)
            pred = InstanceSet(masks, gt.labels[keep], scores=torch.linspace(1, 0.5, len(masks)))
            metrics.update([SegmentationResult(instances=pred)], [target])
        return metrics.compute()

    perfect, shifted = score(0), score(6)
    assert perfect["AP"] == pytest.approx(100) and perfect["AP_coco"] == pytest.approx(100)
    assert {"AP", "AP50", "AP_coco", "AP50_coco"} <= set(perfect)
    assert perfect["AP50"] == pytest.approx(100)
    assert shifted["AP"] < 100 and shifted["AP"] != pytest.approx(shifted["AP_coco"])
    far = score(40)  # most objects no longer overlap by half: AP50 drops too
    assert 0 <= far["AP"] <= far["AP50"] < 100
