"""The files bench exports from a model to measure: fp32 ONNX (a classifier by
[`export_onnx`][mobilenets.deploy.onnx_export.export_onnx], a segmenter or detector with its
dense outputs by [`write_onnx`][mobilenets.deploy.onnx_export.write_onnx]), int8 ONNX (by
[`quantize_file`][mobilenets.deploy.quantize.quantize_file] from the fp32 file), and a .pte
program per batch, fp32 or int8 (a classifier by
[`export_executorch`][mobilenets.deploy.executorch_export.export_executorch], a segmenter or
detector by [`write_pte`][mobilenets.deploy.executorch_export.write_pte], int8 by
[`quantize_pt2e`][mobilenets.deploy.pt2e.quantize_pt2e]), with their int8 calibration.

Every file is written by the export pipeline's writers (an
[`ExportGraph`][mobilenets.deploy.pipeline.ExportGraph] and a check: atomic, kept only when the
check passes); every call into them from bench is in this module."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import MobileNet
from mobilenets.core.segmenter import Segmenter
from mobilenets.deploy.bench.report import SYNTHETIC_NOTE
from mobilenets.deploy.bench.runtimes import DETECTOR_OUTPUTS, Outputs
from mobilenets.deploy.bench.scoring import Validation
from mobilenets.deploy.bench.sources import Target, in_chans
from mobilenets.deploy.executorch_export import export_executorch, verify_pte, write_pte
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    TOLERANCE,
    ExportSource,
    export_onnx,
    format_shape,
    onnx_session,
    write_onnx,
)
from mobilenets.deploy.pipeline import Agreement, ExportGraph, ExportReport
from mobilenets.deploy.pt2e import QuantizedReference, quantize_pt2e
from mobilenets.deploy.quantize import quantize_file

CALIBRATION_IMAGES = 32  # random normal images for int8: enough for ranges, speed is all we use
ONNX_CALIBRATION_BATCH = 16  # images per batch of the int8 ONNX calibration
PTE_CALIBRATION_BATCH = 8  # images per batch of the int8 .pte (PT2E) calibration
PACKED_OUTPUT = "outputs"  # a dense .pte program's one output: Packed's

# batches of calibration images: calibration(batch) for one int8 export
Calibration = Callable[[int], object]


@dataclass(frozen=True)
class Int8Calibration:
    """How a model's int8 files are calibrated, and the note their records carry."""

    images: Calibration
    note: str


def model_target(
    source: ExportSource,
    folder: Path,
    int8: bool,
    calibration_images: int,
    pte_batches: tuple[int, ...] = (),
    validation: Validation | None = None,
) -> Target:
    """A model to export to fp32 ONNX (and int8, and a .pte per batch in ``pte_batches``) in
    ``folder``."""
    model, resolution = source.model, source.resolution
    config = model.config.replace(resolution=resolution)
    channels = in_chans(config)
    stem = folder / f"{len(list(folder.iterdir()))}-{config.name}"  # two inputs may share a name
    calibration = int8_calibration((channels, resolution), calibration_images, validation)
    onnx_files = _onnx_files(source, stem, calibration if int8 else None)
    pte_files = [
        file
        for batch in pte_batches
        for file in _pte_files(source, stem, batch, calibration if int8 else None)
    ]
    return Target(
        config.name,
        model,
        resolution,
        channels,
        onnx_files,
        source.weights,
        pte_files=pte_files,
        validation=validation,
    )


def int8_calibration(
    image: tuple[int, int], count: int, validation: Validation | None
) -> Int8Calibration:
    """``count`` training images when a task's ``validation`` gives them, else synthetic ones
    of ``image`` = (channels, side)."""
    if validation is None:
        return Int8Calibration(partial(synthetic_images, image, count), SYNTHETIC_NOTE)
    return Int8Calibration(
        partial(validation.calibration, count), f"calibrated on {count} training images"
    )


def synthetic_images(image: tuple[int, int], count: int, batch: int) -> list[torch.Tensor]:
    """``count`` seeded standard-normal images (what a normalized image roughly looks like) of
    ``image`` = (channels, side), in batches of at most ``batch``: calibration that gives int8
    its real speed and a meaningless accuracy."""
    channels, side = image
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, channels, side, side, generator=generator)
    return list(images.split(batch))


def _onnx_files(source: ExportSource, stem: Path, calibration: Int8Calibration | None):
    """The fp32 ONNX file, and the int8 one with a ``calibration``: (path, precision, source,
    note) each."""
    model, resolution = source.model, source.resolution
    fp32 = stem.with_name(f"{stem.name}.fp32.onnx")
    if isinstance(model, (Segmenter, SSDLite)):
        export_dense_onnx(model, fp32, resolution)
    else:
        export_onnx(model, fp32, resolution=resolution, dynamic_batch=True, check_sizes=(1,))
    files = [(fp32, "fp32", f"export_onnx of {source.weights}", "")]
    if calibration is not None:
        path = stem.with_name(f"{stem.name}.int8.onnx")
        quantize_file(fp32, calibration.images(ONNX_CALIBRATION_BATCH), path)
        files.append((path, "int8", f"quantize_file of {source.weights}", calibration.note))
    return files


