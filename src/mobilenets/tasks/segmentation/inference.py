"""Using a segmenter checkpoint: rebuild it from the file alone (at its own output stride or
another one), segment an image, with test-time augmentation or not, and draw the result.

A checkpoint a run writes (``best.safetensors``, ``last.safetensors``) records the segmenter's
config, its class names and the input normalization; a run folder stands for its
``best.safetensors``. Masks are written as palette PNGs (mode ``"P"``): each pixel's value is its
class index, shown in the PASCAL VOC colours by any image viewer, and read back as class indices
by [`mobilenets.data.segmentation.read_mask`][mobilenets.data.segmentation.read_mask].

Test-time augmentation follows TF DeepLab's evaluation (``eval_scales``,
``add_flipped_images``): ``"flip"`` averages the class probabilities of an image and its mirror;
``"multiscale"`` averages them over the six scales of MobileNetV2 paper Table 7's "MF" row
(0.5 to 1.75), each scale with its mirror, after resizing every output back to the input size.
The model maps images ``[N, 3, H, W]`` to logits ``[N, C, H, W]`` at its input size.
A checkpoint's scores on a dataset are
[`evaluate`][mobilenets.tasks.segmentation.evaluate.evaluate]'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mobilenets.core.detection_spec import DetectionConfig
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import atomic_path
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.segmentation_cost import MULTISCALE, scaled_size  # Table 7's MF
from mobilenets.core.segmentation_spec import SegmentationConfig
from mobilenets.core.segmenter import Segmenter, build_segmenter, load_segmenter
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import saved_config
from mobilenets.data.common import open_image
from mobilenets.data.segmentation import IGNORE_INDEX
from mobilenets.data.segmentation_transforms import eval_transform
from mobilenets.engine.checkpoint import checkpoint_path, read_checkpoint_info
from mobilenets.engine.device import autocast, pick_device

WRITER = "mobilenets segment train"
# The checkpoints of the other tasks, named in the error for one given here: (the config it
# records, the task, the commands that take it).
OTHER_TASKS = (
    (DetectionConfig, "detection", "`mobilenets detect eval`, `predict` and `export`"),
    (ModelConfig, "classification", "`mobilenets eval`, `predict` and `export`"),
)
OVERLAY_OPACITY = 0.5  # weight of the class colour over the image

# --- Checkpoints --------------------------------------------------------------------------------


@dataclass
class SegmentationCheckpoint:
    """A trained segmenter with what reading its inputs and naming its outputs needs."""

    model: Segmenter
    classes: tuple[str, ...]  # the name of each class index of the masks
    preprocessing: Preprocessing  # the input normalization (resolution: the training crop)
    path: Path
    train_config: dict | None = None
    metrics: dict | None = None  # the metrics row of the epoch the weights are from


def load_segmentation_checkpoint(path: str | os.PathLike) -> SegmentationCheckpoint:
    """A segmenter checkpoint (``best``/``last.safetensors`` of a run, or the run folder: its
    best), rebuilt from the file alone, in eval mode. A classifier's or a detector's checkpoint
    is refused with the command that takes it."""
    path = checkpoint_path(path)
    if saved_config(path, SegmentationConfig) is None:
        for config_type, task, command in OTHER_TASKS:
            config = saved_config(path, config_type)
            if config is not None:
                raise MobileNetsError(
                    f"{str(path)!r} is a {task} checkpoint ({config.name}), not a segmentation "
                    f"one ({command} take it)"
                )
    model = load_segmenter(path)
    info = read_checkpoint_info(path, model.num_classes, WRITER)
    return SegmentationCheckpoint(
        model.eval(),
        info["classes"],
        info["preprocessing"],
        path,
        info.get("train_config"),
        info.get("metrics"),
    )


def with_output_stride(model: Segmenter, output_stride: int | None) -> Segmenter:
    """``model`` at another output stride, with the same weights: atrous convolution changes no
    tensor, only the strides and dilations (DeepLabv3 section 3.3 trains at 16 and evaluates at
    8). The ASPP rates follow the output stride unless the config fixed them. ``None`` or the
    model's own output stride returns ``model`` itself."""
    if output_stride is None or output_stride == model.config.output_stride:
        return model
    rebuilt = build_segmenter(model.config.replace(output_stride=output_stride))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    parameter = next(model.parameters())
    return rebuilt.to(parameter.device).train(model.training)


def check_data_classes(checkpoint: SegmentationCheckpoint, dataset, data: str) -> None:
    """The dataset's classes must be the checkpoint's, in the same order; ``data`` is its spec,
    named in the error."""
    if tuple(dataset.class_names) != checkpoint.classes:
        raise MobileNetsError(
            f"{str(checkpoint.path)!r} segments {len(checkpoint.classes)} classes "
            f"({_shown(checkpoint.classes)}); data={data!r} has {len(dataset.class_names)} "
            f"({_shown(dataset.class_names)})"
        )


def _shown(names) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


# --- Segmenting images --------------------------------------------------------------------------


