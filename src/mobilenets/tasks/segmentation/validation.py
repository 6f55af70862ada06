"""A segmenter checkpoint's accuracy column for ``mobilenets bench --data``: the mIoU of each
runtime's logits on the validation split, each image fitted to the measured input size as
``segment export --int8`` scores a file, and int8 calibrated on the training split."""

from __future__ import annotations

from mobilenets.data.segmentation import load_segmentation_data
from mobilenets.data.segmentation_transforms import eval_transform
from mobilenets.deploy.bench import Forward, RuntimeModel, Validation
from mobilenets.tasks.segmentation.evaluate import evaluate_segmenter
from mobilenets.tasks.segmentation.inference import (
    check_data_classes,
    load_segmentation_checkpoint,
)
from mobilenets.tasks.segmentation.quantize import SquareInputSegmenter, calibration_batches


def bench_validation(path: str, resolution: int, data: str) -> Validation:
    """The [`Validation`][mobilenets.deploy.bench.Validation] of the segmentation checkpoint at
    ``path`` measured at ``resolution`` (the side of its one input): ``data``'s splits through
    its evaluation preprocessing, mIoU as the metric."""
    checkpoint = load_segmentation_checkpoint(path)
    splits = load_segmentation_data(data)
    for dataset in (splits.train, splits.val):
        check_data_classes(checkpoint, dataset, data)
        dataset.transform = eval_transform(checkpoint.preprocessing)
    classes = len(checkpoint.classes)

    def calibration(count: int, batch: int):
        count = min(count, len(splits.train))
        return calibration_batches(splits.train, count, resolution, batch)

    def score(forward: Forward, batch: int) -> float:
        model = SquareInputSegmenter(RuntimeModel(forward), resolution, classes)
        return evaluate_segmenter(model, splits.val, batch_size=1)["mIoU"]

    return Validation("mIoU", calibration, score)
