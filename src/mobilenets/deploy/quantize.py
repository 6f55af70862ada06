"""Post-training static int8 quantization with onnxruntime: the int8 path of ONNX files, for every
task ([`quantize_file`][mobilenets.deploy.quantize.quantize_file] on a written fp32 file,
[`write_onnx_int8`][mobilenets.deploy.quantize.write_onnx_int8] from a task's graph).

Quantization is a transform on the exported graph, not a parallel model tree: the checkpoint is
exported with
[`mobilenets.deploy.onnx_export.export_onnx`][mobilenets.deploy.onnx_export.export_onnx] (BN folded,
dynamic batch), onnxruntime's ``quantize_static`` inserts QuantizeLinear/DequantizeLinear pairs (the
QDQ format) around every conv and the classifier, with activation ranges calibrated on training
images run through the checkpoint's evaluation preprocessing. The int8 file keeps the fp32 file's
metadata_props and adds the quantization settings.

Types: int8 weights, per output channel, symmetric, in the 7-bit range [-64, 64]; uint8
activations by default. On x86 onnxruntime runs U8S8 through its VNNI/AVX2 kernels; S8S8
(``activation_type="s8"``) measured 2x slower there (4.37 ms against 2.17 ms for V2 1.0/224 at
batch 1), and is what ARM prefers.

Why 7 bits: on an x86 CPU without VNNI or AMX (AVX2 alone, as many laptops and servers are),
onnxruntime's and oneDNN's int8 GEMMs multiply u8 activations by s8 weights with ``pmaddubsw``,
which adds each pair of products in int16 and saturates. With 8-bit weights a pair can reach
255 x (127 + 127) = 64,770 and is clipped, so the same file gives other answers there than on a
VNNI CPU, in the browser or in float. With weights in [-64, 64] (onnxruntime's ``reduce_range``)
a pair stays within 255 x 128 = 32,640 < 32,767: every kernel computes the file's arithmetic
exactly. [`int16_pair_bound`][mobilenets.deploy.quantize.int16_pair_bound] checks it on every
file before it is written.

onnx and onnxruntime are the ``onnx`` extra (``pip install 'mobilenets[onnx]'``), imported when a
file is quantized: this module imports without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.files import atomic_path
from mobilenets.deploy import qat
from mobilenets.deploy.onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    export_onnx,
    metadata_props,
    onnx_session,
    require_onnx,
    write_onnx,
)
from mobilenets.deploy.pipeline import Agreement, Check, ExportGraph, ExportReport, write_checked
from mobilenets.engine.checkpoint import Checkpoint

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("mobilenets")
QUANTIZING = "int8 quantization"
# our names of onnxruntime.quantization's CalibrationMethod and QuantType members
CALIBRATE_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
ACTIVATION_TYPES = {"u8": "QUInt8", "s8": "QInt8"}
DEFAULT_CALIBRATION_IMAGES = 512
DEFAULT_BATCH_SIZE = 64
CALIBRATION_SEED = 0  # the permutation of the training split the calibration images come from
QUANTIZATION_KEY = "quantization"  # the metadata_props entry the int8 file adds
# onnxruntime's reduce_range for s8 weights: 7 bits (module docstring); QAT trains on this grid
WEIGHT_RANGE = (qat.WEIGHT_QMIN, qat.WEIGHT_QMAX)
WEIGHTS = f"s8 per-channel, 7-bit range {list(WEIGHT_RANGE)}"  # as the file's metadata says
INT16_MAX = 32767  # the largest sum of a pair of int8 products that pmaddubsw keeps exact
ACTIVATION_MAGNITUDE = {"uint8": 255, "int8": 128}  # the largest |activation| of each type


@dataclass(frozen=True)
class QuantizeReport:
    path: Path
    method: str  # the calibration method: minmax, entropy or percentile
    activation_type: str  # u8 or s8; weights are always s8, per channel
    calibration_images: int
    fp32_bytes: int
    int8_bytes: int
    quantized_convs: int  # Conv nodes whose weight comes from a DequantizeLinear
    float_convs: tuple[str, ...]  # Conv nodes left in float (none expected)
    onnxruntime_version: str
    pair_bound: PairBound  # the largest pair of int8 products the weights allow (<= INT16_MAX)


@dataclass(frozen=True)
class PairBound:
    """The largest magnitude that the sum of two int8 products ``a1 * w1 + a2 * w2`` of one
    output can reach in a file, over every quantized weight tensor: the two weights of the
    same sign and largest magnitude in one output channel, times the largest activation of
    the tensor's input type (255 for u8, 128 for s8). Where it is at most ``INT16_MAX`` no
    int16 pair sum of any kernel saturates."""

    value: int
    tensor: str  # the weight initializer where it is reached ("" when the file has none)

    @property
    def fits_int16(self) -> bool:
        return self.value <= INT16_MAX


class ImageBatches:
    """Feeds float32 batches (N, C, R, R) to onnxruntime's calibrator as ``{"input": batch}``
    and counts the images it handed over. onnxruntime's ``CalibrationDataReader`` is an ABC
    that takes any class with ``get_next`` as a subclass, so this one need not import it."""

    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self._batches = iter(batches)
        self.count = 0
        self.first_shape: tuple[int, ...] = ()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        array = np.ascontiguousarray(torch.as_tensor(batch).detach().cpu().numpy(), np.float32)
        if array.ndim != 4:
            raise MobileNetsError(
                f"calibration batches must be (N, C, H, W) tensors, got shape {array.shape}"
            )
        if self.count == 0:
            self.first_shape = array.shape
        self.count += len(array)
        return {INPUT_NAME: array}


def check_options(out_path: str | os.PathLike, method: str, activation_type: str) -> None:
    """The errors a caller can make before anything is loaded, the onnx extra not installed
    among them."""
    if Path(out_path).suffix != ".onnx":
        raise MobileNetsError(f"the output must be a .onnx file, got {str(out_path)!r}")
    if method not in CALIBRATE_METHODS:
        raise MobileNetsError(
            f"calibration method must be one of {', '.join(CALIBRATE_METHODS)}, got {method!r}"
        )
    if activation_type not in ACTIVATION_TYPES:
        raise MobileNetsError(
            f"activation type must be one of {', '.join(ACTIVATION_TYPES)}, got {activation_type!r}"
        )
    require_onnx(QUANTIZING)


def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or not images.is_floating_point():
            raise MobileNetsError(
                "calibration images must be a float (N, C, H, W) tensor, got "
                f"{images.dtype} of shape {tuple(images.shape)}"
            )
        return iter(images.split(batch_size))
    return iter(images)


def quantize_ptq(
    checkpoint: Checkpoint,
    calibration_images: torch.Tensor | Iterable[torch.Tensor],
    out_path: str | os.PathLike,
    *,
    method: str = "minmax",
    activation_type: str = "u8",
    batch_size: int = DEFAULT_BATCH_SIZE,
    pre_process: bool = True,
    recorded: dict | None = None,
) -> QuantizeReport:
    """Write ``checkpoint``'s model as a static int8 ONNX file (QDQ format, dynamic batch).

    ``calibration_images`` are preprocessed float images: one (N, C, R, R) tensor, cut into
    batches of ``batch_size``, or an iterable of such batches. ``method`` picks how activation
    ranges are set from them (minmax, entropy, percentile); ``activation_type`` is u8 (the
    default, fast on x86) or s8. ``pre_process`` runs onnxruntime's quant_pre_process (shape
    inference and graph optimization) first, as its documentation recommends. ``recorded``
    adds entries to the settings stored in the file (QAT records its own there).
    """
    check_options(out_path, method, activation_type)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MobileNetsError(f"batch size must be a positive integer, got {batch_size!r}")
    out_path = Path(out_path)
    resolution = checkpoint.preprocessing.resolution
    batches = _batches(calibration_images, batch_size)  # bad images fail before the export
    first = next(batches, None)
    if first is None:
        raise MobileNetsError("no calibration images were given")
    with tempfile.TemporaryDirectory(prefix="mobilenets-quantize-") as folder:
        fp32_path = Path(folder) / "fp32.onnx"
        export_onnx(
            checkpoint.model,
            fp32_path,
            resolution=resolution,
            dynamic_batch=True,
            metadata=metadata_props(checkpoint.info(source=f"checkpoint {checkpoint.path.name}")),
        )
        return quantize_file(
            fp32_path,
            itertools.chain([first], batches),
            out_path,
            method=method,
            activation_type=activation_type,
            pre_process=pre_process,
            recorded=recorded,
        )


def quantize_file(
    fp32_path: str | os.PathLike,
    calibration: Iterable[torch.Tensor],
    out_path: str | os.PathLike,
    *,
    method: str = "minmax",
    activation_type: str = "u8",
    pre_process: bool = True,
    recorded: dict | None = None,
) -> QuantizeReport:
    """Write the fp32 ONNX file ``fp32_path`` (any task's: one float image input named
    ``input``) as a static int8 ONNX file (QDQ), with activation ranges calibrated on the
    ``calibration`` batches of preprocessed images, which run through the whole graph, so their
    batch size must be one the file accepts. Its metadata_props are kept and the settings added;
    the file is run once by onnxruntime before it takes its name."""
    check_options(out_path, method, activation_type)
    onnx = require("onnx", QUANTIZING)
    onnxruntime = require("onnxruntime", QUANTIZING)
    quantization = require("onnxruntime.quantization", QUANTIZING)
    shape_inference = require("onnxruntime.quantization.shape_inference", QUANTIZING)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:  # onnxruntime would fail later with "No data is collected"
        raise MobileNetsError("no calibration images were given")
    reader = ImageBatches(itertools.chain([first], batches))
    with tempfile.TemporaryDirectory(prefix="mobilenets-quantize-") as folder:
        int8_path = Path(folder) / "int8.onnx"
        source = fp32_path
        if pre_process:
            source = Path(folder) / "preprocessed.onnx"
            shape_inference.quant_pre_process(str(fp32_path), str(source))
        types, methods = quantization.QuantType, quantization.CalibrationMethod
        quantization.quantize_static(
            str(source),
            str(int8_path),
            reader,
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            weight_type=types.QInt8,
            reduce_range=True,
            activation_type=getattr(types, ACTIVATION_TYPES[activation_type]),
            calibrate_method=getattr(methods, CALIBRATE_METHODS[method]),
        )
        model = onnx.load(str(int8_path))
        settings = {
            "method": "ptq",
            "calibrate": method,
            "calibration_images": reader.count,
            "activations": activation_type,
            "weights": WEIGHTS,
            "format": "QDQ",
            "onnxruntime_version": onnxruntime.__version__,
        } | (recorded or {})
        copy_metadata(onnx.load(str(fp32_path), load_external_data=False), model)
        model.metadata_props.add(key=QUANTIZATION_KEY, value=json.dumps(settings))
        quantized, floating = conv_weight_sources(model)
        bound = int16_pair_bound(model)
        if not bound.fits_int16:  # onnxruntime did not keep to WEIGHT_RANGE
            raise MobileNetsError(
                f"the int8 weights of {bound.tensor!r} allow a pair of products of "
                f"{bound.value:,}, over int16's {INT16_MAX:,}: CPUs without VNNI would saturate it"
            )
        with atomic_path(out_path) as temporary:
            onnx.save(model, temporary)
            _check_runs(temporary, reader.first_shape)
            int8_bytes = os.path.getsize(temporary)
    return QuantizeReport(
        out_path,
        method,
        activation_type,
        reader.count,
        os.path.getsize(fp32_path),
        int8_bytes,
        quantized,
        floating,
        onnxruntime.__version__,
        bound,
    )


def copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """Put ``source``'s metadata_props into ``target``, replacing entries of the same key."""
    entries = {entry.key: entry.value for entry in target.metadata_props}
    entries |= {entry.key: entry.value for entry in source.metadata_props}
    del target.metadata_props[:]
    for key, value in entries.items():
        target.metadata_props.add(key=key, value=value)