def _pte_files(source: ExportSource, stem: Path, batch: int, calibration: Int8Calibration | None):
    """The fp32 .pte program at ``batch``, and the int8 one with a ``calibration``: (path,
    batch, precision, source, note) each."""
    files = []
    for precision in ("fp32", "int8") if calibration is not None else ("fp32",):
        path = stem.with_name(f"{stem.name}.batch{batch}.{precision}.pte")
        images = calibration.images if precision == "int8" else None
        export_pte(source.model, path, source.resolution, batch, images)
        note = calibration.note if precision == "int8" else ""
        files.append((path, batch, precision, f"ExecuTorch of {source.weights}", note))
    return files


def export_pte(
    model, path: Path, resolution: int, batch: int, calibration: Calibration | None = None
) -> ExportReport:
    """``model`` as an ExecuTorch program at ``batch`` (int8 by PT2E when ``calibration`` makes
    batches): a classifier by export_executorch; a segmenter's logits, or a detector's
    cls_logits and box_regression concatenated on the last axis (one output, the same
    computation), by [`write_pte`][mobilenets.deploy.executorch_export.write_pte], checked
    against PyTorch (int8: against its quantized reference) before it is kept."""
    int8 = calibration is not None
    if isinstance(model, MobileNet):
        images = calibration(PTE_CALIBRATION_BATCH) if int8 else None
        return export_executorch(
            model, path, resolution=resolution, batch=batch, int8=int8, calibration=images
        )
    config = model.config.replace(resolution=resolution)
    shape = (batch, in_chans(config), resolution, resolution)
    reference = Packed(_nchw(model))
    folded, bn_folded = fold_batch_norm(copy.deepcopy(reference.model))
    module = Packed(folded).eval()
    tolerance, x, int8_report = None, None, None
    if int8:
        module, x, int8_report = quantize_pt2e(module, calibration(PTE_CALIBRATION_BATCH), shape)
        reference, tolerance = QuantizedReference(module), int8_report.tolerance
    graph = ExportGraph(
        module,
        (torch.zeros(shape),),
        (INPUT_NAME,),
        (PACKED_OUTPUT,),
        {"model_config": json.dumps(config.to_dict())},
        config.name,
        bn_folded,
    )

    def check(written: Path) -> Agreement:
        return Agreement(verify_pte(written, reference, shape, x=x, tolerance=tolerance))

    return write_pte(graph, path, check, int8=int8_report)


def _nchw(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 CPU copy of ``model`` in eval mode with NCHW weights, whatever the caller's
    memory format: the XNNPACK lowering expects them."""
    copied = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    return copied.eval()


class Packed(torch.nn.Module):
    """A segmenter's logits, or a detector's two outputs as one tensor (N, A, C + 4): a .pte
    method here is checked and run with one output."""

    def __init__(self, model: Segmenter | SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        if isinstance(out, dict):
            return torch.cat([out[name] for name in DETECTOR_OUTPUTS], dim=-1)
        return out


def export_dense_onnx(model: Segmenter | SSDLite, path: Path, resolution: int) -> ExportReport:
    """A segmenter or detector as export_onnx writes a classifier, by
    [`write_onnx`][mobilenets.deploy.onnx_export.write_onnx]: BN folded, a dynamic batch (traced
    at batch 2, since torch.export specialises a size-1 axis), the model config in the metadata,
    every output checked against PyTorch at batch 1 before the file is kept. Its outputs are the
    forward's: a segmenter's ``logits``, a detector's raw ``cls_logits`` and ``box_regression``
    (the boxes are not decoded; mobilenets.tasks.detection.export writes a detector for use).
    The input side is fixed, as a detector's default boxes are."""
    config = model.config.replace(resolution=resolution)
    channels = in_chans(config)
    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    folded, bn_folded = fold_batch_norm(reference)
    names = DETECTOR_OUTPUTS if isinstance(model, SSDLite) else (OUTPUT_NAME,)
    graph = ExportGraph(
        Outputs(folded),
        (torch.zeros(2, channels, resolution, resolution),),
        (INPUT_NAME,),
        tuple(names),
        {"model_config": json.dumps(config.to_dict())},
        config.name,
        bn_folded,
        dynamic_batch=True,
    )
    shape = (1, channels, resolution, resolution)

    def check(written: Path) -> Agreement:
        return Agreement(_check_outputs(written, Outputs(reference), shape))

    return write_onnx(graph, path, check)


def _check_outputs(path: Path, reference: Outputs, shape: tuple[int, ...]) -> float:
    """The largest difference of any output of the ONNX file from ``reference``'s on one random
    input of ``shape``; raises above TOLERANCE."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ours = onnx_session(path).run(None, {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        expected = reference(x)
    difference = max(
        float(np.abs(mine.astype(np.float64) - theirs.numpy()).max())
        for mine, theirs in zip(ours, expected, strict=True)
    )
    if not difference <= TOLERANCE:  # catches NaN too
        raise MobileNetsError(
            f"the ONNX model disagrees with PyTorch: max abs difference {difference:.3g} at "
            f"input {format_shape(shape)} (allowed {TOLERANCE:g})"
        )
    return difference
