"""Export of a trained segmenter to ONNX or to an ExecuTorch program, checked against PyTorch.

[`export`][mobilenets.tasks.segmentation.export.export], the segmenter's export adapter, writes a
Mobile
DeepLabv3 with BN folded into the convs
([`fold_batch_norm`][mobilenets.deploy.folding.fold_batch_norm], by the parts' names). The file
takes ``input`` ``[1, 3, R, R]``, normalized as its ``preprocessing`` metadata says, and returns
either

- ``logits`` ``[1, C, R, R]`` float32, already upsampled to the input size (the default), or
- ``labels`` ``[1, R, R]`` int64 with ``argmax=True``: the class of each pixel, the argmax over
  classes done inside the graph, so a device gets the mask without touching C float maps.

**The input size is fixed** at export: R is ``resolution``, by default the model config's. A .pte
program has fixed shapes anyway; for ONNX the choice is deliberate. torch.export can make H and W
symbolic, but a model with TF "SAME" padding computes its stride-2 padding from the input size,
and that arithmetic does not survive the symbolic export (the graph ran, and was wrong by 3 in
the logits, when tried with torch 2.14), while a check at one size says nothing about the others.
Export once per input size you serve; resize or pad images to it.

Each file is written by the deploy pipeline ([`mobilenets.deploy.export`][mobilenets.deploy.export])
under a temporary name, run (onnxruntime on the CPU, or ExecuTorch's own runtime with the XNNPACK
delegate) on a seeded random input against the unfolded PyTorch model, and only renamed into place
when it agrees: logits within 1e-4, or for ``argmax`` the same class on every pixel where PyTorch's
two best logits are more than 1e-4 apart (a closer pair may flip by float rounding). A failed check
raises and leaves no file, and a previous file at the path stays. The file records the model's name
and config, its class names, preprocessing and source (ONNX ``metadata_props``, or constant methods
of the .pte program), as the classifier exports do.

**int8** (``int8=True``, with ``calibration``: batches of preprocessed images at the export size)
quantizes the same folded graph, weights s8 per output channel and activations per tensor:

- ONNX: the fp32 file is exported and checked as above, then onnxruntime's static quantization
  ([`quantize_file`][mobilenets.deploy.quantize.quantize_file], QDQ, u8 activations) sets each
  activation's range from the calibration images, by ``calibrate`` (``"minmax"``, ``"entropy"`` or
  ``"percentile"``). There is no PyTorch twin of onnxruntime's int8 kernels to check the file
  against: it is run on the first calibration image and must give finite logits (or classes
  in range); how far it is from the fp32 model there goes in the report.
- .pte: PT2E with ExecuTorch's XNNPACK quantizer
  ([`quantize_pt2e`][mobilenets.deploy.pt2e.quantize_pt2e], histogram observers on
  the activations) quantizes the logits graph; the argmax, if any, is added after. The program
  is checked against that quantized PyTorch reference on the first calibration image: logits
  within ``INT8_TOLERANCE_STEPS`` quantization steps of the output, or the same class on every
  pixel where the reference's two best logits are further apart than that.

How much mIoU int8 costs is measured by
[`quantize`][mobilenets.tasks.segmentation.quantize.quantize].
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.segmenter import Segmenter
from mobilenets.core.version import __version__
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import onnx_export, pt2e
from mobilenets.deploy.export import write
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.pipeline import Agreement, ExportGraph, ExportReport
from mobilenets.deploy.quantize import (
    CALIBRATE_METHODS,
    QUANTIZATION_KEY,
    PairBound,
    write_onnx_int8,
)
from mobilenets.engine.checkpoint import checkpoint_info
from mobilenets.tasks.segmentation.inference import (
    SegmentationCheckpoint,
    load_segmentation_checkpoint,
)

FORMATS = ("onnx", "pte")
LOGITS = "logits"
LABELS = "labels"
TOLERANCE = 1e-4  # logits: max abs difference; labels: the top-2 margin above which classes agree
# An int8 .pte program against its PT2E reference, in quantization steps of the logits. The
# classifier's allowance (executorch_export.INT8_TOLERANCE_STEPS, 32) bounds the ~10 logits of an
# image; a segmenter has C x R x R of them, and the largest difference among them is larger: up
# to 37 steps measured on V2 0.35 with random weights and BN statistics at 64 px, on random
# inputs (its reference itself 41 steps from the fp32 model there). A wrong scale, a dropped or
# misplaced op moves the logits by a large part of their range (about 255 steps).
INT8_TOLERANCE_STEPS = 2 * pt2e.INT8_TOLERANCE_STEPS
OUTPUTS = {
    LOGITS: "logits [N, C, H, W] float32 at the input size; the argmax over C is each pixel's "
    "class",
    LABELS: "labels [N, H, W] int64: each pixel's class index (argmax over the classes)",
}


@dataclass(frozen=True)
class SegmentationInt8Report:
    """What int8 quantization did in
    [`export`][mobilenets.tasks.segmentation.export.export]. The export
    report's ``max_abs_diff`` / ``differing_pixels`` are, for an int8 .pte program, its check
    against the quantized PyTorch reference, and for an int8 ONNX file the check of the fp32 file
    it was quantized from against PyTorch."""

    calibration: str  # how activation ranges were set: minmax, entropy, percentile or histogram
    calibration_images: int
    quantized_convs: int  # convolutions that read int8 weights
    float_convs: tuple[str, ...]  # those left in float (none expected)
    logits_scale: float | None  # .pte: the quantization step of the logits; ONNX: None
    tolerance: float | None  # .pte: INT8_TOLERANCE_STEPS of them, allowed from the reference
    # the int8 file against the fp32 model on the first calibration image: the max abs difference
    # of the logits, or for an argmax export the number of pixels of another class
    fp32_max_abs_diff: float | None
    fp32_differing_pixels: int | None
    pair_bound: PairBound | None = None  # ONNX: the weights' largest pair of int8 products


class ClassMap(nn.Module):
    """A segmenter whose output is each pixel's class: the argmax of its logits over classes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).argmax(dim=1)


