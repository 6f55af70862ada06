"""Semantic segmentation metrics from one confusion matrix over the whole evaluation set.

Intersection over union is computed from pixel counts summed over every image, as DeepLab's
``tf.metrics.mean_iou`` and torchmetrics' ``MulticlassJaccardIndex`` do, never as a mean of
per-image IoUs (which weighs a small image as much as a large one and scores a class that an
image lacks as 0 or 1). Pixels whose target is the ignore index (255: VOC's object borders, the
padding of a batch) are not counted.

Classes that neither the ground truth nor the predictions contain (union 0) have no IoU: they are
left out of the mean, as in DeepLab and torchmetrics 1.x (``average="macro"``), and reported as
NaN by [`compute`][mobilenets.tasks.segmentation.metrics.ConfusionMatrix.compute] and as ``None``
(JSON ``null``; Python's json writes NaN as a bare ``NaN`` that strict JSON parsers refuse) by
[`summary`][mobilenets.tasks.segmentation.metrics.ConfusionMatrix.summary]. torchmetrics' per-class
IoU (``average=None``) writes 0.0 for such a class instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.data.segmentation import IGNORE_INDEX
from mobilenets.engine.device import Distributed, all_sum


class ConfusionMatrix:
    """Pixel counts ``matrix[true class, predicted class]`` (int64), summed over every update.

    ``update`` counts a batch on the prediction's device (the matrix moves there; ``device``
    is where it starts, which matters to a process that scores no batch before ``reduce``),
    with one wait for the device: the check that every label is in range. ``reduce`` sums the
    matrices of the processes of a torchrun job; ``compute`` and ``summary`` give mIoU,
    per-class IoU, pixel accuracy, mean class accuracy and frequency-weighted IoU, each in
    [0, 1].
    """

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise MobileNetsError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of ``prediction`` (class indices, ``[N, H, W]`` or ``[H, W]``)
        against ``target`` of the same shape; target pixels equal to ``ignore_index`` are
        skipped."""
        if prediction.shape != target.shape or prediction.dim() not in (2, 3):
            raise MobileNetsError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must "
                "have the same shape, [N, H, W] or [H, W]"
            )
        for name, tensor in (("prediction", prediction), ("target", target)):
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise MobileNetsError(
                    f"{name} must hold integer class indices, got dtype {tensor.dtype} "
                    "(take the argmax of the logits over classes)"
                )
        classes = self.num_classes
        # int64 before any arithmetic: a uint8 mask times the class count would wrap around.
        self.matrix = self.matrix.to(prediction.device)
        prediction = prediction.to(torch.int64)
        target = target.to(prediction.device, torch.int64)
        counted = target != self.ignore_index
        target_bad = counted & ((target < 0) | (target >= classes))
        prediction_bad = counted & ((prediction < 0) | (prediction >= classes))
        if (target_bad | prediction_bad).any():
            for name, tensor, bad in (
                ("target", target, target_bad),
                ("prediction", prediction, prediction_bad),
            ):
                if bad.any():
                    values = tensor[bad].unique()[:5].tolist()
                    raise MobileNetsError(
                        f"{name} has class indices {values}, outside 0..{classes - 1} (the "
                        f"{classes} classes; ignore_index {self.ignore_index} marks skipped "
                        "pixels)"
                    )
        # Skipped pixels go to an extra bin past the matrix, so no boolean indexing (which
        # would wait for the device) is needed.
        cells = torch.where(counted, target * classes + prediction, classes * classes)
        counts = torch.bincount(cells.flatten(), minlength=classes * classes + 1)
        self.matrix += counts[: classes * classes].view(classes, classes)

    def reduce(self, distributed: Distributed) -> ConfusionMatrix:
        """Sum the matrix over the processes of the job, in place; returns self."""
        all_sum(self.matrix, distributed)
        return self

    @property
    def pixels(self) -> int:
        """Pixels counted so far."""
        return int(self.matrix.sum().item())

    def compute(self) -> dict:
        """``mIoU``, ``pixel_accuracy``, ``mean_accuracy``, ``fwIoU`` (floats) and ``IoU``
        (float64 tensor of one value per class, NaN for a class with union 0).

        mIoU averages the IoUs of the classes with union > 0 (in the ground truth or the
        predictions); mean accuracy averages the recall of the classes in the ground truth;
        fwIoU weighs each class's IoU by its share of the ground-truth pixels.
        """
        matrix = self.matrix.double().cpu()
        total = matrix.sum()
        if total == 0:
            raise MobileNetsError(
                "no pixel was counted: the evaluation data is empty or every target pixel is "
                f"ignore_index {self.ignore_index}"
            )
        hits = matrix.diagonal()
        truth = matrix.sum(1)  # pixels of each class in the ground truth
        union = truth + matrix.sum(0) - hits
        iou = torch.where(union > 0, hits / union.clamp(min=1), math.nan)
        present = truth > 0
        return {
            "mIoU": iou[union > 0].mean().item(),
            "pixel_accuracy": (hits.sum() / total).item(),
            "mean_accuracy": (hits[present] / truth[present]).mean().item(),
            "fwIoU": (truth[present] / total * iou[present]).sum().item(),
            "IoU": iou,
        }

    def summary(self, class_names: Sequence[str] | None = None) -> dict:
        """[`compute`][mobilenets.tasks.segmentation.metrics.ConfusionMatrix.compute] as plain
        JSON values: ``IoU`` a list with ``None`` for a class with union 0, ``classes`` the
        names of the classes (their indices as strings by default) and ``pixels`` the number
        of pixels counted."""
        if class_names is None:
            class_names = [str(index) for index in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise MobileNetsError(
                f"class_names has {len(class_names)} names for {self.num_classes} classes"
            )
        result = self.compute()
        result["IoU"] = [None if math.isnan(value) else value for value in result["IoU"].tolist()]
        result["classes"] = list(class_names)
        result["pixels"] = self.pixels
        return result
