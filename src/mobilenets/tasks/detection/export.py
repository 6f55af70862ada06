"""The detector's export adapter: an ONNX file or an ExecuTorch program with the box decoding
inside, and for ONNX with ``nms=True`` NMS too (the graphs, and how they match
[`postprocess`][mobilenets.core.boxes.postprocess]:
[`mobilenets.tasks.detection.graphs`][mobilenets.tasks.detection.graphs]), written and checked by
the deploy pipeline ([`mobilenets.deploy.export`][mobilenets.deploy.export]). int8 ONNX files
are written by [`mobilenets.tasks.detection.quantize`][mobilenets.tasks.detection.quantize],
int8 programs by ``export(..., int8=True)``.

BN is folded into the convs first
([`mobilenets.deploy.folding.fold_batch_norm`][mobilenets.deploy.folding.fold_batch_norm], by the
parts' names), and the written file is run with onnxruntime against the unfolded PyTorch model
(``postprocess`` with the same settings, for ``nms=True``); a disagreement leaves no file.

**ExecuTorch** (``export`` to a ``.pte`` path):
a ``.pte`` program of batch 1 whose outputs are the ONNX file's ``boxes`` and ``scores``, the
decoding inside and the whole graph in one XNNPACK partition (the decoding works on slices, not
``unbind``, whose squeeze ops XNNPACK would leave outside). NMS stays outside the program, and
with it the score threshold and the top-k: ExecuTorch has no NMS kernel. ``torchvision.ops.nms``
exports (``torch.ops.torchvision.nms``), but its output length depends on the data, which
ExecuTorch's memory planning cannot bound (``to_executorch`` fails: "Cannot evaluate a finite
upper bound"), and this module's fixed-length ``mobilenets::class_nms`` has no out-variant
kernel ("Missing out variants: {'mobilenets::class_nms'}"), as found with executorch 1.5.1.
Either would need a C++ kernel registered with the app's ExecuTorch runtime; the caller runs
``postprocess``'s selection on the two outputs instead (``torchvision.ops.batched_nms``, or the
platform's NMS).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.version import __version__
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import onnx_export, pt2e
from mobilenets.deploy.export import file_format, write
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.pipeline import Agreement, ExportGraph, ExportReport
from mobilenets.engine.checkpoint import checkpoint_info
from mobilenets.tasks.detection.graphs import (
    NMS_OUTPUT_NAMES,
    ONNX_TRANSLATIONS,
    OUTPUT_NAMES,
    TOLERANCE,
    DecodedDetector,
    Decoding,
    DetectionsWithNMS,
    HeadOutputs,
    NetworkWithTail,
    NMSSettings,
    compare_detections,
    head_scales,
    head_steps,
    reference_detections,
)
from mobilenets.tasks.detection.inference import DetectionCheckpoint

# An int8 program against its PT2E reference, in quantization steps of the head outputs seen
# through the float decoding (head_steps). As for a classifier's logits (pt2e's
# INT8_TOLERANCE_STEPS), XNNPACK requantizes with its own rounding, an activation now and then
# lands one step apart, and the layers after carry that step on as they carry quantization
# noise. Measured with executorch 1.5.1: the demo SSDLite 0.35 at 128 px (trained on synthetic
# shapes) up to 12 steps apart in its head outputs and 7.8 through the decoding, over 16
# images; random weights and BN statistics at 64 px, up to 40 and 28. A wrong scale, wrong
# anchors or a dropped op move boxes by a large part of the image, hundreds of steps.
INT8_TOLERANCE_STEPS = 48


def export(
    checkpoint: DetectionCheckpoint,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = False,
    nms: bool = False,
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms_top_k: int = 1000,
    int8: bool = False,
    calibration: Iterable[torch.Tensor] | None = None,
) -> ExportReport:
    """Write the checkpoint's detector as an ONNX file or an ExecuTorch program, by ``path``'s
    suffix (see the module docstring), check it against PyTorch (a disagreement raises and
    leaves no file) and record classes, category ids, preprocessing and the detection config in
    its metadata. ``report.num_boxes``, ``report.num_classes`` and ``report.nms`` (the settings
    in the graph, or None) are the detector's entries.

    ONNX: checked with onnxruntime at batches 1 and 3 with ``dynamic_batch``, else 1, boxes and
    scores within 1e-4. ``nms=True`` puts the score threshold, class-wise NMS and the top
    ``max_detections`` in the graph; ``score_threshold``, ``nms_iou``, ``max_detections`` and
    ``pre_nms_top_k`` are [`postprocess`][mobilenets.core.boxes.postprocess]'s, with its
    defaults, and apply only then. ``opset``: 18 (default) to 23.

    ``.pte``: one ``[1, 3, R, R]`` input, outputs ``boxes`` and ``scores`` as the ONNX file's,
    NMS left outside; run by ExecuTorch's runtime on a seeded random input against the unfolded
    model, boxes and scores within 1e-4. ``int8=True`` quantizes the network by PT2E with the
    XNNPACK quantizer ([`mobilenets.deploy.pt2e`][mobilenets.deploy.pt2e]), activation ranges
    calibrated on ``calibration`` (float ``(N, 3, R, R)`` batches preprocessed as the model's
    inputs); the decoding stays float. The program is then checked against its quantized
    PyTorch reference on the first calibration image: its boxes and scores must be what the
    reference's head outputs moved by at most INT8_TOLERANCE_STEPS (48) quantization steps give
    ([`head_steps`][mobilenets.tasks.detection.graphs.head_steps]); ``report.steps`` is how
    many, ``report.head_scales`` the steps of ``cls_logits`` and ``box_regression``.
    """
    settings = NMSSettings(score_threshold, nms_iou, max_detections, pre_nms_top_k)
    if file_format(path) == "pte":
        onnx_only = {"opset": opset is not None, "dynamic_batch": dynamic_batch, "nms": nms}
        given = [name for name, changed in onnx_only.items() if changed]
        if given:
            raise MobileNetsError(
                f"{given[0]}= applies to an ONNX file only, not to a {mobile.SUFFIX} program"
                + (" (NMS runs outside the program, see tasks.detection.export)" if nms else "")
            )
        return _export_pte(checkpoint, path, int8=int8, calibration=calibration)
    if int8 or calibration is not None:
        raise MobileNetsError(
            "int8= and calibration= apply to a .pte program; an int8 ONNX file is written by "
            "mobilenets.tasks.detection.quantize.quantize_detector_onnx"
        )
    opset = onnx_export.DEFAULT_OPSET if opset is None else opset
    onnx_export.check_options(path, opset)  # the onnx extra too
    model = checkpoint.model.to("cpu", torch.float32)
    folded, bn_folded = fold_batch_norm(model)
    module = (
        DetectionsWithNMS(folded, checkpoint.loss, settings)
        if nms
        else DecodedDetector(folded, checkpoint.loss)
    )
    graph = detection_graph(
        checkpoint, module, output_names(nms), settings if nms else None, dynamic_batch, bn_folded
    )
    shapes = check_shapes(model.config, dynamic_batch)
    reference = copy.deepcopy(model).eval()

    def check(written: Path) -> Agreement:
        if nms:
            difference = verify_nms_onnx(written, reference, checkpoint.loss, settings, shapes)
        else:
            difference = verify_detector_onnx(
                written, DecodedDetector(reference, checkpoint.loss), shapes
            )
        return Agreement(difference, details=detector_details(model, settings if nms else None))

    return write(graph, path, check, opset=opset)


def detection_graph(
    checkpoint: DetectionCheckpoint,
    module: nn.Module,
    names: tuple[str, ...],
    settings: NMSSettings | None,
    dynamic_batch: bool,
    bn_folded: int,
    format: str = "onnx",
    example: torch.Tensor | None = None,
    input_names: tuple[str, ...] = (onnx_export.INPUT_NAME,),
) -> ExportGraph:
    """What a detector file is written from: ``module`` (eval mode) on an image example (or
    ``example``), its outputs ``names``, the detector's metadata."""
    config = checkpoint.model.config
    example = image_example(config, dynamic_batch) if example is None else example
    return ExportGraph(
        module.eval(),
        (example,) if isinstance(example, torch.Tensor) else tuple(example),
        input_names,
        names,
        detection_metadata(checkpoint, settings, format),
        config.name,
        bn_folded,
        dynamic_batch,
        ONNX_TRANSLATIONS,
    )


