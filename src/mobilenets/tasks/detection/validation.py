"""A detector checkpoint's accuracy column for ``mobilenets bench --data``: COCO AP50 of each
runtime's raw outputs, decoded and NMS'd as evaluation does, on the validation split, and int8
calibrated on the training split."""

from __future__ import annotations

from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy.bench import Forward, RuntimeModel, Validation
from mobilenets.deploy.quantize import calibration_batches, calibration_indices
from mobilenets.tasks.detection.evaluate import evaluate_detections
from mobilenets.tasks.detection.inference import (
    checkpoint_data,
    load_detection_checkpoint,
    output_detections,
)


def bench_validation(path: str, resolution: int, data: str) -> Validation:
    """The [`Validation`][mobilenets.deploy.bench.Validation] of the detection checkpoint at
    ``path``, at its own resolution (its default boxes and preprocessing are laid out for it):
    ``data``'s splits through its evaluation preprocessing, AP50 as the metric."""
    checkpoint = load_detection_checkpoint(path)
    model = checkpoint.model.eval()
    if resolution != model.resolution:
        raise MobileNetsError(
            f"{str(path)!r} detects at {model.resolution} px; its accuracy is measured there, "
            f"not at {resolution} (leave out the resolution)"
        )
    found = checkpoint_data(checkpoint, data)
    anchors, loss = model.anchors(), checkpoint.loss

    def calibration(count: int, batch: int):
        indices = calibration_indices(len(found.train), min(count, len(found.train)))
        return calibration_batches(found.train, indices, batch)

    def score(forward: Forward, batch: int) -> float:
        run = RuntimeModel(forward, detector=True)

        def detect(images, sizes):
            return output_detections(run(images), anchors, sizes, loss=loss)

        return evaluate_detections(detect, found.val, batch_size=batch)["AP50"]

    return Validation("AP50", calibration, score)
