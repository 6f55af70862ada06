"""Export to ExecuTorch, PyTorch's on-device runtime: a ``.pte`` program whose layers run in the
XNNPACK delegate (the CPU kernels ExecuTorch uses on Android and iOS), checked with ExecuTorch's
own Python runtime.

The same transform as the ONNX export
([`mobilenets.deploy.folding.fold_batch_norm`][mobilenets.deploy.folding.fold_batch_norm] on a
copy), then ``torch.export`` and ``executorch.exir.to_edge_transform_and_lower`` with the XNNPACK
partitioner. A ``.pte`` program has fixed shapes, so the batch is fixed at export (1 by default).
The model config, preprocessing, classes and source are stored in the program as constant methods
that return JSON strings (``read_pte_metadata`` decodes them). The file is written under a temporary
name, run with ``executorch.runtime`` against the unfolded PyTorch model, and only then renamed.

With ``int8=True`` the folded model is quantized first by PyTorch's PT2E flow (``torch.export``,
torchao's ``prepare_pt2e`` with ExecuTorch's ``XNNPACKQuantizer``: int8 weights symmetric per
output channel, int8 activations per tensor; calibration on images the caller gives;
``convert_pt2e``), and the converted module, whose quantize/dequantize pairs the XNNPACK
partitioner turns into int8 kernels, goes down the same lowering. The program is then checked
against that converted module, the quantized PyTorch reference, not against the fp32 model.

``qat=`` replaces calibration alone by PT2E quantization-aware training (``prepare_qat_pt2e`` on
the unfolded model, fine-tuning with the loop of [`mobilenets.deploy.qat`][mobilenets.deploy.qat],
eval mode, ``convert_pt2e``); the lowering and the check are the same.

ExecuTorch is optional: ``pip install 'mobilenets[mobile]'`` (tested with executorch 1.5.1 on
torch 2.14.1). Importing it takes several seconds, so nothing here imports it at module level.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import io
import json
import logging
import math
import operator
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import installed_version, require
from mobilenets.core.files import atomic_path
from mobilenets.core.models import MobileNet
from mobilenets.core.version import __version__
from mobilenets.data.classification import load_splits
from mobilenets.data.transforms import eval_transform, train_transform
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.onnx_export import check_agreement, format_shape
from mobilenets.deploy.qat import OBSERVE_FRACTION, QatConfig, total_steps, train_steps
from mobilenets.deploy.quantize import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CALIBRATION_IMAGES,
    calibration_batches,
    calibration_indices,
)
from mobilenets.engine.checkpoint import Checkpoint, check_classes
from mobilenets.engine.evaluate import evaluate
from mobilenets.engine.loop import ordered_loader

SUFFIX = ".pte"
TOLERANCE = 1e-4  # max abs difference of logits, ExecuTorch (XNNPACK) against PyTorch
# An int8 program against its PT2E reference, in quantization steps of the logits (their
# calibrated range is about 255 steps). The reference rounds float results of float convolutions
# on dequantized values; XNNPACK accumulates in int32 and requantizes with its own rounding, so an
# activation now and then lands one step apart, and the layers after it carry that step on as they
# carry quantization noise: a program is about as far from its reference as the reference is from
# the fp32 model. Measured with random weights and BN statistics at 32 px: up to 2 steps for V1
# 0.25, 11 for V2 0.35 on the check input and 25 over 64 images (its reference 26 steps from
# fp32). A wrong scale, a dropped or misplaced op moves the logits by a large part of their range.
INT8_TOLERANCE_STEPS = 32
METHOD = "forward"
QUANTIZATION_KEY = "quantization"  # the constant method an int8 program adds: its settings
# constant methods export_executorch writes itself; other metadata keys must differ from these
RESERVED_KEYS = ("model_config", "mobilenets_version", QUANTIZATION_KEY, METHOD)
QUANTIZE = "quantized_decomposed.quantize_per_tensor"  # the PT2E ops, by their names
LOG_PREFIX = re.compile(r"^\[[\w.]+:\d+\] ")  # "[method.cpp:1243] " before a runtime log line


@dataclass(frozen=True)
class PteReport:
    path: Path
    model_name: str  # the config's name at the export resolution
    input_shape: tuple[int, ...]
    file_bytes: int
    max_abs_diff: float  # ExecuTorch vs PyTorch on a random input of input_shape
    bn_folded: int
    partitions: int  # XNNPACK delegate calls in the program
    outside_delegate: tuple[str, ...]  # ops left to ExecuTorch's portable kernels (ideally none)
    executorch_version: str
    int8: Int8Report | None = None  # an int8 program: max_abs_diff is then against its reference


@dataclass(frozen=True)
class Int8Report:
    """What PT2E quantization did, and how the int8 program compares with the fp32 model."""

    calibration_images: int
    quantized_layers: int  # convolutions and the classifier with int8 per-channel weights
    float_layers: tuple[str, ...]  # those left in float (none expected)
    quantize_ops: int  # activation quantize ops in the converted graph
    logits_scale: float  # the quantization step of the output (NaN where it has none)
    tolerance: float  # INT8_TOLERANCE_STEPS steps of the logits
    fp32_max_abs_diff: float  # the int8 program against the fp32 model, on the same input


def executorch_version() -> str | None:
    """The installed executorch version, or None; without importing it (that takes seconds)."""
    return installed_version("executorch")


def require_executorch(purpose: str):
    """The executorch modules this file uses, or the error that says to install the mobile
    extra (``{purpose} needs executorch: pip install 'mobilenets[mobile]'``).

    Their first import logs a deprecation notice from torchao (an Enum registered with
    torch's pytree) and warns that the runtime bindings are experimental: nothing a user of
    this package can act on, so both are kept off the console during the import.
    """
    with _quiet_imports():
        exir = require("executorch.exir", purpose)
        runtime = require("executorch.runtime", purpose)
        partitioner = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", purpose)
        delegate = require("executorch.exir.delegate", purpose)
        portable_lib = require("executorch.extension.pybindings.portable_lib", purpose)
    return (
        exir,
        runtime,
        partitioner.XnnpackPartitioner,
        delegate.executorch_call_delegate,
        portable_lib,
    )


def require_pt2e(purpose: str):
    """torchao's PT2E entry points (``prepare_pt2e``, ``convert_pt2e``, and the switch that lets
    a converted module run in eval mode) and ExecuTorch's XNNPACK quantizer module. torchao is
    a dependency of executorch (0.18 for executorch 1.5), which its quantizer already imported."""
    with _quiet_imports():
        quantizer = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", purpose)
        pt2e = importlib.import_module("torchao.quantization.pt2e")
        quantize_pt2e = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
    return quantize_pt2e, pt2e, quantizer


@contextlib.contextmanager
def _quiet_imports() -> Iterator[None]:
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree_log.setLevel(level)


def check_pte_options(path: str | os.PathLike, batch: int = 1) -> None:
    """The errors a caller can make before anything is loaded: the file name and the batch."""
    if Path(path).suffix != SUFFIX:
        raise MobileNetsError(f"the output must be a {SUFFIX} file, got {str(path)!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MobileNetsError(
            f"batch must be an integer >= 1 (a .pte program has a fixed batch), got {batch!r}"
        )


def lower_to_xnnpack(
    module: nn.Module, shape: tuple[int, ...], metadata: dict[str, str]
) -> tuple[bytes, int, tuple[str, ...]]:
    """``module`` (eval mode, BN folded) exported for one float32 input of ``shape`` and lowered
    to the XNNPACK delegate, with ``metadata`` as constant methods: the program's bytes, the
    number of delegated partitions, and the ops left outside the delegate."""
    exir, _, XnnpackPartitioner, call_delegate, _ = require_executorch("the ExecuTorch export")
    with torch.no_grad():
        program = torch.export.export(module, (torch.zeros(shape),))
    lowered = exir.to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner()], constant_methods=metadata
    )
    nodes = [
        node
        for node in lowered.exported_program().graph_module.graph.nodes
        if node.op == "call_function" and node.target is not operator.getitem
    ]
    partitions = sum(node.target is call_delegate for node in nodes)
    outside = tuple(str(node.target) for node in nodes if node.target is not call_delegate)
    return lowered.to_executorch().buffer, partitions, outside


def export_executorch(
    model: MobileNet,
    path: str | os.PathLike,
    *,
    resolution: int,
    batch: int = 1,
    metadata: dict[str, str] | None = None,
    int8: bool = False,
    calibration: Iterable[torch.Tensor] | None = None,
    qat: QatConfig | None = None,
    train_dataset=None,
    progress: bool = False,
) -> PteReport:
    """Write ``model`` as an ExecuTorch program with BN folded and its layers lowered to the
    XNNPACK delegate (the report lists any op left outside it), input float32 (batch, C,
    resolution, resolution), output the logits; then run the file with ExecuTorch's runtime
    against the unfolded PyTorch model. A max abs difference above 1e-4 raises and leaves no
    file (a previous one at ``path`` stays).

    ``metadata`` (string to string, as for export_onnx) is stored beside the model config and the
    mobilenets version as constant methods of the program; keys must be Python identifiers.

    ``int8=True`` quantizes the program (PT2E with the XNNPACK quantizer, see the module's
    docstring) with activation ranges calibrated on ``calibration``: float (N, C, resolution,
    resolution) batches, preprocessed as the model's inputs (training images through the
    evaluation transform). The program is checked against the quantized PyTorch reference, on
    the first calibration images, within INT8_TOLERANCE_STEPS quantization steps of the logits;
    ``report.int8`` says what was quantized and how far the program is from the fp32 model.

    ``qat=QatConfig(...)`` with ``int8=True`` fine-tunes a copy of the model by PT2E
    quantization-aware training on ``train_dataset`` before the conversion (see
    `quantize_qat_pt2e`; items indexed by (index, seed), the training augmentation as its
    transform); ``calibration`` then starts the activation ranges. ``model`` is not changed.
    """
    check_pte_options(path, batch)
    if not isinstance(model, MobileNet):
        raise MobileNetsError(
            f"export_executorch takes a MobileNet, got {type(model).__name__} (a checkpoint or "
            "name goes through mobilenets.deploy.onnx_export.export_source first)"
        )
    if int8 != (calibration is not None):
        raise MobileNetsError(
            "int8=True needs calibration= (batches of preprocessed images)"
            if int8
            else "calibration= applies to int8=True only"
        )
    if (qat is not None) != (train_dataset is not None):
        raise MobileNetsError(
            "qat= needs train_dataset= (the training split, augmented)"
            if qat is not None
            else "train_dataset= applies to qat= only"
        )
    if qat is not None and not int8:
        raise MobileNetsError("qat= applies to int8=True only")
    if qat is not None and not isinstance(qat, QatConfig):
        raise MobileNetsError(f"qat= takes a QatConfig, got {type(qat).__name__}")
    try:
        config = model.config.replace(resolution=resolution)
    except MobileNetsError as error:
        raise MobileNetsError(f"cannot export {model.name} at {resolution!r} px: {error}") from None
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise MobileNetsError("metadata must map strings to strings (JSON-encode other values)")
    bad = sorted(key for key in metadata if not key.isidentifier())
    if bad:
        raise MobileNetsError(f"metadata keys must be Python identifiers, got {bad}")
    reserved = sorted(set(metadata) & set(RESERVED_KEYS))
    if reserved:
        raise MobileNetsError(f"metadata keys {reserved} are written by export_executorch itself")
    metadata |= {"model_config": json.dumps(config.to_dict()), "mobilenets_version": __version__}
    # NCHW weights whatever the caller's memory format: the XNNPACK lowering expects them
    reference = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    reference.eval()
    folded, bn_folded = fold_batch_norm(reference)
    shape = (batch, config.in_chans, resolution, resolution)
    int8_report = None
    if int8:
        if qat is None:
            folded, x, int8_report = quantize_pt2e(folded, calibration, shape)
        else:
            folded, x, int8_report = quantize_qat_pt2e(
                copy.deepcopy(reference), train_dataset, qat, calibration, shape, progress=progress
            )
        if not math.isfinite(int8_report.logits_scale):
            raise MobileNetsError("the logits of the int8 graph are not quantized")
        settings = {
            "method": "ptq",
            "flow": "pt2e",
            "quantizer": "XNNPACKQuantizer",
            "weights": "s8 symmetric per-channel",
            "activations": "s8 per-tensor",
            "calibration_images": int8_report.calibration_images,
        }
        if qat is not None:
            settings |= {"method": "qat", "qat": dataclasses.asdict(qat)}
        metadata[QUANTIZATION_KEY] = json.dumps(settings)
    buffer, partitions, outside = lower_to_xnnpack(folded, shape, metadata)
    path = Path(path)
    with atomic_path(path) as temporary:
        Path(temporary).write_bytes(buffer)
        if int8_report is None:
            difference = verify_pte(temporary, reference, shape)
        else:
            difference = verify_pte(
                temporary,
                QuantizedReference(folded),
                shape,
                x=x,
                tolerance=int8_report.tolerance,
                what="the int8 ExecuTorch program",
            )
            fp32_difference = verify_pte(temporary, reference, shape, x=x, tolerance=math.inf)
            int8_report = dataclasses.replace(int8_report, fp32_max_abs_diff=fp32_difference)
    return PteReport(
        path,
        config.name,
        shape,
        len(buffer),
        difference,
        bn_folded,
        partitions,
        outside,
        executorch_version() or "?",
        int8_report,
    )


def quantize_pt2e(
    folded: nn.Module, calibration: Iterable[torch.Tensor], shape: tuple[int, ...]
) -> tuple[nn.Module, torch.Tensor, Int8Report]:
    """``folded`` quantized by PT2E for XNNPACK and calibrated on ``calibration``: the converted
    module (in eval mode), an input of ``shape`` from the first calibration images
    (random where they are too few) and the report, its fp32 difference still to measure."""
    quantize, pt2e, xnnpack = require_pt2e("int8 ExecuTorch export")
    with torch.no_grad():
        captured = _capture(folded, shape)
    quantizer = xnnpack.XNNPACKQuantizer().set_global(
        xnnpack.get_symmetric_quantization_config(is_per_channel=True)
    )
    prepared = quantize.prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        count, first = _calibrate(prepared, calibration, shape)
    converted = pt2e.move_exported_model_to_eval(quantize.convert_pt2e(prepared))
    return converted, *_converted_report(converted, count, first, shape)


def quantize_qat_pt2e(
    model: MobileNet,
    train_dataset,
    config: QatConfig,
    calibration: Iterable[torch.Tensor],
    shape: tuple[int, ...],
    *,
    progress: bool = False,
) -> tuple[nn.Module, torch.Tensor, Int8Report]:
    """``model`` (unfolded, on the CPU; changed in place) fine-tuned by PT2E quantization-aware
    training for XNNPACK, then converted: as `quantize_pt2e`, with the same returns.

    The training graph keeps BN: ``prepare_qat_pt2e`` rewrites each conv and BN pair so the
    convolution reads the weight scaled by BN and fake-quantized, as ``convert_pt2e`` later folds
    it (Krishnamoorthi 2018, section 3.2); BN statistics are frozen at the checkpoint's (see
    `_freeze_batch_norm`), BN's scale and shift train. Activation ranges start
    from ``calibration`` (BN on its running statistics); they and the per-channel weight ranges
    then move with the training batches (moving averages of min/max) for the first half of the
    steps and freeze for the second, as in [`mobilenets.deploy.qat`][mobilenets.deploy.qat], so
    the weights settle on fixed grids. The loop is `mobilenets.deploy.qat.train_steps` with
    ``config``."""
    total_steps(len(train_dataset), config)  # a split smaller than a batch fails before export
    quantize, pt2e, xnnpack = require_pt2e("int8 ExecuTorch export")
    captured = _capture(model.train(), shape)  # dropout trains; BN is frozen below
    quantizer = xnnpack.XNNPACKQuantizer().set_global(
        xnnpack.get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    )
    prepared = quantize.prepare_qat_pt2e(captured, quantizer)
    pt2e.move_exported_model_to_eval(prepared)
    with torch.no_grad():
        count, first = _calibrate(prepared, calibration, shape)
    pt2e.move_exported_model_to_train(prepared)
    _freeze_batch_norm(prepared)

    def freeze_ranges(step: int, total: int) -> None:
        if step == math.ceil(OBSERVE_FRACTION * total):
            prepared.apply(pt2e.disable_observer)

    train_steps(prepared, train_dataset, config, before_step=freeze_ranges, progress=progress)
    # BN on its running statistics and dropout off before convert_pt2e folds BN
    pt2e.move_exported_model_to_eval(prepared)
    converted = pt2e.move_exported_model_to_eval(quantize.convert_pt2e(prepared))
    return converted, *_converted_report(converted, count, first, shape)


def _freeze_batch_norm(graph: torch.fx.GraphModule) -> None:
    """BN of a training graph on its running statistics, which stay as they are, while dropout
    still trains: the PT2E QAT tutorial's switch, the ``training`` argument of each batch-norm
    node. A fraction of an epoch of augmented batches would only move the statistics the
    checkpoint was trained with, and the batch statistics would scale the weights that are
    fake-quantized differently from the running ones convert_pt2e folds in."""
    for node in graph.graph.nodes:
        if node.target is torch.ops.aten.batch_norm.default:
            node.args = (*node.args[:5], False, *node.args[6:])  # (input, ..., training, ...)
    graph.recompile()


def _capture(module: nn.Module, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """``module`` exported with a dynamic batch, so that calibration and training batches of any
    size run through the captured graph."""
    batch = torch.export.Dim("batch", min=1)
    example = torch.zeros((2, *shape[1:]))
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},)).module()


def _calibrate(
    prepared: nn.Module, calibration: Iterable[torch.Tensor], shape: tuple[int, ...]
) -> tuple[int, torch.Tensor]:
    """Run the ``calibration`` batches through ``prepared``: the image count and the first
    ``shape[0]`` images (the check input)."""
    count, first = 0, torch.empty((0, *shape[1:]))
    for images in calibration:
        images = torch.as_tensor(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != shape[1:]:
            raise MobileNetsError(
                f"calibration batches must be float (N, {', '.join(map(str, shape[1:]))}) "
                f"tensors, got {images.dtype} of shape {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise MobileNetsError(f"calibration images must be float, got {images.dtype}")
        images = images.to("cpu", torch.float32)
        prepared(images)
        if len(first) < shape[0]:
            first = torch.cat([first, images[: shape[0] - len(first)]])
        count += len(images)
    if count == 0:
        raise MobileNetsError("calibration= gave no images")
    return count, first


def _converted_report(
    converted: nn.Module, count: int, first: torch.Tensor, shape: tuple[int, ...]
) -> tuple[torch.Tensor, Int8Report]:
    """The check input (``first``, then seeded random) and the report of a converted graph."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[: len(first)] = first
    quantized, floating = weight_sources(converted)
    quantize_ops = sum(str(node.target).startswith(QUANTIZE) for node in converted.graph.nodes)
    scale = logits_scale(converted)
    report = Int8Report(
        count, quantized, floating, quantize_ops, scale, INT8_TOLERANCE_STEPS * scale, math.nan
    )
    return x, report


