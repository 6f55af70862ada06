"""int8 segmenters and what int8 costs them in mIoU: a checkpoint calibrated on its training
images, exported as an int8 ONNX file or ExecuTorch program, and scored beside the fp32 model on
the validation split.

**Images of any size through a file of one input size.** An exported segmenter takes one
``[1, 3, R, R]`` input (see
[`mobilenets.tasks.segmentation.export`][mobilenets.tasks.segmentation.export]). Each image is
fed to it as DeepLab evaluates at a fixed crop (TF DeepLab's ``eval_crop_size``, 513 for PASCAL
VOC, whose images are at most 500 px): normalized as in evaluation, padded at the bottom and
right with zeros (the mean pixel after normalization, as DeepLab and
[`collate_segmentation`][mobilenets.data.segmentation.collate_segmentation] pad) to ``R x R``,
and the top-left ``H x W`` of the output is its prediction. An image larger than ``R`` on a side
is first shrunk (bilinear, aspect kept) to fit, and its scores are enlarged back to its size
([`fit_to_square`][mobilenets.tasks.segmentation.quantize.fit_to_square]). Calibration images go
through the same fitting, and so does the fp32 PyTorch model when it is scored beside the file:
the mIoU drop is that of quantization alone, at the file's input size. At an ``R`` no smaller
than the images, the fp32 scores are those of ``segment eval`` but for the padding the model
sees near the bottom and right edges.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.data.segmentation import load_segmentation_data
from mobilenets.data.segmentation_transforms import eval_transform
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import onnx_export
from mobilenets.deploy.pipeline import ExportReport
from mobilenets.deploy.quantize import calibration_indices
from mobilenets.tasks.segmentation.evaluate import evaluate_segmenter
from mobilenets.tasks.segmentation.export import check_export_options, export
from mobilenets.tasks.segmentation.inference import (
    SegmentationCheckpoint,
    check_data_classes,
    load_segmentation_checkpoint,
)

# Calibration images when none are asked for (or the whole training split, if smaller). A
# segmentation image gives each activation tens of thousands of positions, so a hundred images
# already set the ranges; onnxruntime's entropy and percentile calibration keep every activation
# of every image in memory (about 12 MB an image for V2 0.35 at 128 px, sixteen times that at 513).
DEFAULT_CALIBRATION_IMAGES = 100
CALIBRATION_BATCH_SIZE = 8  # images per PT2E calibration batch; onnxruntime takes them one by one


@dataclass(frozen=True)
class SegmentationInt8Result:
    """What ``segment export --int8`` reports: the file, and the mIoU and pixel accuracy
    (fractions) of the fp32 PyTorch model and of the int8 file (onnxruntime or ExecuTorch's
    runtime) on the validation split, both fed as the file is (see the module's docstring)."""

    report: ExportReport
    data: str
    fp32_miou: float
    int8_miou: float
    fp32_pixel_accuracy: float
    int8_pixel_accuracy: float
    images: int  # validation images scored


def fit_to_square(image: torch.Tensor, side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A normalized image ``[C, H, W]`` as the ``[1, C, side, side]`` input of a fixed-size
    file: shrunk (bilinear, antialiased, aspect kept) if a side is above ``side``, then padded
    with zeros at the bottom and right; with the ``(height, width)`` it covers there."""
    height, width = image.shape[-2:]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = image[None]
    if size != (height, width):
        image = F.interpolate(
            image, size=size, mode="bilinear", align_corners=False, antialias=True
        )
    return F.pad(image, (0, side - size[1], 0, side - size[0])), size


class SquareInputSegmenter(nn.Module):
    """A segmenter that takes only ``[1, C, side, side]`` inputs (``run``: a file's runtime or a
    PyTorch model; its output is logits ``[1, K, side, side]`` or a class map ``[1, side,
    side]``), as a module that maps images ``[N, C, H, W]`` of any size to class scores ``[N, K,
    H, W]`` through [`fit_to_square`][mobilenets.tasks.segmentation.quantize.fit_to_square], for
    [`evaluate_segmenter`][mobilenets.tasks.segmentation.evaluate.evaluate_segmenter]. A class
    map becomes one-hot scores (enlarged by nearest neighbour)."""

    def __init__(
        self, run: Callable[[torch.Tensor], torch.Tensor], side: int, num_classes: int
    ) -> None:
        super().__init__()
        self.run, self.side, self.num_classes = run, side, num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._scores(image) for image in images])

    def _scores(self, image: torch.Tensor) -> torch.Tensor:
        size = tuple(image.shape[-2:])
        canvas, (height, width) = fit_to_square(image, self.side)
        output = torch.as_tensor(self.run(canvas))
        side = self.side
        if output.ndim not in (3, 4) or tuple(output.shape[-2:]) != (side, side):
            raise MobileNetsError(
                f"a segmenter of [1, C, {side}, {side}] inputs returns logits [1, K, {side}, "
                f"{side}] or a class map [1, {side}, {side}], this one {list(output.shape)}"
            )
        if output.ndim == 3:  # a class map
            labels = output[:, None, :height, :width].float()
            if (height, width) != size:
                labels = F.interpolate(labels, size=size, mode="nearest")
            one_hot = F.one_hot(labels[:, 0].long(), self.num_classes)
            return one_hot.permute(0, 3, 1, 2).float()
        logits = output[:, :, :height, :width].float()
        if (height, width) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


def file_segmenter(path: str | os.PathLike, num_classes: int) -> SquareInputSegmenter:
    """An exported segmenter file, ``.onnx`` (run by onnxruntime on the CPU) or ``.pte``
    (ExecuTorch's runtime), logits or class map, fp32 or int8, as a
    [`SquareInputSegmenter`][mobilenets.tasks.segmentation.quantize.SquareInputSegmenter]."""
    path = Path(path)
    if path.suffix == ".onnx":
        session = onnx_export.onnx_session(path)
        (graph_input,) = session.get_inputs()
        shape = tuple(graph_input.shape)

        def run(x: torch.Tensor) -> torch.Tensor:
            (output,) = session.run(None, {graph_input.name: x.numpy()})
            return torch.from_numpy(output)

    elif path.suffix == mobile.SUFFIX:
        program = mobile.load_pte(path)
        shape = mobile.pte_input_shape(program)
        method = mobile.load_method(program)

        def run(x: torch.Tensor) -> torch.Tensor:
            return mobile.run_pte(method, x)

    else:
        raise MobileNetsError(f"a segmenter file is .onnx or .pte, got {str(path)!r}")
    if len(shape) != 4 or shape[0] != 1 or shape[2] != shape[3] or not isinstance(shape[2], int):
        raise MobileNetsError(
            f"{str(path)!r} takes input {list(shape)}; a segmenter export takes [1, C, R, R]"
        )
    return SquareInputSegmenter(run, shape[2], num_classes)


def calibration_batches(
    dataset, count: int, side: int, batch_size: int = CALIBRATION_BATCH_SIZE
) -> Iterator[torch.Tensor]:
    """``count`` images of ``dataset`` (its transform the evaluation one), the seeded sample
    that ``mobilenets quantize`` draws, each fitted to ``side``
    ([`fit_to_square`][mobilenets.tasks.segmentation.quantize.fit_to_square]), in batches."""
    indices = calibration_indices(len(dataset), count)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        yield torch.cat([fit_to_square(dataset[index][0], side)[0] for index in chunk])


def quantize(
    checkpoint: str | os.PathLike | SegmentationCheckpoint,
    data: str,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    resolution: int | None = None,
    argmax: bool = False,
    calibration_images: int | None = None,
    calibrate: str | None = None,
    opset: int | None = None,
    progress: bool = False,
) -> SegmentationInt8Result:
    """Export ``checkpoint`` as an int8 ``.onnx`` file or ``.pte`` program
    ([`export`][mobilenets.tasks.segmentation.export.export] with
    ``int8=True``), calibrated on ``calibration_images`` training images of ``data`` (default
    100, or the whole split if smaller), then score the fp32 model (PyTorch) and the file on the
    validation split of ``data`` (see the module's docstring for how images meet the file's one
    input size). ``data``'s classes must be the checkpoint's; that and the options are checked
    before anything is written.

    ``format``, ``resolution``, ``argmax``, ``calibrate`` and ``opset`` are export's.
    """
    check_export_options(path, format, opset)
    if not isinstance(checkpoint, SegmentationCheckpoint):
        checkpoint = load_segmentation_checkpoint(checkpoint)
    splits = load_segmentation_data(data)
    for dataset in (splits.train, splits.val):
        check_data_classes(checkpoint, dataset, data)
        dataset.transform = eval_transform(checkpoint.preprocessing)
    if calibration_images is None:
        calibration_images = min(DEFAULT_CALIBRATION_IMAGES, len(splits.train))
    calibration_indices(len(splits.train), calibration_images)  # a bad count, before any export
    model = checkpoint.model.to("cpu", torch.float32).eval()
    side = model.resolution if resolution is None else resolution
    report = export(
        checkpoint,
        path,
        format=format,
        resolution=side,
        argmax=argmax,
        opset=opset,
        int8=True,
        calibration=calibration_batches(splits.train, calibration_images, side),
        calibrate=calibrate,
    )
    classes = len(checkpoint.classes)
    fp32 = evaluate_segmenter(
        SquareInputSegmenter(model, side, classes), splits.val, batch_size=1, progress=progress
    )
    int8 = evaluate_segmenter(
        file_segmenter(path, classes), splits.val, batch_size=1, progress=progress
    )
    return SegmentationInt8Result(
        report=report,
        data=data,
        fp32_miou=fp32["mIoU"],
        int8_miou=int8["mIoU"],
        fp32_pixel_accuracy=fp32["pixel_accuracy"],
        int8_pixel_accuracy=int8["pixel_accuracy"],
        images=len(splits.val),
    )