def conv_weight_sources(model: onnx.ModelProto) -> tuple[int, tuple[str, ...]]:
    """How many Conv nodes take their weight from a DequantizeLinear, and the names of those
    that do not (a conv left in float)."""
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    floating = tuple(
        node.name for node in convs if producers.get(node.input[1]) != "DequantizeLinear"
    )
    return len(convs) - len(floating), floating


def int16_pair_bound(model: onnx.ModelProto) -> PairBound:
    """The [`PairBound`][mobilenets.deploy.quantize.PairBound] of ``model``: over every int8
    initializer that a DequantizeLinear turns into the weight (input 1) of a Conv, Gemm or
    MatMul, whose data input comes from a DequantizeLinear of u8 or s8 activations."""
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    worst = PairBound(0, "")
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight, data = producers.get(node.input[1]), producers.get(node.input[0])
        if weight is None or weight.op_type != "DequantizeLinear":
            continue
        if weight.input[0] not in initializers:
            continue
        values = numpy_helper.to_array(initializers[weight.input[0]]).astype(np.int64)
        magnitude = 255  # a float input, or one of unknown type: the larger bound
        if data is not None and data.op_type == "DequantizeLinear" and len(data.input) > 2:
            point = initializers.get(data.input[2])
            if point is not None:
                magnitude = ACTIVATION_MAGNITUDE.get(numpy_helper.to_array(point).dtype.name, 255)
        # one row per output: Conv and Gemm (transB) weights lead with it, MatMul's end with it
        rows = values.T if node.op_type == "MatMul" or _gemm_untransposed(node) else values
        rows = rows.reshape(rows.shape[0], -1) if rows.ndim > 1 else rows.reshape(1, -1)
        value = magnitude * _largest_same_sign_pair(rows)
        if value > worst.value:
            worst = PairBound(int(value), weight.input[0])
    return worst