class QuantizedReference(nn.Module):
    """A converted PT2E graph, in eval mode for good, as a module that ``check_agreement`` can
    put in eval mode and back (the graph itself refuses ``train()`` and ``eval()``)."""

    def __init__(self, converted: nn.Module) -> None:
        super().__init__()
        self.converted = converted

    def train(self, mode: bool = True) -> QuantizedReference:
        self.training = mode  # the graph's dropout and BN were fixed when it was converted
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.converted(x)


def weight_sources(converted: nn.Module) -> tuple[int, tuple[str, ...]]:
    """How many convolutions and linear layers of a converted PT2E graph take their weight from
    a per-channel dequantize, and the names of those that do not (left in float)."""
    layers = [
        node
        for node in converted.graph.nodes
        if node.op == "call_function"
        and node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
    ]
    floating = tuple(
        node.name
        for node in layers
        if not str(getattr(node.args[1], "target", "")).startswith(
            "quantized_decomposed.dequantize_per_channel"
        )
    )
    return len(layers) - len(floating), floating


def logits_scale(converted: nn.Module) -> float:
    """The quantization step of a converted graph's output: the scale of the dequantize it
    comes from, through ops of one tensor input that keep values in their range (a segmenter's
    upsampling). NaN when there is none (outputs computed in float from several tensors, as a
    detector's decoded boxes), where a caller sets its own tolerance."""
    (output,) = (node for node in converted.graph.nodes if node.op == "output")
    leaves = []
    torch.fx.node.map_arg(output.args, leaves.append)
    if len(leaves) != 1:
        return math.nan
    (node,) = leaves
    while not str(node.target).startswith("quantized_decomposed.dequantize_per_tensor"):
        inputs = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
        if node.op != "call_function" or len(inputs) != 1 or not _keeps_range(node):
            return math.nan
        (node,) = inputs
    return float(node.args[1])