def export(
    checkpoint_or_model: str | os.PathLike | SegmentationCheckpoint | Segmenter,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    resolution: int | None = None,
    argmax: bool = False,
    opset: int | None = None,
    int8: bool = False,
    calibration: Iterable[torch.Tensor] | None = None,
    calibrate: str | None = None,
) -> ExportReport:
    """Write a segmenter as a ``.onnx`` file or a ``.pte`` ExecuTorch program (XNNPACK delegate)
    for a fixed ``[1, 3, resolution, resolution]`` input, BN folded, and check it against PyTorch
    (see the module's docstring); a check that fails raises and leaves no file.

    - ``checkpoint_or_model``: a checkpoint written by a segmentation run (a ``.safetensors`` file
      or the run folder: its best), a loaded
      [`SegmentationCheckpoint`][mobilenets.tasks.segmentation.inference.SegmentationCheckpoint],
      or a [`Segmenter`][mobilenets.core.segmenter.Segmenter] (whose file then records no class
      names or preprocessing). The model is not changed.
    - ``format``: ``"onnx"`` (the ``onnx`` extra) or ``"pte"`` (the ``mobile`` extra); the path's
      suffix must match.
    - ``resolution``: the input side in pixels (default: the model config's).
    - ``argmax``: output ``labels`` ``[1, H, W]`` int64 instead of ``logits`` ``[1, C, H, W]``.
    - ``opset``: ONNX opset, 18 to 23 (default 18); ONNX only.
    - ``int8``: quantize the file (see the module's docstring), with activation ranges from
      ``calibration``: float ``[N, C, resolution, resolution]`` batches, normalized as the model's
      inputs (training images through the evaluation preprocessing, fitted to the input as
      [`fit_to_square`][mobilenets.tasks.segmentation.quantize.fit_to_square] does).
    - ``calibrate``: ONNX int8 only, onnxruntime's calibration method: ``"minmax"`` (the
      default), ``"entropy"`` or ``"percentile"``; the latter two hold every activation of every
      calibration image in memory.
    """
    opset = check_export_options(path, format, opset)
    if not isinstance(argmax, bool):
        raise MobileNetsError(f"argmax must be True or False, got {argmax!r}")
    if not isinstance(int8, bool):
        raise MobileNetsError(f"int8 must be True or False, got {int8!r}")
    if int8 != (calibration is not None):
        raise MobileNetsError(
            "int8=True needs calibration= (batches of preprocessed images)"
            if int8
            else "calibration= applies to int8=True only"
        )
    if calibrate is not None:
        if not int8 or format != "onnx":
            raise MobileNetsError(
                f"calibrate={calibrate!r} applies to int8=True with format='onnx' only"
            )
        if calibrate not in CALIBRATE_METHODS:
            raise MobileNetsError(
                f"calibrate must be one of {', '.join(CALIBRATE_METHODS)}, got {calibrate!r}"
            )
    checkpoint = _as_checkpoint(checkpoint_or_model)
    model = checkpoint_or_model if checkpoint is None else checkpoint.model
    resolution = model.resolution if resolution is None else resolution
    try:
        config = model.config.replace(resolution=resolution)
    except MobileNetsError as error:
        raise MobileNetsError(f"cannot export {model.name} at {resolution!r} px: {error}") from None

    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    folded, bn_folded = fold_batch_norm(reference)
    output_name = LABELS if argmax else LOGITS
    shape = (1, config.backbone.in_chans, resolution, resolution)
    known, source = {}, f"a {type(model).__name__} given to tasks.segmentation.export"
    if checkpoint is not None:
        known = checkpoint_info(
            checkpoint.classes,
            checkpoint.preprocessing.at(resolution),
            metrics=checkpoint.metrics or None,
        )
        source = f"checkpoint {checkpoint.path.name}"
    metadata = onnx_export.metadata_props(
        {
            "model_name": config.name,
            "model_config": config.to_dict(),
            **known,
            "source": source,
            "outputs": OUTPUTS[output_name],
            "mobilenets_version": __version__,
        }
    )
    graph = ExportGraph(
        ClassMap(folded).eval() if argmax else folded,
        (torch.zeros(shape),),
        (onnx_export.INPUT_NAME,),
        (output_name,),
        metadata,
        config.name,
        bn_folded,
    )
    x = _check_input(shape)
    what = "the ONNX model" if format == "onnx" else "the ExecuTorch program"

    def check(written: Path) -> Agreement:
        ours = _run_file(written, format, output_name, x)
        difference, differing = check_output(ours, reference, x, argmax, what)
        return Agreement(difference, details=_details(source, ours, differing))

    if int8 and format == "onnx":
        return _write_onnx_int8(
            graph, reference, path, argmax, check, opset, calibration, calibrate or "minmax"
        )
    if int8:
        return _write_pte_int8(graph, folded, reference, path, argmax, source, calibration)
    return write(graph, path, check, opset=opset)


