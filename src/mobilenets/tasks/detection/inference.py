"""Using a detector checkpoint: rebuild it from the file alone, turn its outputs into detections,
detect the objects of an image and draw them. Its COCO scores are
[`evaluate`][mobilenets.tasks.detection.evaluate.evaluate]'s."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import draw_bounding_boxes

from mobilenets.core.boxes import postprocess
from mobilenets.core.detector import SSDLite, load_detector, saved_detection_config
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.segmenter import saved_segmentation_config
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import saved_config
from mobilenets.data.common import open_image
from mobilenets.data.detection import DetectionData, load_detection_data
from mobilenets.data.detection_transforms import eval_transform
from mobilenets.engine.checkpoint import checkpoint_path, read_checkpoint_info
from mobilenets.engine.device import autocast, pick_device, to_device

# --- Checkpoints --------------------------------------------------------------------------------


@dataclass
class DetectionCheckpoint:
    """A trained detector with what reading its inputs and naming its outputs needs."""

    model: SSDLite
    classes: tuple[str, ...]  # classes[0] is background
    category_ids: tuple[int, ...]
    preprocessing: Preprocessing
    path: Path
    loss: str = "softmax"  # how its class logits become scores (see class_scores)
    train_config: dict | None = None
    metrics: dict | None = field(default=None)


def load_detection_checkpoint(path: str | os.PathLike) -> DetectionCheckpoint:
    """A detector checkpoint (best/last.safetensors of a run, or the run folder: best); a
    classifier's or a segmenter's is named as such."""
    path = checkpoint_path(path)
    if saved_detection_config(path) is None:
        other = (
            "a segmentation"
            if saved_segmentation_config(path) is not None
            else "a classification"
            if saved_config(path, ModelConfig) is not None
            else None
        )
        if other is not None:
            raise MobileNetsError(
                f"{str(path)!r} is {other} checkpoint, not a detector's (those are written by "
                "`mobilenets detect train`)"
            )
    model = load_detector(path)
    info = read_checkpoint_info(path, model.num_classes, "mobilenets detect train")
    classes = info["classes"]
    category_ids = tuple(info.get("category_ids") or range(len(classes)))
    train_config = info.get("train_config")
    loss = (train_config or {}).get("loss", "softmax")
    return DetectionCheckpoint(
        model.eval(),
        classes,
        category_ids,
        info["preprocessing"],
        path,
        loss,
        train_config,
        info.get("metrics"),
    )


def checkpoint_data(
    checkpoint: DetectionCheckpoint, data: str, splits: tuple[str, ...] = ("train", "val")
) -> DetectionData:
    """The ``splits`` of ``data`` as the checkpoint reads them: its classes checked against the
    data's, and each split's transform its evaluation preprocessing (calibration reads training
    images that way too)."""
    found = load_detection_data(data, splits=splits)
    if tuple(found.class_names) != checkpoint.classes:
        raise MobileNetsError(
            f"{str(checkpoint.path)!r} detects {', '.join(checkpoint.classes[1:])}; "
            f"data={data!r} has {', '.join(found.class_names[1:])}"
        )
    for split in splits:
        getattr(found, split).transform = eval_transform(checkpoint.preprocessing)
    return found


# --- Detections ---------------------------------------------------------------------------------

SCORE_THRESHOLD = 0.01  # COCO evaluation keeps low-scoring detections: they only add recall


def class_scores(cls_logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-anchor class probabilities ``[..., C]``, column 0 background.

    Softmax for the softmax loss. The focal loss trains each object class as its own sigmoid
    and never the background logit, so there: sigmoid of each object class, and background
    ``max(0, 1 - sum)``.
    """
    if loss == "softmax":
        return torch.softmax(cls_logits.float(), dim=-1)
    objects = torch.sigmoid(cls_logits[..., 1:].float())
    background = (1 - objects.sum(dim=-1, keepdim=True)).clamp(min=0)
    return torch.cat([background, objects], dim=-1)


def score_logits(cls_logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Logits whose softmax (what [`postprocess`][mobilenets.core.boxes.postprocess]
    takes) gives [`class_scores`][mobilenets.tasks.detection.inference.class_scores]: the identity
    for softmax; for focal, the log of the scores (when their object classes sum to more than 1,
    softmax renormalizes them, which keeps their order)."""
    if loss == "softmax":
        return cls_logits
    return class_scores(cls_logits, loss).clamp(min=1e-12).log()


@torch.no_grad()
def detect_batch(
    model: SSDLite,
    images: torch.Tensor,
    sizes,
    *,
    loss: str = "softmax",
    score_threshold: float = SCORE_THRESHOLD,
    dtype=None,
    channels_last: bool = False,
) -> list[dict]:
    """Detections of one batch of model inputs, boxes in pixels of each image's ``(height,
    width)`` in ``sizes``."""
    device = next(model.parameters()).device
    images = to_device(images, device, channels_last)
    with autocast(device, dtype):
        out = model(images)
    return output_detections(
        out, model.anchors(), sizes, loss=loss, score_threshold=score_threshold
    )


def output_detections(
    out: dict[str, torch.Tensor],
    anchors: torch.Tensor,
    sizes,
    *,
    loss: str = "softmax",
    score_threshold: float = SCORE_THRESHOLD,
) -> list[dict]:
    """Detections of a detector's forward ``out`` (cls_logits and box_regression, from
    PyTorch or any runtime) on its default boxes ``anchors``, boxes in pixels of each image's
    ``(height, width)`` in ``sizes``."""
    logits = score_logits(out["cls_logits"].float(), loss)
    return postprocess(
        logits,
        out["box_regression"].float(),
        anchors,
        score_threshold=score_threshold,
        image_size=list(sizes),
    )


def predict(
    checkpoint: DetectionCheckpoint,
    path: str | os.PathLike,
    *,
    score_threshold: float = 0.3,
    device: str = "cpu",
):
    """The image at ``path`` (PIL, RGB) and its detections: pixel boxes, scores, labels."""
    if not 0 <= score_threshold < 1:
        raise MobileNetsError(f"score threshold must be in [0, 1), got {score_threshold!r}")
    image = open_image(path).convert("RGB")
    width, height = image.size
    empty = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)
        ),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    inputs, _ = eval_transform(checkpoint.preprocessing)(image, empty)
    model = checkpoint.model.to(pick_device(device))
    (found,) = detect_batch(
        model,
        inputs[None],
        [(height, width)],
        loss=checkpoint.loss,
        score_threshold=score_threshold,
    )
    return image, {key: value.cpu() for key, value in found.items()}


def draw_detections(image, detections: dict, classes: tuple[str, ...]) -> torch.Tensor:
    """The image as a uint8 ``[3, H, W]`` tensor with each box, its class name and score drawn
    (torchvision's draw_bounding_boxes), one colour per class."""
    pixels = pil_to_tensor(image)
    if len(detections["boxes"]) == 0:
        return pixels
    palette = ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white"]
    labels = detections["labels"].tolist()
    captions = [
        f"{classes[label]} {score:.2f}"
        for label, score in zip(labels, detections["scores"].tolist(), strict=True)
    ]
    width = max(1, round(max(image.size) / 160))
    return draw_bounding_boxes(
        pixels,
        detections["boxes"],
        captions,
        colors=[palette[label % len(palette)] for label in labels],
        width=width,
    )
