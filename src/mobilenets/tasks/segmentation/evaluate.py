"""Scoring a segmenter, a model or a checkpoint: mIoU over a dataset, with optional test-time
augmentation (see [`segment_logits`][mobilenets.tasks.segmentation.inference.segment_logits]).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from mobilenets.core.errors import MobileNetsError
from mobilenets.data.segmentation import IGNORE_INDEX, collate_segmentation, load_segmentation_data
from mobilenets.data.segmentation_transforms import eval_transform
from mobilenets.engine.device import Distributed, autocast, pick_device, to_device, unwrap
from mobilenets.engine.loop import ordered_loader
from mobilenets.tasks.segmentation.inference import (
    SegmentationCheckpoint,
    check_data_classes,
    check_tta,
    segment_logits,
    with_output_stride,
)
from mobilenets.tasks.segmentation.metrics import ConfusionMatrix

METRIC_NAMES = ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU")


@torch.no_grad()
def evaluate_segmenter(
    model: torch.nn.Module,
    dataset,
    *,
    num_classes: int | None = None,
    tta: str = "none",
    batch_size: int = 8,
    workers: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    distributed: Distributed | None = None,
    progress: bool = True,
) -> dict:
    """mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU and per-class IoU of
    ``model`` on ``dataset``, from one confusion matrix over every pixel of the set (see
    [`ConfusionMatrix`][mobilenets.tasks.segmentation.metrics.ConfusionMatrix]).

    ``dataset`` yields ``(image float [3, H, W], mask int64 [H, W])`` of any sizes, looked up by
    ``(index, seed)`` like the package's datasets; its transform must be the evaluation one.
    Each batch is padded to its largest image (masks with ``IGNORE_INDEX``, so padding is never
    scored); the model sees the padding near the bottom and right edges, so with a model whose
    receptive field reaches past a pixel the scores can depend a little on ``batch_size``;
    ``batch_size=1`` scores each image on its own. ``num_classes`` defaults to the model's
    ``num_classes``, else the dataset's. ``device`` defaults to the model's. With several
    processes each scores its share and the matrices are summed. The model's training mode is
    restored afterwards.
    """
    check_tta(tta)
    distributed = distributed or Distributed()
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    num_classes = resolve_num_classes(model, dataset, num_classes)
    if len(dataset) == 0:
        raise MobileNetsError("evaluation data is empty")
    confusion = ConfusionMatrix(num_classes, IGNORE_INDEX, device)
    loader = ordered_loader(dataset, batch_size, workers, device, collate_segmentation, distributed)
    was_training = model.training
    model.eval()
    try:
        for images, masks in tqdm(loader, desc="eval", leave=False, disable=not progress):
            images = to_device(images, device, channels_last)
            with autocast(device, dtype):
                scores = segment_logits(model, images, tta)
            confusion.update(scores.argmax(1), masks.to(device, non_blocking=True))
    finally:
        model.train(was_training)
    confusion.reduce(distributed)
    class_names = getattr(dataset, "class_names", None)
    if class_names is not None and len(class_names) != num_classes:
        class_names = None
    return confusion.summary(class_names)


def resolve_num_classes(model: torch.nn.Module, dataset, num_classes: int | None) -> int:
    """``num_classes`` if given, else the model's, else the dataset's; the model and the data
    must agree when both say."""
    model_classes = getattr(unwrap(model), "num_classes", None)
    data_classes = getattr(dataset, "num_classes", None)
    if num_classes is not None:
        return num_classes
    if model_classes is not None and data_classes is not None and model_classes != data_classes:
        raise MobileNetsError(
            f"the model has {model_classes} classes, the data {data_classes}; pass "
            "num_classes= to score the model's predictions against the data's labels anyway"
        )
    if model_classes is None and data_classes is None:
        raise MobileNetsError(
            "num_classes= is needed: neither the model nor the dataset has num_classes"
        )
    return model_classes if model_classes is not None else data_classes


def evaluate(
    checkpoint: SegmentationCheckpoint,
    data: str,
    *,
    output_stride: int | None = None,
    tta: str = "none",
    batch_size: int = 1,
    workers: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict:
    """mIoU and the other metrics of
    [`evaluate_segmenter`][mobilenets.tasks.segmentation.evaluate.evaluate_segmenter] of a
    checkpoint on the validation split of ``data``, at full image size.

    ``output_stride``: score the same weights rebuilt at another output stride (8 for a model
    trained at 16; see
    [`with_output_stride`][mobilenets.tasks.segmentation.inference.with_output_stride]).
    ``tta``: ``"none"``, ``"flip"`` or ``"multiscale"``. ``batch_size`` 1 scores each image on its
    own; a larger batch pads its images to the largest, which the model sees near the edges.
    The data's classes must be the checkpoint's, in the same order.
    """
    check_tta(tta)
    dataset = load_segmentation_data(data, splits=("val",)).val
    check_data_classes(checkpoint, dataset, data)
    dataset.transform = eval_transform(checkpoint.preprocessing)
    device = pick_device(device)
    model = with_output_stride(checkpoint.model, output_stride).to(device)
    return evaluate_segmenter(
        model,
        dataset,
        tta=tta,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=progress,
    )