def check_export_options(path: str | os.PathLike, format: str, opset: int | None) -> int | None:
    """The errors a caller can make in the file's name, format and opset (and a missing extra),
    before anything is loaded; the opset to use (None for a .pte program)."""
    if format not in FORMATS:
        raise MobileNetsError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "onnx":
        opset = onnx_export.DEFAULT_OPSET if opset is None else opset
        onnx_export.check_options(path, opset)  # the suffix, the opset and the onnx extra
        return opset
    if opset is not None:
        raise MobileNetsError(f"opset={opset!r} applies to format='onnx' only, not to 'pte'")
    mobile.check_pte_options(path)
    mobile.require_executorch("the ExecuTorch export")
    return None


def _as_checkpoint(item) -> SegmentationCheckpoint | None:
    """The checkpoint export was given (loaded from a path), or None for a model."""
    if isinstance(item, Segmenter):
        return None
    if isinstance(item, (str, os.PathLike)):
        return load_segmentation_checkpoint(item)
    if isinstance(item, SegmentationCheckpoint):
        return item
    raise MobileNetsError(
        "the segmentation export takes a segmentation checkpoint (a .safetensors file or run "
        f"folder), a SegmentationCheckpoint or a Segmenter, got {type(item).__name__}"
    )


def _details(source: str, ours: np.ndarray, differing: int | None) -> dict:
    """A segmenter report's own entries."""
    return {"source": source, "output_shape": ours.shape, "differing_pixels": differing}