TTA_MODES = ("none", "flip", "multiscale")


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
def predict_mask(
    model: torch.nn.Module,
    image: Image.Image,
    preprocessing: Preprocessing,
    *,
    tta: str = "none",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The class index of every pixel of a PIL image, int64 ``[H, W]`` on the CPU: the image at
    its own size, normalized as ``preprocessing`` says, through
    [`segment_logits`][mobilenets.tasks.segmentation.inference.segment_logits] with ``tta``.
    ``device`` defaults to the model's; ``dtype`` runs it under autocast. The model's training
    mode is restored afterwards."""
    check_tta(tta)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    blank = Image.new("L", image.size)  # the evaluation transform takes a mask too
    inputs, _ = eval_transform(preprocessing)(image.convert("RGB"), blank)
    was_training = model.training
    model.eval()
    try:
        with autocast(device, dtype):
            scores = segment_logits(model, inputs[None].to(device), tta)
    finally:
        model.train(was_training)
    return scores.argmax(1)[0].cpu()


def predict(
    checkpoint: SegmentationCheckpoint,
    image: str | os.PathLike | Image.Image,
    *,
    tta: str = "none",
    device: str = "cpu",
) -> torch.Tensor:
    """The class index of every pixel of an image file (or a PIL image), int64 ``[H, W]``, at
    the image's own size."""
    if not isinstance(image, Image.Image):
        image = open_image(image)
    model = checkpoint.model.to(pick_device(device))
    return predict_mask(model, image, checkpoint.preprocessing, tta=tta)


def class_shares(mask: torch.Tensor, classes: tuple[str, ...]) -> dict[str, float]:
    """The fraction of the pixels of ``mask`` that each class present covers, largest first."""
    counts = torch.bincount(mask.flatten().to(torch.int64), minlength=len(classes))
    total = max(int(counts.sum()), 1)
    shares = {
        classes[index] if index < len(classes) else str(index): count / total
        for index, count in enumerate(counts.tolist())
        if count
    }
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


# --- Drawing ------------------------------------------------------------------------------------


def palette() -> list[int]:
    """The PASCAL VOC colour map as the 768 bytes of a PNG palette (index i's RGB at
    ``3 * i``): the bits of the class index spread over the high bits of red, green and blue
    (the VOC development kit's ``labelcolormap``), so nearby classes get distinct colours.
    Index 0 is black and 255 (VOC's "ignore" border) is (224, 224, 192)."""
    colours = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= (code & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        colours += [red, green, blue]
    return colours


def mask_image(mask: torch.Tensor | np.ndarray) -> Image.Image:
    """A class-index mask ``[H, W]`` as a palette PNG image (mode ``"P"``, VOC colours): its
    pixel values are the class indices."""
    labels = np.asarray(mask)
    if labels.ndim != 2:
        raise MobileNetsError(f"a mask is [H, W], got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > IGNORE_INDEX):
        raise MobileNetsError(
            f"a mask holds class indices 0..{IGNORE_INDEX}, got values {labels.min()}.."
            f"{labels.max()}"
        )
    image = Image.fromarray(labels.astype(np.uint8))  # mode "L"
    image.putpalette(palette())  # "L" becomes "P" with the same values
    return image


def overlay(
    image: Image.Image, mask: torch.Tensor | np.ndarray, opacity: float = OVERLAY_OPACITY
) -> Image.Image:
    """The image with each pixel blended with its class colour (``opacity`` of the colour,
    VOC colours, ignored pixels in VOC's border colour); an RGB image of the image's size."""
    if not 0 <= opacity <= 1:
        raise MobileNetsError(f"opacity must be in [0, 1], got {opacity!r}")
    colours = mask_image(mask).convert("RGB")
    if colours.size != image.size:
        raise MobileNetsError(
            f"the mask is {colours.size[0]}x{colours.size[1]}, the image "
            f"{image.size[0]}x{image.size[1]}"
        )
    return Image.blend(image.convert("RGB"), colours, opacity)


SEPARATOR = 4  # white pixels between the panels of a comparison


def comparison(
    image: Image.Image, truth: torch.Tensor | np.ndarray, prediction: torch.Tensor | np.ndarray
) -> Image.Image:
    """The ground truth beside the prediction, each as an
    [`overlay`][mobilenets.tasks.segmentation.inference.overlay] of the image, with a white
    gap between them."""
    left, right = overlay(image, truth), overlay(image, prediction)
    width, height = left.size
    canvas = Image.new("RGB", (2 * width + SEPARATOR, height), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (width + SEPARATOR, 0))
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PIL image as PNG atomically; a path that cannot be written is the caller's
    error, named."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            image.save(temporary, format="PNG")
    except OSError as error:
        raise MobileNetsError(f"cannot write {str(path)!r}: {error}") from error
    return path


def save_prediction(
    image: Image.Image, mask: torch.Tensor, folder: str | os.PathLike, name: str
) -> tuple[Path, Path]:
    """Write ``folder/NAME_mask.png`` (the class indices, a palette PNG) and
    ``folder/NAME_overlay.png`` (the image blended with the class colours), each atomically;
    returns their paths."""
    folder = Path(folder)
    mask_path = save_png(mask_image(mask), folder / f"{name}_mask.png")
    overlay_path = save_png(overlay(image, mask), folder / f"{name}_overlay.png")
    return mask_path, overlay_path
