"""int8 for ExecuTorch: PyTorch's PT2E flow with ExecuTorch's XNNPACK quantizer, for every task.

``torch.export`` of the folded graph, torchao's ``prepare_pt2e`` with the ``XNNPACKQuantizer``
(int8 weights symmetric per output channel, int8 activations per tensor), calibration on images
the caller gives, ``convert_pt2e``: the converted module, whose quantize/dequantize pairs the
XNNPACK partitioner turns into int8 kernels, is what
[`write_pte`][mobilenets.deploy.executorch_export.write_pte] lowers, and the quantized PyTorch
reference ([`QuantizedReference`][mobilenets.deploy.pt2e.QuantizedReference]) the program is
checked against. ``quantize_qat_pt2e`` replaces calibration alone by quantization-aware training
(``prepare_qat_pt2e``, the loop of [`mobilenets.deploy.qat`][mobilenets.deploy.qat]).

torchao comes with executorch (the ``mobile`` extra); nothing here imports either at module level.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.models import MobileNet
from mobilenets.deploy.qat import OBSERVE_FRACTION, QatConfig, total_steps, train_steps

# An int8 program against its PT2E reference, in quantization steps of the logits (their
# calibrated range is about 255 steps). The reference rounds float results of float convolutions
# on dequantized values; XNNPACK accumulates in int32 and requantizes with its own rounding, so an
# activation now and then lands one step apart, and the layers after it carry that step on as they
# carry quantization noise: a program is about as far from its reference as the reference is from
# the fp32 model. Measured with random weights and BN statistics at 32 px: up to 2 steps for V1
# 0.25, 11 for V2 0.35 on the check input and 25 over 64 images (its reference 26 steps from
# fp32). A wrong scale, a dropped or misplaced op moves the logits by a large part of their range.
INT8_TOLERANCE_STEPS = 32
QUANTIZE = "quantized_decomposed.quantize_per_tensor"  # the PT2E ops, by their names
# What an int8 program records of its quantization (its "quantization" constant method), beside
# the calibration image count and what a task adds
SETTINGS = {
    "method": "ptq",
    "flow": "pt2e",
    "quantizer": "XNNPACKQuantizer",
    "weights": "s8 symmetric per-channel",
    "activations": "s8 per-tensor",
}


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


def require_pt2e(purpose: str):
    """torchao's PT2E entry points (``prepare_pt2e``, ``convert_pt2e``, and the switch that lets
    a converted module run in eval mode) and ExecuTorch's XNNPACK quantizer module. torchao is
    a dependency of executorch (0.18 for executorch 1.5), which its quantizer already imported."""
    with quiet_imports():
        quantizer = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", purpose)
        pt2e = importlib.import_module("torchao.quantization.pt2e")
        quantize_pt2e = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
    return quantize_pt2e, pt2e, quantizer


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree_log.setLevel(level)


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
