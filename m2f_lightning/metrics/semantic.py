"""mIoU as detectron2's SemSegEvaluator computes it."""

from typing import Any

import torch
from torchmetrics.classification import MulticlassJaccardIndex


class SemanticIoU(MulticlassJaccardIndex):
    """mIoU over a dataset-level confusion matrix (ignore label 255), as detectron2's
    SemSegEvaluator computes it.

    Pixels whose ground truth is the ignore label are left out. Per class c: IoU = tp /
    (pos_gt + pos_pred − tp), with pos_gt the ground-truth pixels of c and pos_pred the pixels
    predicted c (on non-ignored ground truth). mIoU is the mean IoU over the classes with
    pos_gt > 0 (detectron2's acc_valid; its iou_valid, pos_gt > 0 and union > 0, selects the same
    classes): a class present in the ground truth nowhere counts in the mean even if it is
    predicted. `iou_per_class` is NaN for the classes left out.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: Any) -> None:
        super().__init__(
            num_classes=num_classes, ignore_index=ignore_index, average="none", **kwargs
        )

    def compute(self) -> dict[str, torch.Tensor]:
        confmat = self.confmat.double()  # rows: ground truth, columns: prediction
        tp = confmat.diag()
        pos_gt, pos_pred = confmat.sum(1), confmat.sum(0)
        union = pos_gt + pos_pred - tp
        valid = pos_gt > 0
        iou = torch.where(valid, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        miou = iou[valid].mean() if valid.any() else torch.tensor(0.0, dtype=torch.float64)
        return {"miou": miou, "iou_per_class": iou}
