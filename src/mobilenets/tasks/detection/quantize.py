"""int8 detectors: a static int8 ONNX file (onnxruntime, QDQ) or an int8 ExecuTorch program (PT2E
with the XNNPACK quantizer), calibrated on training images, and the COCO AP and AP50 of the file
beside the fp32 model's on the validation split.

**What is int8.** The network, from the image to the head outputs ``cls_logits`` and
``box_regression``: every convolution with int8 weights per output channel, activations int8.
The end of the file stays float: the box decoding and the class scores, and with ``nms=True``
the score threshold, the pre-NMS top-k, ``NonMaxSuppression`` and the final top-k. Neither
onnxruntime nor XNNPACK has int8 kernels for those ops (QDQ pairs around them would only convert
back and forth), they are a small part of the work, and quantized they would lose what the
evaluation ranks by: a softmax score on 256 levels ties every detection within 1/255 of
another, and a decoded corner moves by up to 1/255 of the image.

**ONNX** ([`quantize_detector_onnx`][mobilenets.tasks.detection.quantize.quantize_detector_onnx]):
the network alone is exported (outputs ``cls_logits``, ``box_regression``), checked against
PyTorch (1e-4) and quantized by
[`quantize_file`][mobilenets.deploy.quantize.quantize_file]; the float end is exported from
PyTorch as a graph of those two inputs (the same modules as the fp32 file's), and the two are
joined into one file (``onnx.compose.merge_models``) with the fp32 file's input, outputs and
metadata, plus a ``quantization`` entry. The joined file is run by onnxruntime against the float
end (PyTorch) on the int8 network's outputs (onnxruntime): boxes and scores within 1e-4, or the
same detections for ``nms=True``; a disagreement leaves no file.

**ExecuTorch**: ``export(checkpoint, "file.pte", int8=True, calibration=...)``, see
[`mobilenets.tasks.detection.export`][mobilenets.tasks.detection.export].

**Accuracy** ([`quantize`][mobilenets.tasks.detection.quantize.quantize]): the file is run by
its runtime (onnxruntime or ExecuTorch's) on the validation split through the checkpoint's
evaluation preprocessing and scored by the same COCO evaluation as the fp32 model in PyTorch,
both with the same post-processing settings (those in the file for ``nms=True``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mobilenets.core.boxes import select_detections
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import onnx_export
from mobilenets.deploy import quantize as int8_onnx
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.onnx_export import onnx_program, onnx_report, write_onnx
from mobilenets.deploy.pipeline import Agreement, ExportReport, write_checked
from mobilenets.deploy.quantize import calibration_batches, calibration_indices
from mobilenets.tasks.detection.evaluate import evaluate_detections
from mobilenets.tasks.detection.export import (
    check_shapes,
    detection_graph,
    detector_details,
    export,
    output_names,
    verify_detector_onnx,
    verify_nms_onnx,
)
from mobilenets.tasks.detection.graphs import (
    NMS_OUTPUT_NAMES,
    OUTPUT_NAMES,
    Decoding,
    DecodingWithNMS,
    HeadOutputs,
    NetworkWithTail,
    NMSSettings,
    reference_detections,
)
from mobilenets.tasks.detection.inference import DetectionCheckpoint, checkpoint_data

if TYPE_CHECKING:
    import onnx

HEAD_NAMES = ("cls_logits", "box_regression")  # the int8 network's outputs, the float end's inputs
TAIL_PREFIX = "tail/"  # the float end's own names in a joined file
DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_BATCH_SIZE = 32  # calibration (with a dynamic batch) and evaluation


# --- int8 ONNX ----------------------------------------------------------------------------------


def quantize_detector_onnx(
    checkpoint: DetectionCheckpoint,
    path: str | os.PathLike,
    calibration: Iterable[torch.Tensor],
    *,
    opset: int = onnx_export.DEFAULT_OPSET,
    dynamic_batch: bool = False,
    nms: bool = False,
    method: str = "minmax",
    activation_type: str = "u8",
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms_top_k: int = 1000,
) -> ExportReport:
    """Write the checkpoint's detector as an int8 ONNX file: the fp32 file's inputs, outputs and
    metadata (see [`export`][mobilenets.tasks.detection.export.export], whose other arguments
    these are), the network quantized (QDQ, see the module's docstring) with activation ranges
    calibrated on ``calibration``: float ``(N, 3, R, R)`` batches of preprocessed images, of
    batch 1 unless ``dynamic_batch``. ``method`` (minmax, entropy, percentile) and
    ``activation_type`` (u8, s8) are
    [`quantize_file`][mobilenets.deploy.quantize.quantize_file]'s. ``report.int8`` is its report
    (its ``fp32_bytes`` the fp32 network's), ``report.max_abs_diff`` the file against its float
    end run by PyTorch on the int8 network's outputs."""
    onnx_export.check_options(path, opset)
    int8_onnx.check_options(path, method, activation_type)
    settings = NMSSettings(score_threshold, nms_iou, max_detections, pre_nms_top_k)
    onnx = require("onnx", int8_onnx.QUANTIZING)
    model = checkpoint.model.to("cpu", torch.float32)
    reference = copy.deepcopy(model).eval()
    folded, bn_folded = fold_batch_norm(reference)
    config, anchors = model.config, model.anchors()
    shapes = check_shapes(config, dynamic_batch)
    tail = (
        DecodingWithNMS(anchors, checkpoint.loss, settings)
        if nms
        else Decoding(anchors, checkpoint.loss)
    ).eval()
    in_graph = settings if nms else None
    network = detection_graph(
        checkpoint, HeadOutputs(folded), HEAD_NAMES, in_graph, dynamic_batch, bn_folded
    )
    with tempfile.TemporaryDirectory(prefix="mobilenets-detector-int8-") as folder:
        network_path, int8_path, tail_path = (
            Path(folder) / name for name in ("network.onnx", "network.int8.onnx", "tail.onnx")
        )

        def check_network(written: Path) -> Agreement:
            heads = HeadOutputs(reference).eval()
            return Agreement(verify_detector_onnx(written, heads, shapes, HEAD_NAMES))

        write_onnx(network, network_path, check_network, opset=opset)
        quantization = int8_onnx.quantize_file(
            network_path,
            calibration,
            int8_path,
            method=method,
            activation_type=activation_type,
            recorded={"float": "box decoding, scores" + (", NMS" if nms else "")},
        )
        with torch.no_grad():
            heads = HeadOutputs(reference)(network.examples[0])
        tail_graph = dataclasses.replace(
            network,
            module=tail,
            examples=tuple(heads),
            input_names=HEAD_NAMES,
            output_names=output_names(nms),
            metadata={},
        )
        onnx_program(tail_graph, opset).save(tail_path, external_data=False)
        joined = join_graphs(onnx.load(str(int8_path)), onnx.load(str(tail_path)))
        int8_heads = OnnxHeads(int8_path, anchors)

        def check(written: Path) -> Agreement:
            if nms:
                difference = verify_nms_onnx(written, int8_heads, checkpoint.loss, settings, shapes)
            else:
                difference = verify_detector_onnx(
                    written, NetworkWithTail(HeadOutputs(int8_heads), tail), shapes
                )
            return Agreement(difference, details=detector_details(model, in_graph))

        agreement, file_bytes = write_checked(
            path, lambda temporary: onnx.save(joined, temporary), check
        )
    quantization = dataclasses.replace(quantization, path=Path(path), int8_bytes=file_bytes)
    written = dataclasses.replace(network, output_names=output_names(nms))
    return onnx_report(written, Path(path), joined, file_bytes, agreement, opset, quantization)


def join_graphs(network: onnx.ModelProto, tail: onnx.ModelProto) -> onnx.ModelProto:
    """One model: ``network``'s outputs ``cls_logits`` and ``box_regression`` fed to ``tail``'s
    inputs of those names, ``tail``'s other names prefixed so that none collides with the
    network's; the input and metadata are the network's, the outputs the tail's."""
    compose = require("onnx.compose", int8_onnx.QUANTIZING)
    tail = compose.add_prefix(tail, TAIL_PREFIX, rename_inputs=False, rename_outputs=False)
    del tail.metadata_props[:]
    # both come from the same torch.onnx; a newer IR version reads an older one's graph
    network.ir_version = tail.ir_version = max(network.ir_version, tail.ir_version)
    return compose.merge_models(network, tail, io_map=[(name, name) for name in HEAD_NAMES])


class OnnxHeads(nn.Module):
    """The network file (outputs ``cls_logits``, ``box_regression``) run by onnxruntime, as an
    SSDLite is called (a dict of both, and ``anchors()``): what the float end of an int8 file is
    checked on."""

    def __init__(self, path: str | os.PathLike, anchors: torch.Tensor) -> None:
        super().__init__()
        self.session = onnx_export.onnx_session(path)
        self.register_buffer("default_boxes", anchors.detach().clone())

    def anchors(self) -> torch.Tensor:
        return self.default_boxes

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(list(HEAD_NAMES), {onnx_export.INPUT_NAME: images.numpy()})
        return {
            name: torch.from_numpy(value) for name, value in zip(HEAD_NAMES, outputs, strict=True)
        }


# --- Running an exported file on a dataset -------------------------------------------------------


class ExportedDetector:
    """A detector file of ours run by its runtime (onnxruntime for ``.onnx``, ExecuTorch for
    ``.pte``) as the ``detect`` of
    [`evaluate_detections`][mobilenets.tasks.detection.evaluate.evaluate_detections]:
    preprocessed images in, detections in pixels out. A file without NMS gets what
    [`postprocess`][mobilenets.core.boxes.postprocess] does after its decoding, with
    ``settings`` (default: postprocess's); a file with NMS inside gives its own. A fixed batch
    is filled up with zeros."""

    def __init__(self, path: str | os.PathLike, settings: NMSSettings | None = None) -> None:
        path = Path(path)
        self.settings = settings or NMSSettings()
        if path.suffix == mobile.SUFFIX:
            program = mobile.load_pte(path)
            self.batch = mobile.pte_input_shape(program)[0]
            self.method = mobile.load_method(program)
            self.session, self.names = None, OUTPUT_NAMES
        else:
            self.session = onnx_export.onnx_session(path)
            self.names = tuple(output.name for output in self.session.get_outputs())
            batch = self.session.get_inputs()[0].shape[0]
            self.batch = batch if isinstance(batch, int) else None
        if self.names not in (OUTPUT_NAMES, NMS_OUTPUT_NAMES):
            raise MobileNetsError(
                f"{str(path)!r} is not a detector export: its outputs are {list(self.names)}, "
                f"where `detect export` writes {list(OUTPUT_NAMES)} or {list(NMS_OUTPUT_NAMES)}"
            )

    def __call__(self, images: torch.Tensor, sizes) -> list[dict[str, torch.Tensor]]:
        outputs = self._outputs(images)
        if self.names == NMS_OUTPUT_NAMES:
            boxes, scores, classes, count = outputs
            found = []
            for image, (height, width) in enumerate(sizes):
                kept = int(count[image])
                scale = torch.tensor([width, height, width, height], dtype=torch.float32)
                found.append(
                    {
                        "boxes": boxes[image, :kept].float() * scale,
                        "scores": scores[image, :kept],
                        "labels": classes[image, :kept],
                    }
                )
            return found
        boxes, scores = outputs
        # evaluation scores softmax(score_logits): a softmax model's scores as they are (their
        # sum is 1), a focal model's divided by their sum where it is above 1
        probabilities = scores / scores.sum(dim=-1, keepdim=True)
        return select_detections(
            probabilities[..., 1:], boxes, image_size=list(sizes), **asdict(self.settings)
        )

    def _run(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.session is None:
            return mobile.run_pte_outputs(self.method, images)
        values = self.session.run(list(self.names), {onnx_export.INPUT_NAME: images.numpy()})
        return [torch.from_numpy(value) for value in values]

    def _outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.batch is None:
            return self._run(images)
        parts = []
        for chunk in images.split(self.batch):
            padding = chunk.new_zeros((self.batch - len(chunk), *chunk.shape[1:]))
            parts.append([value[: len(chunk)] for value in self._run(torch.cat([chunk, padding]))])
        return [torch.cat(values) for values in zip(*parts, strict=True)]


# --- From a checkpoint and its data --------------------------------------------------------------


@dataclass(frozen=True)
class DetectionQuantizeResult:
    """An int8 file and the COCO AP and AP50 of it and of the fp32 model on the validation
    split."""

    report: ExportReport
    fp32_ap: float
    fp32_ap50: float
    int8_ap: float
    int8_ap50: float
    count: int  # validation images


def quantize(
    checkpoint: DetectionCheckpoint,
    data: str,
    path: str | os.PathLike,
    *,
    calibration_images: int | None = None,
    method: str = "minmax",
    opset: int = onnx_export.DEFAULT_OPSET,
    dynamic_batch: bool = False,
    nms: bool = False,
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms_top_k: int = 1000,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> DetectionQuantizeResult:
    """``checkpoint`` as an int8 ``.onnx`` file
    ([`quantize_detector_onnx`][mobilenets.tasks.detection.quantize.quantize_detector_onnx]) or
    ``.pte`` program
    ([`export`][mobilenets.tasks.detection.export.export]), by
    ``path``'s suffix, calibrated on ``calibration_images`` training images of ``data``
    (default 256, or the whole split if smaller: the seeded sample of
    [`calibration_indices`][mobilenets.deploy.quantize.calibration_indices], through the
    checkpoint's evaluation preprocessing); then the COCO AP and AP50 of the fp32 model
    (PyTorch) and of the file (its runtime) on the validation split. ``method``, ``opset``,
    ``dynamic_batch`` and ``nms`` apply to ONNX only (a ``.pte`` program leaves NMS to its
    caller). The NMS settings are those in the file with ``nms=True``; otherwise those of the
    post-processing both are scored with."""
    path = Path(path)
    pte = path.suffix == mobile.SUFFIX
    if pte:
        onnx_only = {
            "method": method != "minmax",
            "opset": opset != onnx_export.DEFAULT_OPSET,
            "dynamic_batch": dynamic_batch,
            "nms": nms,
        }
        given = [name for name, changed in onnx_only.items() if changed]
        if given:
            raise MobileNetsError(
                f"{given[0]}= applies to an ONNX file only, not to a {mobile.SUFFIX} program"
                + (" (NMS runs outside the program, see tasks.detection.export)" if nms else "")
            )
        mobile.check_pte_options(path)
        mobile.require_executorch("the ExecuTorch export")
    else:
        onnx_export.check_options(path, opset)
        int8_onnx.check_options(path, method, "u8")
    settings = NMSSettings(score_threshold, nms_iou, max_detections, pre_nms_top_k)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MobileNetsError(f"batch size must be a positive integer, got {batch_size!r}")
    found = checkpoint_data(checkpoint, data)
    if calibration_images is None:
        calibration_images = min(DEFAULT_CALIBRATION_IMAGES, len(found.train))
    indices = calibration_indices(len(found.train), calibration_images)
    # a file of a fixed batch (1) is calibrated one image at a time
    batches = calibration_batches(found.train, indices, batch_size if pte or dynamic_batch else 1)
    if pte:
        report = export(checkpoint, path, int8=True, calibration=batches)
    else:
        report = quantize_detector_onnx(
            checkpoint,
            path,
            batches,
            opset=opset,
            dynamic_batch=dynamic_batch,
            nms=nms,
            method=method,
            **asdict(settings),
        )
    model, loss = checkpoint.model.to("cpu"), checkpoint.loss

    def fp32_detect(images: torch.Tensor, sizes) -> list[dict[str, torch.Tensor]]:
        return reference_detections(model, loss, settings, images, list(sizes))

    fp32 = evaluate_detections(fp32_detect, found.val, batch_size=batch_size, progress=progress)
    int8 = evaluate_detections(
        ExportedDetector(path, settings), found.val, batch_size=batch_size, progress=progress
    )
    return DetectionQuantizeResult(
        report, fp32["AP"], fp32["AP50"], int8["AP"], int8["AP50"], len(found.val)
    )