def _keeps_range(node: torch.fx.Node) -> bool:
    name = str(node.target)
    return any(kind in name for kind in ("upsample", "interpolate", "view", "reshape", "clone"))


# --- int8 from a checkpoint: calibration on its training split, top-1 on its validation split


@dataclass(frozen=True)
class PteInt8Result:
    """What ``mobilenets export --format pte --int8`` reports: the file and both models' top-1."""

    report: PteReport
    fp32_top1: float
    int8_top1: float
    count: int  # validation images


def export_checkpoint_int8(
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
    check_pte_options(path)
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
    report = export_executorch(
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
        program = load_pte(path)
        self.shape = pte_input_shape(program)
        self.method = load_method(program)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.shape[1:]:
            raise MobileNetsError(
                f"the program takes images {format_shape(self.shape[1:])}, got "
                f"{format_shape(tuple(images.shape[1:]))}"
            )
        batch, outputs = self.shape[0], []
        for chunk in images.split(batch):
            padding = chunk.new_zeros((batch - len(chunk), *self.shape[1:]))
            outputs.append(run_pte(self.method, torch.cat([chunk, padding]))[: len(chunk)])
        return torch.cat(outputs)


# --- Running a .pte file ---------------------------------------------------------------------


def load_pte(path: str | os.PathLike):
    """The loaded ExecuTorch program at ``path`` (an ``executorch.runtime.Program``); a missing
    or unloadable file is named."""
    _, runtime, *_ = require_executorch("running a .pte file")
    if not Path(path).is_file():
        raise MobileNetsError(f"ExecuTorch file {str(path)!r} does not exist")
    program = _runtime_call(
        f"ExecuTorch cannot load {str(path)!r}", runtime.Runtime.get().load_program, Path(path)
    )
    if METHOD not in program.method_names:
        raise MobileNetsError(
            f"{str(path)!r} has no {METHOD!r} method (it has {sorted(program.method_names)})"
        )
    return program


def pte_input_shape(program) -> tuple[int, ...]:
    """The one input's shape, fixed when the program was exported."""
    meta = program.metadata(METHOD)
    if meta.num_inputs() != 1:
        raise MobileNetsError(f"expected a program with one input, it has {meta.num_inputs()}")
    return tuple(meta.input_tensor_meta(0).sizes())


def load_method(program, name: str = METHOD):
    """A method of a loaded program, ready to execute (XNNPACK sets itself up here)."""
    return _runtime_call(f"ExecuTorch cannot load method {name!r}", program.load_method, name)


def run_pte(method, images: torch.Tensor) -> torch.Tensor:
    """The output of a loaded ``forward`` method of one output on float32 ``images`` of its input
    shape."""
    outputs = run_pte_outputs(method, images)
    if len(outputs) != 1:
        raise MobileNetsError(
            f"the program has {len(outputs)} outputs where one was expected (run_pte_outputs "
            "returns them all)"
        )
    return outputs[0]


def run_pte_outputs(method, images: torch.Tensor) -> list[torch.Tensor]:
    """All outputs of a loaded ``forward`` method on float32 ``images`` of its input shape (a
    detector's boxes and scores)."""
    shape = format_shape(tuple(images.shape))
    return list(
        _runtime_call(
            f"ExecuTorch could not run the program on an input {shape}",
            method.execute,
            [images.to(torch.float32).contiguous()],
        )
    )


def _runtime_call(failure: str, function, *args):
    """``function(*args)`` with ExecuTorch's runtime log collected. The runtime writes it to
    sys.stderr: CPU probing and thread pool notes on success, the reason on a failure (the
    RuntimeError itself only carries an error code). A failure raises ``failure``, the error
    and the log lines; a success stays quiet."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log):
            return function(*args)
    except RuntimeError as error:
        lines = [LOG_PREFIX.sub("", line) for line in log.getvalue().splitlines() if line.strip()]
        reason = f" ({'; '.join(lines)})" if lines else ""
        raise MobileNetsError(f"{failure}: {error}{reason}") from error


def verify_pte(
    path: str | os.PathLike,
    reference: nn.Module,
    shape: tuple[int, ...],
    *,
    x: torch.Tensor | None = None,
    tolerance: float | None = None,
    what: str = "the ExecuTorch program",
) -> float:
    """The max abs difference of the ExecuTorch program's output and ``reference``'s (run in eval
    mode, then put back as it was) on the same input ``x`` (default: seeded random of ``shape``);
    raises above ``tolerance`` (default TOLERANCE), naming ``what`` disagrees."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    method = load_method(load_pte(path))
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0)) if x is None else x
    ours = run_pte(method, x).numpy()
    return check_agreement(ours, reference, x, what, tolerance)


def read_pte_metadata(path: str | os.PathLike) -> dict:
    """The constant methods export_executorch stored: JSON lists and objects decoded
    (model_config, preprocessing, classes, ...), other values as the strings they are."""
    program = load_pte(path)
    decoded = {}
    for name in sorted(program.method_names - {METHOD}):
        values = _runtime_call(f"cannot read {name!r}", load_method(program, name).execute, [])
        if len(values) != 1 or not isinstance(values[0], str):
            continue  # a constant that is not ours (export_executorch writes only strings)
        value = values[0]
        if value[:1] in ("[", "{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass  # a plain string that happens to start with a bracket
        decoded[name] = value
    return decoded


@contextlib.contextmanager
def pte_threads(threads: int) -> Iterator[None]:
    """ExecuTorch's thread pool (which XNNPACK runs on) at ``threads`` threads, restored after."""
    *_, portable_lib = require_executorch("running a .pte file")
    saved = portable_lib._threadpool_get_thread_count()
    reset = portable_lib._unsafe_reset_threadpool  # "unsafe" only while a method runs
    _runtime_call("ExecuTorch cannot resize its thread pool", reset, threads)
    try:
        yield
    finally:
        _runtime_call("ExecuTorch cannot resize its thread pool", reset, saved)