def _run_file(path: Path, format: str, output_name: str, x: torch.Tensor) -> np.ndarray:
    """The output of the written file at ``path`` on ``x``, run by its ``format``'s runtime."""
    if format == "pte":
        return mobile.run_pte(mobile.load_method(mobile.load_pte(path)), x).numpy()
    session = onnx_export.onnx_session(path)
    (ours,) = session.run([output_name], {onnx_export.INPUT_NAME: x.numpy()})
    return ours


def _write_onnx_int8(graph, reference, path, argmax, check, opset, calibration, calibrate):
    """The fp32 file exported and checked in a temporary folder, quantized by onnxruntime on the
    calibration images one at a time (the file's batch is 1), run on the first of them, and
    only then written to ``path``
    ([`write_onnx_int8`][mobilenets.deploy.quantize.write_onnx_int8])."""
    shape = tuple(graph.examples[0].shape)
    images = _single_images(calibration, shape)
    x = next(images, None)
    if x is None:
        raise MobileNetsError("calibration= gave no images")
    output_name = graph.output_names[0]

    def check_int8(written: Path, quantized) -> Agreement:
        ours = _run_file(written, "onnx", output_name, x)
        difference, differing = _against_fp32(ours, reference, x, argmax, "the int8 ONNX model")
        int8 = SegmentationInt8Report(
            calibration=calibrate,
            calibration_images=quantized.calibration_images,
            quantized_convs=quantized.quantized_convs,
            float_convs=quantized.float_convs,
            logits_scale=None,
            tolerance=None,
            fp32_max_abs_diff=difference,
            fp32_differing_pixels=differing,
            pair_bound=quantized.pair_bound,
        )
        return Agreement(None, int8=int8)

    return write_onnx_int8(
        graph,
        path,
        itertools.chain([x], images),
        check,
        check_int8,
        opset=opset,
        method=calibrate,
    )