def _gemm_untransposed(node) -> bool:
    return node.op_type == "Gemm" and not any(
        attribute.name == "transB" and attribute.i for attribute in node.attribute
    )


def _largest_same_sign_pair(rows: np.ndarray) -> int:
    """The largest |w1 + w2| over two weights of the same sign in one row of ``rows``."""
    if rows.shape[1] < 2:
        return int(np.abs(rows).max(initial=0))
    positive = np.sort(np.clip(rows, 0, None), axis=1)[:, -2:].sum(1)
    negative = np.sort(np.clip(-rows, 0, None), axis=1)[:, -2:].sum(1)
    return int(max(positive.max(), negative.max()))


def _check_runs(path: str | os.PathLike, shape: tuple[int, ...]) -> None:
    """Fail before the file takes its name if onnxruntime cannot load and run it on zeros of
    ``shape`` (that of a calibration batch)."""
    try:
        onnx_session(path).run(None, {INPUT_NAME: np.zeros(shape, np.float32)})
    except Exception as error:  # onnxruntime raises its own exception types
        raise MobileNetsError(f"onnxruntime cannot run the int8 model: {error}") from error


# --- Data: calibration from the training split, evaluation on the validation split -----------


def calibration_indices(size: int, count: int, seed: int = CALIBRATION_SEED) -> list[int]:
    """The first ``count`` of a seeded permutation of ``range(size)``: a fixed, class-mixed
    sample of the training split."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= size:
        raise MobileNetsError(
            f"calibration images must be from 1 to {size:,} (the training split's size), "
            f"got {count!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[:count].tolist()


def calibration_batches(dataset, indices: list[int], batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of ``dataset[(index, 0)]`` images; the dataset's transform must be deterministic
    (the evaluation preprocessing), so the seed does not matter."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        yield torch.stack([dataset[(index, 0)][0] for index in chunk])


def write_onnx_int8(
    graph: ExportGraph,
    path: str | os.PathLike,
    calibration: Iterable[torch.Tensor],
    check_fp32: Check,
    check_int8: Callable[[Path, QuantizeReport], Agreement],
    *,
    opset: int = DEFAULT_OPSET,
    method: str = "minmax",
    activation_type: str = "u8",
    recorded: dict | None = None,
) -> ExportReport:
    """``graph`` as a static int8 ONNX file: written and checked in fp32 (``check_fp32``) in a
    temporary folder, quantized by [`quantize_file`][mobilenets.deploy.quantize.quantize_file]
    on the ``calibration`` batches, and the int8 file copied to ``path`` once ``check_int8``
    (given its path and what quantize_file reported) passes. The report is the fp32 file's
    (its check) with the int8 file's path and size, and the int8 check's ``int8`` entry (or
    quantize_file's report)."""
    check_options(path, method, activation_type)
    with tempfile.TemporaryDirectory(prefix="mobilenets-int8-") as folder:
        fp32_path, int8_path = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        fp32 = write_onnx(graph, fp32_path, check_fp32, opset=opset)
        # onnxruntime prints its entropy and percentile calibration's progress: logged instead
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            quantized = quantize_file(
                fp32_path,
                calibration,
                int8_path,
                method=method,
                activation_type=activation_type,
                recorded=recorded,
            )
        if printed.getvalue().strip():
            log.debug("onnxruntime quantization: %s", printed.getvalue().strip())
        agreement, file_bytes = write_checked(
            path,
            lambda temporary: shutil.copyfile(int8_path, temporary),
            lambda written: check_int8(written, quantized),
        )
    return dataclasses.replace(
        fp32,
        path=Path(path),
        file_bytes=file_bytes,
        int8=agreement.int8 if agreement.int8 is not None else quantized,
        details={**fp32.details, **agreement.details},
    )
