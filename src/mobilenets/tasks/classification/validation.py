"""A classifier checkpoint's accuracy column for ``mobilenets bench --data``: top-1 of each
runtime's logits on the validation split, and int8 calibrated on the training split."""

from __future__ import annotations

from mobilenets.data.classification import load_splits
from mobilenets.data.transforms import eval_transform
from mobilenets.deploy.bench import Forward, RuntimeModel, Validation
from mobilenets.deploy.quantize import calibration_batches, calibration_indices
from mobilenets.engine.checkpoint import check_classes, load_checkpoint
from mobilenets.engine.evaluate import evaluate
from mobilenets.engine.loop import ordered_loader


def bench_validation(path: str, resolution: int, data: str) -> Validation:
    """The [`Validation`][mobilenets.deploy.bench.Validation] of the classifier checkpoint at
    ``path`` measured at ``resolution``: the splits of ``data`` through its evaluation
    preprocessing at that size (the same seeded calibration sample as ``mobilenets quantize``),
    top-1 as the metric."""
    checkpoint = load_checkpoint(path)
    splits = load_splits(data, resolution)
    check_classes(checkpoint, splits.classes, data)
    splits.train.transform = splits.val.transform = eval_transform(
        checkpoint.preprocessing.at(resolution)
    )
    classes = len(checkpoint.classes)

    def calibration(count: int, batch: int):
        indices = calibration_indices(len(splits.train), min(count, len(splits.train)))
        return calibration_batches(splits.train, indices, batch)

    def score(forward: Forward, batch: int) -> float:
        loader = ordered_loader(splits.val, batch)
        return evaluate(RuntimeModel(forward), loader, classes).top1

    return Validation("top-1", calibration, score)
