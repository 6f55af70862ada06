"""Scoring a segmenter: mIoU over a dataset, with optional test-time augmentation.

Test-time augmentation follows TF DeepLab's evaluation (``eval_scales``,
``add_flipped_images``): ``"flip"`` averages the class probabilities of an image and its mirror;
``"multiscale"`` averages them over the six scales of MobileNetV2 paper Table 7's "MF" row
(0.5 to 1.75), each scale with its mirror, after resizing every output back to the input size.
The model maps images ``[N, 3, H, W]`` to logits ``[N, C, H, W]`` at its input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.segmentation_cost import MULTISCALE, scaled_size  # Table 7's MF
from mobilenets.data.segmentation import IGNORE_INDEX, collate_segmentation
from mobilenets.engine.device import Distributed, autocast, to_device, unwrap
from mobilenets.engine.loop import ordered_loader
from mobilenets.tasks.segmentation.metrics import ConfusionMatrix

TTA_MODES = ("none", "flip", "multiscale")
METRIC_NAMES = ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU")


def check_tta(tta: str) -> None:
    if tta not in TTA_MODES:
        raise MobileNetsError(f"tta {tta!r} is not one of {', '.join(TTA_MODES)}")


def resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` to ``size`` (no copy when it already has it)."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


def segment_logits(model: torch.nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Class scores ``[N, C, H, W]`` (float32) of ``images`` ``[N, 3, H, W]`` at their size,
    whose argmax over classes is the prediction.

    ``"none"``: the model's logits. ``"flip"``: the mean of the softmax of the image and of its
    mirror image (flipped back). ``"multiscale"``: for each scale of ``MULTISCALE`` the batch is
    resized bilinearly to ``scaled_size`` of its height and width, the logits of it and of its
    mirror are resized back to ``H x W``, and the mean of the softmax over the 12 views is
    returned. A model output of another size than its input is resized to it.
    """
    check_tta(tta)
    size = tuple(images.shape[-2:])
    if tta == "none":
        return resize(model(images).float(), size)
    scales = MULTISCALE if tta == "multiscale" else (1.0,)
    total = None
    for scale in scales:
        view = resize(images, (scaled_size(size[0], scale), scaled_size(size[1], scale)))
        for mirrored in (False, True):
            logits = model(view.flip(-1) if mirrored else view).float()
            if mirrored:
                logits = logits.flip(-1)
            probabilities = resize(logits, size).softmax(1)
            total = probabilities if total is None else total + probabilities
    return total / (2 * len(scales))


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