def detector_details(model: nn.Module, settings: NMSSettings | None, **more) -> dict:
    """A detector report's own entries: default boxes, classes, the NMS in the graph."""
    return {
        "num_boxes": model.anchors().shape[0],
        "num_classes": model.config.num_classes,
        "nms": settings,
        **more,
    }


def output_names(nms: bool) -> tuple[str, ...]:
    """The outputs of a file with NMS inside, or without."""
    return NMS_OUTPUT_NAMES if nms else OUTPUT_NAMES


def image_example(config, dynamic_batch: bool) -> torch.Tensor:
    batch = 2 if dynamic_batch else 1  # torch.export specialises a size-1 axis to 1
    return torch.zeros(batch, config.backbone.in_chans, config.resolution, config.resolution)


def check_shapes(config, dynamic_batch: bool) -> list[tuple[int, ...]]:
    """The input shapes an export is checked at: batches 1 and 3 for a dynamic batch."""
    side = config.resolution
    return [
        (batch, config.backbone.in_chans, side, side)
        for batch in (onnx_export.DYNAMIC_CHECK_BATCHES if dynamic_batch else (1,))
    ]


def detection_metadata(
    checkpoint: DetectionCheckpoint, settings: NMSSettings | None, format: str
) -> dict[str, str]:
    """The entries every detector file records (ONNX metadata_props, or constant methods of a
    .pte program): classes, category ids, preprocessing, the detection config, how scores are
    made, what the outputs are, the NMS settings when NMS is inside, source and version."""
    batch = "N" if format == "onnx" else "1"
    if settings is not None:
        k = settings.max_detections
        outputs = (
            f"boxes [{batch}, {k}, 4] normalized x1 y1 x2 y2; scores [{batch}, {k}]; classes "
            f"[{batch}, {k}] int64 in 1..C-1; count [{batch}] int64, detections per image (rows "
            "past it are zeros); NMS included"
        )
    else:
        outputs = (
            f"boxes [{batch}, A, 4] normalized x1 y1 x2 y2; scores [{batch}, A, C], "
            "column 0 background; NMS not included"
        )
    info = checkpoint_info(
        checkpoint.classes,
        checkpoint.preprocessing,
        category_ids=list(checkpoint.category_ids),
        detection_config=checkpoint.model.config.to_dict(),
        scores=checkpoint.loss,
        outputs=outputs,
        nms=asdict(settings) if settings is not None else None,
        source=f"checkpoint {checkpoint.path.name}",
        mobilenets_version=__version__,
    )
    return onnx_export.metadata_props(info)