def _single_images(
    calibration: Iterable[torch.Tensor], shape: tuple[int, ...]
) -> Iterator[torch.Tensor]:
    """The calibration batches as ``[1, C, R, R]`` images, each batch checked against
    ``shape``."""
    for batch in calibration:
        batch = torch.as_tensor(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != shape[1:] or not batch.is_floating_point():
            raise MobileNetsError(
                f"calibration batches must be float (N, {', '.join(map(str, shape[1:]))}) "
                f"tensors, got {batch.dtype} of shape {tuple(batch.shape)}"
            )
        yield from batch.to("cpu", torch.float32).split(1)


def _write_pte_int8(graph, folded, reference, path, argmax, source, calibration):
    """The folded logits graph quantized by PT2E (the argmax, if asked for, goes on after it),
    lowered to XNNPACK, written once it agrees with the quantized reference on the first
    calibration image."""
    shape = tuple(graph.examples[0].shape)
    converted, x, quantized = pt2e.quantize_pt2e(folded, calibration, shape)
    if not math.isfinite(quantized.logits_scale):
        raise MobileNetsError("the logits of the int8 graph are not quantized")
    tolerance = INT8_TOLERANCE_STEPS * quantized.logits_scale
    int8_reference = pt2e.QuantizedReference(converted)
    settings = pt2e.SETTINGS | {"calibration_images": quantized.calibration_images}
    graph = dataclasses.replace(
        graph,
        module=ClassMap(int8_reference).eval() if argmax else int8_reference,
        metadata={**graph.metadata, QUANTIZATION_KEY: json.dumps(settings)},
    )
    what = "the int8 ExecuTorch program"

    def check(written: Path) -> Agreement:
        ours = _run_file(written, "pte", graph.output_names[0], x)
        if argmax:
            with torch.no_grad():
                logits = int8_reference(x)
            differing = check_class_map(
                ours, logits, what, tolerance, against="its quantized PyTorch reference"
            )
            difference = None
        else:
            difference = onnx_export.check_agreement(ours, int8_reference, x, what, tolerance)
            differing = None
        fp32_difference, fp32_differing = _against_fp32(ours, reference, x, argmax, what)
        int8 = SegmentationInt8Report(
            calibration="histogram",
            calibration_images=quantized.calibration_images,
            quantized_convs=quantized.quantized_layers,
            float_convs=quantized.float_layers,
            logits_scale=quantized.logits_scale,
            tolerance=tolerance,
            fp32_max_abs_diff=fp32_difference,
            fp32_differing_pixels=fp32_differing,
        )
        return Agreement(difference, details=_details(source, ours, differing), int8=int8)

    return write(graph, path, check)


def _against_fp32(
    ours: np.ndarray, reference: nn.Module, x: torch.Tensor, argmax: bool, what: str
) -> tuple[float | None, int | None]:
    """How far an int8 file's output on ``x`` is from the fp32 model's: (max abs difference of
    the logits, None), or for ``argmax`` (None, pixels of another class). Raises only for
    output no model gives: NaN or infinite logits, classes out of range."""
    with torch.no_grad():
        logits = reference(x)
    if argmax:
        if ours.min() < 0 or ours.max() >= logits.shape[1]:
            raise MobileNetsError(
                f"{what} returned classes {ours.min()}..{ours.max()} for a "
                f"{logits.shape[1]}-class model"
            )
        return None, int((torch.from_numpy(ours.astype(np.int64)) != logits.argmax(1)).sum())
    if not np.isfinite(ours).all():
        raise MobileNetsError(f"{what} returned logits that are not finite")
    return float(np.abs(ours.astype(np.float64) - logits.numpy()).max()), None


def _check_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


# --- The check -----------------------------------------------------------------------------------


def check_output(
    ours: np.ndarray, reference: nn.Module, x: torch.Tensor, argmax: bool, what: str
) -> tuple[float | None, int | None]:
    """Compare an exported program's output on ``x`` with the unfolded ``reference``'s: (max abs
    difference of the logits, None), or for ``argmax`` (None, the pixels whose class differs,
    all of them near a tie). Raises when they disagree; ``what`` names the program."""
    if not argmax:
        return onnx_export.check_agreement(ours, reference, x, what, TOLERANCE), None
    with torch.no_grad():
        logits = reference(x)
    return None, check_class_map(ours, logits, what)


def check_class_map(
    labels: np.ndarray,
    logits: torch.Tensor,
    what: str,
    tolerance: float | None = None,
    *,
    against: str = "PyTorch",
) -> int:
    """The number of pixels where ``labels`` ``[N, H, W]`` is not the argmax of PyTorch's
    ``logits`` ``[N, C, H, W]``; raises if one of them is a pixel whose two best logits are more
    than ``tolerance`` apart (default TOLERANCE: float rounding cannot flip those; an int8
    program's allowance from its quantized reference for it). ``against`` names the logits'
    model in the error."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    expected = logits.argmax(dim=1)
    height, width = logits.shape[-2:]
    if tuple(labels.shape) != tuple(expected.shape):
        raise MobileNetsError(
            f"{what} returned a class map of shape {tuple(labels.shape)}, {against} "
            f"{tuple(expected.shape)}"
        )
    top2 = logits.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    differ = torch.from_numpy(np.asarray(labels, dtype=np.int64)) != expected
    decided = differ & (margin > tolerance)
    if decided.any():
        raise MobileNetsError(
            f"{what} disagrees with {against}: {int(decided.sum())} pixel(s) of another class "
            f"where the top-2 logit margin is above {tolerance:.3g} (up to "
            f"{float(margin[decided].max()):.3g}) on a {height}x{width} input"
        )
    return int(differ.sum())
