"""int8 classifiers from a checkpoint: calibrated on its training split, scored beside the fp32
model on its validation split. [`quantize`][mobilenets.tasks.classification.quantize.quantize]
writes an ONNX file (onnxruntime static QDQ, see
[`mobilenets.deploy.quantize`][mobilenets.deploy.quantize]; QAT with
[`mobilenets.deploy.qat`][mobilenets.deploy.qat]) or an ExecuTorch program (PT2E with the XNNPACK
quantizer, [`mobilenets.deploy.pt2e`][mobilenets.deploy.pt2e]), by the path's suffix.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mobilenets.core.errors import MobileNetsError
from mobilenets.data.classification import load_splits
from mobilenets.data.transforms import eval_transform, train_transform
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import quantize as int8_onnx
from mobilenets.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME, format_shape, onnx_session
from mobilenets.deploy.pipeline import ExportReport
from mobilenets.deploy.qat import QatConfig, fine_tune
from mobilenets.deploy.quantize import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CALIBRATION_IMAGES,
    QuantizeReport,
    calibration_batches,
    calibration_indices,
)
from mobilenets.engine.checkpoint import Checkpoint, check_classes
from mobilenets.engine.device import cpu_info
from mobilenets.engine.evaluate import evaluate
from mobilenets.engine.loop import ordered_loader


def quantize(
    checkpoint: Checkpoint,
    data: str,
    path: str | os.PathLike,
    *,
    calibration_images: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    qat: QatConfig | None = None,
    progress: bool = False,
    **options,
) -> QuantizeResult | PteInt8Result:
    """``checkpoint`` as an int8 ``.onnx`` file
    ([`quantize_onnx`][mobilenets.tasks.classification.quantize.quantize_onnx]: ``method`` and
    ``activation_type`` are its options; ``calibration_images`` default 512) or ``.pte``
    program ([`quantize_pte`][mobilenets.tasks.classification.quantize.quantize_pte]:
    ``resolution`` and ``metadata``; default 512 or the whole split if smaller), by ``path``'s
    suffix, calibrated on training images of ``data``; with ``qat``, quantization-aware
    training first. Both models are then scored on the validation split."""
    if Path(path).suffix == mobile.SUFFIX:
        run = quantize_pte
    else:
        run = quantize_onnx
        if calibration_images is None:
            calibration_images = DEFAULT_CALIBRATION_IMAGES
    return run(
        checkpoint,
        data,
        path,
        calibration_images=calibration_images,
        batch_size=batch_size,
        qat=qat,
        progress=progress,
        **options,
    )


@dataclass(frozen=True)
class QuantizeResult:
    """What ``mobilenets quantize`` reports: the file and both models' accuracy on one split.
    ``reference_top1`` is the same int8 file run with onnxruntime's graph optimizations off,
    which evaluates its QuantizeLinear/DequantizeLinear pairs in float: the file's arithmetic
    with no int8 kernel involved, so any CPU's int8 kernels should give the same top-1."""

    report: QuantizeReport
    fp32_top1: float
    int8_top1: float
    int8_top5: float
    count: int
    reference_top1: float
    cpu: str  # the CPU the int8 file was run on (engine.device.CpuInfo.describe)


def evaluate_onnx(
    path: str | os.PathLike, loader, *, progress: bool = False, optimize: bool = True
) -> tuple[float, float, int]:
    """Top-1 and top-5 (fractions) and the image count of an ONNX classifier over ``loader``
    (batches of (images, labels)), run by onnxruntime on the CPU; ``optimize=False`` runs an
    int8 file's QDQ arithmetic in float (see
    [`onnx_session`][mobilenets.deploy.onnx_export.onnx_session])."""
    session = onnx_session(path, optimize=optimize)
    top1 = top5 = count = 0
    desc = "int8 eval" if optimize else "int8 reference"
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress):
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy().astype(np.float32)})
        ranked = torch.from_numpy(logits).topk(min(5, logits.shape[1]), 1).indices
        top1 += int((ranked[:, 0] == labels).sum())
        top5 += int((ranked == labels[:, None]).any(1).sum())
        count += len(labels)
    if count == 0:
        raise MobileNetsError("evaluation data is empty")
    return top1 / count, top5 / count, count