def verify_detector_onnx(
    path: str | os.PathLike,
    reference: nn.Module,
    shapes: list[tuple[int, ...]],
    names: tuple[str, ...] = OUTPUT_NAMES,
) -> float:
    """The max abs difference of onnxruntime's outputs ``names`` (boxes and scores) and
    ``reference``'s on the same random inputs; raises when it exceeds TOLERANCE."""
    session = onnx_export.onnx_session(path)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        ours = session.run(list(names), {onnx_export.INPUT_NAME: x.numpy()})
        with torch.no_grad():
            expected = reference(x)
        worst = max(worst, compare_outputs(ours, expected, names, "the ONNX model", shape))
    return worst


def compare_outputs(
    ours, expected, names: tuple[str, ...], what: str, shape: tuple[int, ...]
) -> float:
    """The max abs difference of a file's outputs and PyTorch's, output by output; raises naming
    the output and ``what`` when one exceeds TOLERANCE."""
    worst = 0.0
    for name, got, want in zip(names, ours, expected, strict=True):
        difference = float(np.abs(np.asarray(got, np.float64) - want.numpy()).max())
        if not difference <= TOLERANCE:  # catches NaN too
            raise MobileNetsError(
                f"{what}'s {name} disagree with PyTorch: max abs difference {difference:.3g} at "
                f"input {onnx_export.format_shape(shape)} (allowed {TOLERANCE:g})"
            )
        worst = max(worst, difference)
    return worst


def verify_nms_onnx(
    path: str | os.PathLike,
    reference: SSDLite,
    loss: str,
    settings: NMSSettings,
    shapes: list[tuple[int, ...]],
) -> float:
    """The max abs difference of an ``nms=True`` file's detections and ``postprocess``'s on
    ``reference`` (see compare_detections) on the same random inputs; raises when they
    disagree."""
    session = onnx_export.onnx_session(path)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        ours = session.run(list(NMS_OUTPUT_NAMES), {onnx_export.INPUT_NAME: x.numpy()})
        expected = reference_detections(reference, loss, settings, x)
        worst = max(worst, compare_detections(ours, expected))
    return worst


# --- ExecuTorch ---------------------------------------------------------------------------------


def _export_pte(
    checkpoint: DetectionCheckpoint,
    path: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: Iterable[torch.Tensor] | None = None,
) -> ExportReport:
    """The ``.pte`` half of [`export`][mobilenets.tasks.detection.export.export]."""
    mobile.check_pte_options(path)
    if int8 != (calibration is not None):
        raise MobileNetsError(
            "int8=True needs calibration= (batches of preprocessed images)"
            if int8
            else "calibration= applies to int8=True only"
        )
    mobile.require_executorch("the ExecuTorch export")
    model = checkpoint.model.to("cpu", torch.float32)
    reference = copy.deepcopy(model).eval()
    folded, bn_folded = fold_batch_norm(reference)
    anchors = model.anchors()
    shape = image_example(model.config, dynamic_batch=False).shape
    quantization = scales = converted = None
    if int8:
        converted, x, quantization = pt2e.quantize_pt2e(HeadOutputs(folded), calibration, shape)
        scales = head_scales(converted)
        converted = pt2e.QuantizedReference(converted)
        module = NetworkWithTail(converted, Decoding(anchors, checkpoint.loss))
    else:
        module = DecodedDetector(folded, checkpoint.loss)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    graph = detection_graph(checkpoint, module, OUTPUT_NAMES, None, False, bn_folded, "pte")
    if int8:
        settings = pt2e.SETTINGS | {
            "decoding": "float",
            "calibration_images": quantization.calibration_images,
        }
        metadata = {**graph.metadata, mobile.QUANTIZATION_KEY: json.dumps(settings)}
        graph = dataclasses.replace(graph, metadata=metadata)

    def check(written: Path) -> Agreement:
        ours = mobile.run_pte_outputs(mobile.load_method(mobile.load_pte(written)), x)
        with torch.no_grad():
            expected = DecodedDetector(reference, checkpoint.loss)(x)
        if not int8:
            difference = compare_outputs(
                ours, expected, OUTPUT_NAMES, "the ExecuTorch program", tuple(shape)
            )
            return Agreement(difference, details=detector_details(model, None))
        with torch.no_grad():
            heads = converted(x)
        steps = head_steps(
            ours, heads, anchors, checkpoint.loss, scales, limit=INT8_TOLERANCE_STEPS
        )
        if not steps <= INT8_TOLERANCE_STEPS:
            raise MobileNetsError(
                "the int8 ExecuTorch program disagrees with its PyTorch reference: its boxes "
                f"and scores are more than {INT8_TOLERANCE_STEPS} quantization steps of the "
                "head outputs away"
            )
        difference = max(
            float((got - want).abs().max()) for got, want in zip(ours, expected, strict=True)
        )
        details = detector_details(model, None, head_scales=scales, steps=steps)
        return Agreement(difference, details=details)

    return write(graph, path, check, int8=quantization)