def quantize_onnx(
    checkpoint: Checkpoint,
    data: str,
    out_path: str | os.PathLike,
    *,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    method: str = "minmax",
    activation_type: str = "u8",
    batch_size: int = DEFAULT_BATCH_SIZE,
    qat: QatConfig | None = None,
    progress: bool = False,
) -> QuantizeResult:
    """Quantize ``checkpoint`` with ``calibration_images`` training images of ``data``, then
    measure the fp32 checkpoint (PyTorch) and the int8 file (onnxruntime) on the validation
    split, both with the checkpoint's evaluation preprocessing. The int8 file is scored twice:
    by this CPU's int8 kernels, and with its QDQ arithmetic in float (``reference_top1``), which
    any CPU's kernels should match.

    With ``qat``, the model is first fine-tuned through simulated int8
    ([`mobilenets.deploy.qat`][mobilenets.deploy.qat]) on the training split with the basic
    augmentation (crop and flip), and activation ranges are then calibrated with minmax, the range
    the fine-tuning simulated.
    """
    int8_onnx.check_options(out_path, method, activation_type)
    if qat is not None and method != "minmax":
        raise MobileNetsError(
            f"quantization-aware training simulates minmax ranges; got calibration {method!r}"
        )
    preprocessing = checkpoint.preprocessing
    splits = load_splits(data, preprocessing.resolution)
    check_classes(checkpoint, splits.classes, data)
    indices = calibration_indices(len(splits.train), calibration_images)
    transform = eval_transform(preprocessing)
    train_set = copy.copy(splits.train)  # the same images, with the training augmentation
    splits.train.transform = splits.val.transform = transform
    quantized, recorded = checkpoint, None
    if qat is not None:
        train_set.transform = train_transform(preprocessing, "basic", 0.0, splits.small)
        tuned = fine_tune(
            checkpoint.model.cpu(),
            train_set,
            qat,
            calibration_batches(splits.train, indices, batch_size),
            progress=progress,
        )
        quantized = dataclasses.replace(checkpoint, model=tuned)
        recorded = {"method": "qat", "qat": dataclasses.asdict(qat)}
    report = int8_onnx.quantize_ptq(
        quantized,
        calibration_batches(splits.train, indices, batch_size),
        out_path,
        method=method,
        activation_type=activation_type,
        batch_size=batch_size,
        recorded=recorded,
    )
    loader = ordered_loader(splits.val, batch_size)
    fp32 = evaluate(checkpoint.model.cpu(), loader, len(checkpoint.classes), progress=progress)
    int8_top1, int8_top5, count = evaluate_onnx(out_path, loader, progress=progress)
    reference_top1, _, _ = evaluate_onnx(out_path, loader, progress=progress, optimize=False)
    return QuantizeResult(
        report, fp32.top1, int8_top1, int8_top5, count, reference_top1, cpu_info().describe()
    )


@dataclass(frozen=True)
class PteInt8Result:
    """What ``mobilenets export --format pte --int8`` reports: the file and both models' top-1."""

    report: ExportReport
    fp32_top1: float
    int8_top1: float
    count: int  # validation images


def quantize_pte(
    checkpoint: Checkpoint,
    data: str,
    path: str | os.PathLike,
    *,
    resolution: int | None = None,
    calibration_images: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    metadata: dict[str, str] | None = None,
    qat: QatConfig | None = None,
    progress: bool = False,
) -> PteInt8Result:
    """``checkpoint`` as an int8 ExecuTorch program (batch 1) calibrated on
    ``calibration_images`` training images of ``data`` (the same seeded sample as ``mobilenets
    quantize`` reads, through the checkpoint's evaluation preprocessing; default 512 or the whole
    split if smaller), then the fp32 model (PyTorch) and the program (ExecuTorch's runtime)
    measured on the validation split.

    With ``qat``, PT2E quantization-aware training first fine-tunes a copy on the training split
    with the basic augmentation (crop and flip), as ``mobilenets quantize --method qat`` does for
    ONNX; the calibration images then start the activation ranges."""
    mobile.check_pte_options(path)
    preprocessing = checkpoint.preprocessing
    if resolution is not None:
        preprocessing = preprocessing.at(resolution)
    splits = load_splits(data, preprocessing.resolution)
    check_classes(checkpoint, splits.classes, data)
    if calibration_images is None:
        calibration_images = min(DEFAULT_CALIBRATION_IMAGES, len(splits.train))
    indices = calibration_indices(len(splits.train), calibration_images)
    train_set = None
    if qat is not None:
        train_set = copy.copy(splits.train)  # the same images, with the training augmentation
        train_set.transform = train_transform(preprocessing, "basic", 0.0, splits.small)
    splits.train.transform = splits.val.transform = eval_transform(preprocessing)
    report = mobile.export_executorch(
        checkpoint.model,
        path,
        resolution=preprocessing.resolution,
        metadata=metadata,
        int8=True,
        calibration=calibration_batches(splits.train, indices, batch_size),
        qat=qat,
        train_dataset=train_set,
        progress=progress,
    )
    loader = ordered_loader(splits.val, batch_size)
    classes = len(checkpoint.classes)
    fp32 = evaluate(checkpoint.model.cpu(), loader, classes, progress=progress)
    int8 = evaluate(PteClassifier(path), loader, classes, progress=progress)
    return PteInt8Result(report, fp32.top1, int8.top1, int8.count)


class PteClassifier(nn.Module):
    """A .pte classifier as a module, for ``engine.evaluate``: a batch of any size runs through
    the program's fixed batch, the last part padded with zeros."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        program = mobile.load_pte(path)
        self.shape = mobile.pte_input_shape(program)
        self.method = mobile.load_method(program)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.shape[1:]:
            raise MobileNetsError(
                f"the program takes images {format_shape(self.shape[1:])}, got "
                f"{format_shape(tuple(images.shape[1:]))}"
            )
        batch, outputs = self.shape[0], []
        for chunk in images.split(batch):
            padding = chunk.new_zeros((batch - len(chunk), *self.shape[1:]))
            outputs.append(mobile.run_pte(self.method, torch.cat([chunk, padding]))[: len(chunk)])
        return torch.cat(outputs)
