"""CPU inference latency across runtimes, against PyTorch eager measured in the same run.

Every model is measured in PyTorch eager fp32 (channels_last, ``torch.inference_mode``): the
reference each other runtime's median is divided by, at the same batch size. A model is a
classifier, a Mobile DeepLabv3 segmenter (a registered name such as ``deeplabv3_mobilenet_v2``, at
its ``output_stride`` and ``aspp`` when given, or a segmentation checkpoint) or an SSDLite detector
(``ssdlite_mobilenet_v2`` or a detection checkpoint), measured at its input size (513 for a
registered segmenter and 320 for a registered detector unless ``resolution`` says otherwise).
Beside it onnxruntime runs the fp32 export
([`mobilenets.deploy.onnx_export.export_onnx`][mobilenets.deploy.onnx_export.export_onnx], dynamic
batch, written to a temporary folder; a detector's file returns the raw head outputs
``cls_logits`` and ``box_regression``, as its forward does, without box decoding), optionally an
int8 file made on the fly by
[`mobilenets.deploy.quantize.quantize_ptq`][mobilenets.deploy.quantize.quantize_ptq], and any
``.onnx`` file given (an int8 file written by ``mobilenets quantize``, say). The int8 file made here
is calibrated on random normal inputs: its speed is real, its accuracy means nothing. With ``pte``
(and for any ``.pte`` file given) ExecuTorch runs a program whose layers are in the XNNPACK delegate
([`export_executorch`][mobilenets.deploy.executorch_export.export_executorch]): a .pte program has a
fixed batch, so one is exported per batch size. int8 and ``pte`` export classifiers only; a
segmenter's ``.pte`` file (``export_segmenter``) is measured as any ``.pte`` file is.

Timings are wall-clock (``time.perf_counter``) per call: W untimed warm-up calls, then K timed
ones; median and 90th percentile are reported. The record with the smallest median of each model
and batch is marked ``fastest``. No argparse here: ``mobilenets bench`` and
``benchmarks/deploy_cpu.py`` call [`run_benchmarks`][mobilenets.deploy.bench.run_benchmarks].
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from mobilenets.core.detection_spec import DetectionConfig
from mobilenets.core.detector import SSDLite, load_detector, saved_detection_config
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import installed_version, require
from mobilenets.core.files import atomic_path
from mobilenets.core.models import MobileNet, build_model
from mobilenets.core.segmentation_spec import SegmentationConfig
from mobilenets.core.segmenter import DeepLabV3, load_segmenter, saved_segmentation_config
from mobilenets.core.spec import ModelConfig
from mobilenets.deploy.executorch_export import (
    QuantizedReference,
    executorch_version,
    export_executorch,
    load_method,
    load_pte,
    lower_to_xnnpack,
    pte_input_shape,
    pte_threads,
    quantize_pt2e,
    read_pte_metadata,
    require_executorch,
    require_pt2e,
    run_pte,
    verify_pte,
)
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.onnx_export import (
    BATCH_AXIS,
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    TOLERANCE,
    ExportSource,
    export_onnx,
    export_source,
    format_shape,
    onnx_session,
    read_onnx_metadata,
    require_onnx,
)
from mobilenets.deploy.quantize import quantize_file
from mobilenets.engine.checkpoint import checkpoint_path
from mobilenets.engine.device import cpu_info
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.registry import is_detector, is_segmenter
from mobilenets.zoo.segmenters import create_segmenter

EAGER = "pytorch eager"
ORT = "onnxruntime"
PTE = "executorch xnnpack"
OPENVINO = "openvino"
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger")
SYNTHETIC_NOTE = "synthetic calibration: speed only, accuracy meaningless"
DEFAULT_BATCHES = (1, 32)
DEFAULT_WARMUP = 5
DEFAULT_ITERATIONS = 30
CALIBRATION_IMAGES = 32  # random normal images for int8: enough for ranges, speed is all we use
DETECTOR_OUTPUTS = ("cls_logits", "box_regression")  # SSDLite.forward's keys, the ONNX outputs
FASTEST_MARK = "*"  # after "x faster" on the fastest row of a model and batch
HEADERS = [
    "model",
    "runtime",
    "precision",
    "batch",
    "median ms",
    "p90 ms",
    "images/s",
    "size MB",
    "latency / eager",
    "x faster",
    "accuracy",
]


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float


@dataclass(frozen=True)
class BenchRecord:
    model: str  # the model's name at the measured resolution, or the .onnx / .pte file's name
    runtime: str  # "pytorch eager", "onnxruntime", "openvino" or "executorch xnnpack"
    precision: str  # "fp32" or "int8"
    batch: int
    resolution: int
    threads: int
    median_ms: float
    p90_ms: float
    images_per_s: float  # batch / median
    size_mb: float | None  # the ONNX file; eager: the fp32 state dict as safetensors
    latency_vs_eager: float | None  # median / eager fp32 median, same model and batch
    source: str  # where the measured graph came from
    note: str = ""
    fastest: bool = False  # the smallest median of this model (input) and batch
    accuracy: float | None = None  # the validation metric of this runtime's outputs (--data)
    metric: str = ""  # its name: top-1, AP50 or mIoU

    @property
    def speedup(self) -> float | None:
        """How many times faster than eager: the inverse of latency_vs_eager."""
        return None if not self.latency_vs_eager else 1 / self.latency_vs_eager

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"speedup": self.speedup}


def measure(
    fn: Callable[[], object],
    warmup: int,
    iterations: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Median and 90th percentile (linear interpolation) in ms of ``iterations`` timed calls of
    ``fn``, after ``warmup`` untimed ones."""
    check_count("warmup", warmup, minimum=0)
    check_count("iterations", iterations)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = clock()
        fn()
        samples.append((clock() - start) * 1e3)
    return Timing(float(np.median(samples)), float(np.percentile(samples, 90)))


def check_count(label: str, value, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MobileNetsError(f"{label} must be an integer >= {minimum}, got {value!r}")


# A runtime's forward: a float batch (N, C, R, R) to the model's outputs, as a tuple in
# _Outputs' order (a classifier's or segmenter's logits; a detector's cls_logits, box_regression)
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Validation:
    """What fills the accuracy column for one model: the name of its metric, the int8
    calibration (``calibration(count, batch)``: batches of training images through the
    evaluation preprocessing) and ``score(forward, batch)``: the metric of ``forward``'s
    outputs over the validation split, fed in batches of ``batch`` images (the last one padded
    where a runtime's batch is fixed). Made by a task (``mobilenets bench --data`` makes one
    per checkpoint); bench only calls it."""

    metric: str
    calibration: Callable[[int, int], Iterable[torch.Tensor]]
    score: Callable[[Forward, int], float]


class RuntimeModel(torch.nn.Module):
    """A [`Forward`][mobilenets.deploy.bench.Forward] as the model it runs: a module whose call
    returns what the eager model's does (a detector's dict of cls_logits and box_regression,
    else the logits), for a task's own evaluation to score."""

    def __init__(self, forward: Forward, detector: bool = False) -> None:
        super().__init__()
        self.run, self.detector = forward, detector

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        outputs = self.run(images)
        if self.detector:
            return dict(zip(DETECTOR_OUTPUTS, outputs, strict=True))
        (logits,) = outputs
        return logits


# --- What is measured --------------------------------------------------------------------------


@dataclass
class _Target:
    """One input of the benchmark: the eager reference model and the ONNX and .pte files to
    run."""

    name: str
    model: torch.nn.Module | None  # None: an .onnx file whose metadata has no model config
    resolution: int
    in_chans: int
    onnx_files: list[tuple[Path, str, str, str]]  # (path, precision, source, note)
    eager_source: str  # how the eager model's weights came about
    fixed_batch: int | None = None  # an .onnx file exported without a dynamic batch, a .pte
    # (path, batch, precision, source, note): each .pte has one fixed batch
    pte_files: list[tuple[Path, int, str, str, str]] = field(default_factory=list)
    validation: Validation | None = None  # fills the accuracy column


def onnx_precision(path: Path) -> str:
    """int8 when the graph has quantization ops (QDQ or QOperator), else fp32."""
    onnx = require("onnx", "reading an ONNX file")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # a file onnxruntime loaded but onnx cannot parse is not ours
        raise MobileNetsError(f"cannot read ONNX file {str(path)!r}: {error}") from error
    return "int8" if any(node.op_type in QUANTIZED_OPS for node in graph.node) else "fp32"


def _file_target(path: Path, resolution: int | None, threads: int) -> _Target:
    """An .onnx file; its eager reference is rebuilt (random weights) from the model config
    export_onnx (or export_segmenter) writes into its metadata."""
    session = onnx_session(path, threads)  # the load error names the file first
    (graph_input,) = session.get_inputs()
    shape = graph_input.shape
    if len(shape) != 4 or not all(isinstance(dim, int) for dim in shape[1:]):
        raise MobileNetsError(
            f"{str(path)!r} takes input {shape}; a (N, C, R, R) image model is expected"
        )
    _, in_chans, height, width = shape
    if resolution is not None and resolution != height:
        raise MobileNetsError(
            f"{str(path)!r} takes {height}x{width} inputs; resolution={resolution} cannot "
            "change an ONNX file (export it again at that size)"
        )
    model = _model_from_config(read_onnx_metadata(path).get("model_config"), height)
    fixed = shape[0] if isinstance(shape[0], int) else None
    files = [(path, onnx_precision(path), f"file {path}", "")]
    eager = "random weights, from the file's model_config (speed does not depend on them)"
    return _Target(path.name, model, height, in_chans, files, eager, fixed_batch=fixed)


def _pte_file_target(path: Path, resolution: int | None) -> _Target:
    """A .pte file; its eager reference is rebuilt (random weights) from the model config
    export_executorch (or export_segmenter) stores in it."""
    shape = pte_input_shape(load_pte(path))  # the load error names the file first
    if len(shape) != 4 or shape[2] != shape[3]:
        raise MobileNetsError(
            f"{str(path)!r} takes input {shape}; a (N, C, R, R) image model is expected"
        )
    batch, in_chans, height, _ = shape
    if resolution is not None and resolution != height:
        raise MobileNetsError(
            f"{str(path)!r} takes {height}x{height} inputs; resolution={resolution} cannot "
            "change a .pte file (export it again at that size)"
        )
    model = _model_from_config(read_pte_metadata(path).get("model_config"), height)
    eager = "random weights, from the file's model_config (speed does not depend on them)"
    precision = "int8" if "quantization" in read_pte_metadata(path) else "fp32"
    return _Target(
        path.name,
        model,
        height,
        in_chans,
        [],
        eager,
        fixed_batch=batch,
        pte_files=[(path, batch, precision, f"file {path}", "")],
    )


def _model_from_config(config, resolution: int) -> torch.nn.Module | None:
    """The model (random weights) of a config an exported file records, at ``resolution``: a
    detector's (it has a backbone and extra layers), a segmenter's (a backbone) or a
    classifier's; None when the file records none."""
    if not isinstance(config, dict):
        return None
    if "backbone" in config and "extra_depths" in config:
        return SSDLite(DetectionConfig.from_dict(config).replace(resolution=resolution))
    if "backbone" in config:
        return DeepLabV3(SegmentationConfig.from_dict(config).replace(resolution=resolution))
    return build_model(ModelConfig.from_dict(config).replace(resolution=resolution))


def load_source(
    item: str | MobileNet | DeepLabV3 | SSDLite,
    resolution: int | None = None,
    *,
    output_stride: int | None = None,
    aspp: bool | None = None,
) -> ExportSource:
    """The model a bench input names, in eval mode, and the resolution to measure it at (default:
    its own). A classifier (a MobileNet, a registered name or a checkpoint) comes as
    [`export_source`][mobilenets.deploy.onnx_export.export_source] reads it; a segmenter is a
    DeepLabV3, a registered segmenter name (random weights, at ``output_stride`` and with
    ``aspp`` when given) or a checkpoint that records a segmentation config; a detector is an
    SSDLite, a registered detector name (random weights) or a checkpoint that records a
    detection config. A detector's default boxes are laid out for one input size, so at another
    ``resolution`` it is rebuilt there with the same weights."""
    if (output_stride is not None or aspp is not None) and not is_segmenter(item):
        raise MobileNetsError(
            f"output_stride and aspp apply to a registered segmenter name (such as "
            f"deeplabv3_mobilenet_v2), not to {_label(item)!r}"
        )
    if isinstance(item, SSDLite):
        model = _detector_at(item, resolution)
        return ExportSource(model.eval(), model.resolution, "the given model's weights")
    if isinstance(item, (MobileNet, DeepLabV3)):
        size = item.resolution if resolution is None else resolution
        return ExportSource(item.eval(), size, "the given model's weights")
    if is_segmenter(item):
        model = create_segmenter(
            item, output_stride=output_stride, aspp=aspp, resolution=resolution
        )
        return ExportSource(model.eval(), model.resolution, "random weights (a registered name)")
    if is_detector(item):
        model = create_detector(item, resolution=resolution)
        return ExportSource(model.eval(), model.resolution, "random weights (a registered name)")
    path = checkpoint_path(item) if Path(item).exists() else None
    if path is not None and saved_detection_config(path) is not None:
        model = _detector_at(load_detector(path), resolution)
        return ExportSource(model.eval(), model.resolution, f"checkpoint {path}")
    if path is None or saved_segmentation_config(path) is None:
        return export_source(item, resolution=resolution)
    model = load_segmenter(path).eval()
    size = model.resolution if resolution is None else resolution
    return ExportSource(model, size, f"checkpoint {path}")


def _detector_at(model: SSDLite, resolution: int | None) -> SSDLite:
    """``model``, or at another ``resolution`` the same weights in an SSDLite built for it: the
    default boxes follow the input size, the weights do not."""
    if resolution is None or resolution == model.resolution:
        return model
    rebuilt = SSDLite(model.config.replace(resolution=resolution))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def _label(item) -> str:
    return item.name if isinstance(item, (MobileNet, DeepLabV3, SSDLite)) else str(item)


def _model_target(
    source: ExportSource,
    folder: Path,
    int8: bool,
    calibration_images: int,
    pte_batches: tuple[int, ...] = (),
    validation: Validation | None = None,
) -> _Target:
    """A model to export to fp32 ONNX (and int8, and a .pte per batch in ``pte_batches``) in
    ``folder``."""
    model, resolution = source.model, source.resolution
    config = model.config.replace(resolution=resolution)
    name = config.name
    in_chans = _in_chans(config)
    stem = f"{len(list(folder.iterdir()))}-{name}"  # two inputs may share a name
    fp32 = folder / f"{stem}.fp32.onnx"
    if isinstance(model, (DeepLabV3, SSDLite)):
        _export_dense_onnx(model, fp32, resolution)
    else:
        export_onnx(model, fp32, resolution=resolution, dynamic_batch=True, check_sizes=(1,))
    files = [(fp32, "fp32", f"export_onnx of {source.weights}", "")]
    if validation is None:
        calibration = partial(_synthetic_images, (in_chans, resolution), calibration_images)
        int8_note = SYNTHETIC_NOTE
    else:
        calibration = partial(validation.calibration, calibration_images)
        int8_note = f"calibrated on {calibration_images} training images"
    if int8:
        path = folder / f"{stem}.int8.onnx"
        quantize_file(fp32, calibration(16), path)
        files.append((path, "int8", f"quantize_file of {source.weights}", int8_note))
    pte_files = []
    for batch in pte_batches:
        for precision in ("fp32", "int8") if int8 else ("fp32",):
            path = folder / f"{stem}.batch{batch}.{precision}.pte"
            _export_pte(
                model, path, resolution, batch, calibration if precision == "int8" else None
            )
            note = int8_note if precision == "int8" else ""
            pte_files.append((path, batch, precision, f"ExecuTorch of {source.weights}", note))
    return _Target(
        name,
        model,
        resolution,
        in_chans,
        files,
        source.weights,
        pte_files=pte_files,
        validation=validation,
    )


def _synthetic_images(image: tuple[int, int], count: int, batch: int):
    """``count`` seeded standard-normal images (what a normalized image roughly looks like) of
    ``image`` = (channels, side), in batches of at most ``batch``: calibration that gives int8
    its real speed and a meaningless accuracy."""
    in_chans, side = image
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, in_chans, side, side, generator=generator)
    return list(images.split(batch))


def _export_pte(model, path: Path, resolution: int, batch: int, calibration=None) -> None:
    """``model`` as an ExecuTorch program at ``batch`` (int8 by PT2E when ``calibration`` makes
    batches): a classifier by export_executorch; a segmenter's logits, or a detector's
    cls_logits and box_regression concatenated on the last axis (one output, the same
    computation), through the same lowering, checked against PyTorch before it is kept."""
    int8 = calibration is not None
    if isinstance(model, MobileNet):
        export_executorch(
            model,
            path,
            resolution=resolution,
            batch=batch,
            int8=int8,
            calibration=calibration(8) if int8 else None,
        )
        return
    config = model.config.replace(resolution=resolution)
    shape = (batch, _in_chans(config), resolution, resolution)
    reference = _Packed(_nchw(model))
    graph = _Packed(fold_batch_norm(copy.deepcopy(reference.model))[0]).eval()
    tolerance, x = None, None
    if int8:
        graph, x, report = quantize_pt2e(graph, calibration(8), shape)
        reference, tolerance = QuantizedReference(graph), report.tolerance
    buffer, _, _ = lower_to_xnnpack(graph, shape, {"model_config": json.dumps(config.to_dict())})
    with atomic_path(path) as temporary:
        Path(temporary).write_bytes(buffer)
        verify_pte(temporary, reference, shape, x=x, tolerance=tolerance)


def _nchw(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 CPU copy of ``model`` in eval mode with NCHW weights, whatever the caller's
    memory format: the XNNPACK lowering expects them."""
    copied = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    return copied.eval()


class _Packed(torch.nn.Module):
    """A segmenter's logits, or a detector's two outputs as one tensor (N, A, C + 4): a .pte
    method here is checked and run with one output."""

    def __init__(self, model: DeepLabV3 | SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        if isinstance(out, dict):
            return torch.cat([out[name] for name in DETECTOR_OUTPUTS], dim=-1)
        return out


def _in_chans(config: ModelConfig | SegmentationConfig | DetectionConfig) -> int:
    if isinstance(config, (SegmentationConfig, DetectionConfig)):
        return config.backbone.in_chans
    return config.in_chans


class _Outputs(torch.nn.Module):
    """A segmenter's or detector's forward as a tuple of tensors, in the ONNX outputs' order:
    ONNX outputs are positional, a detector's forward returns a dict."""

    def __init__(self, model: DeepLabV3 | SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out[name] for name in DETECTOR_OUTPUTS) if isinstance(out, dict) else (out,)


def _export_dense_onnx(model: DeepLabV3 | SSDLite, path: Path, resolution: int) -> None:
    """A segmenter or detector as export_onnx writes a classifier: BN folded, a dynamic batch
    (traced at batch 2, since torch.export specialises a size-1 axis), the model config in the
    metadata, every output checked against PyTorch at batch 1 before the file is kept. Its
    outputs are the forward's: a segmenter's ``logits``, a detector's raw ``cls_logits`` and
    ``box_regression`` (the boxes are not decoded; mobilenets.tasks.detection.export writes a
    detector for use). The input side is fixed, as a detector's default boxes are."""
    config = model.config.replace(resolution=resolution)
    in_chans = _in_chans(config)
    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    folded, _ = fold_batch_norm(reference)
    names = list(DETECTOR_OUTPUTS) if isinstance(model, SSDLite) else [OUTPUT_NAME]
    example = torch.zeros(2, in_chans, resolution, resolution)
    with torch.no_grad():
        program = torch.onnx.export(
            _Outputs(folded).eval(),
            (example,),
            dynamo=True,
            opset_version=DEFAULT_OPSET,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
            verbose=False,
        )
    program.model.metadata_props.update({"model_config": json.dumps(config.to_dict())})
    with atomic_path(path) as temporary:
        program.save(temporary, external_data=False)
        _check_outputs(temporary, _Outputs(reference), (1, in_chans, resolution, resolution))


def _check_outputs(path: Path, reference: _Outputs, shape: tuple[int, ...]) -> None:
    """Raise when any output of the ONNX file differs from ``reference``'s by more than
    TOLERANCE on one random input of ``shape``."""
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


def state_dict_mb(model: torch.nn.Module) -> float:
    """The fp32 state dict's size as a safetensors file, in MB."""
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    return len(safetensors_bytes(state)) / 1e6


# --- Running ---------------------------------------------------------------------------------


def run_benchmarks(
    inputs: Iterable[str | os.PathLike | MobileNet | DeepLabV3 | SSDLite],
    *,
    batches: Iterable[int] = DEFAULT_BATCHES,
    threads: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    iterations: int = DEFAULT_ITERATIONS,
    resolution: int | None = None,
    int8: bool = False,
    calibration_images: int = CALIBRATION_IMAGES,
    pte: bool = False,
    openvino: bool = False,
    output_stride: int | None = None,
    aspp: bool | None = None,
    validation: Callable[[str, int], Validation] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRecord]:
    """Time each input at each batch size: PyTorch eager fp32, then onnxruntime on each ONNX file.

    An input is a model, a registered name or a checkpoint (a .safetensors file or run folder),
    classifier, segmenter or detector ([`load_source`][mobilenets.deploy.bench.load_source];
    ``output_stride`` and ``aspp`` set a registered segmenter's), exported to fp32 ONNX with a
    dynamic batch (and, for a classifier with ``int8``, quantized on synthetic calibration), or
    an ``.onnx`` file, whose eager reference is built from the model config in its metadata.
    With ``pte`` each classifier is also exported to an ExecuTorch program (XNNPACK delegate),
    one per batch size; a ``.pte`` file is run with ExecuTorch at its own batch, beside eager
    built from the model config stored in it. With ``openvino`` every ONNX file (fp32 and QDQ
    int8 alike) is also run by OpenVINO's CPU plugin (the ``openvino`` extra).
    ``threads`` (default: torch's current setting) applies to every runtime; torch's and
    ExecuTorch's settings are restored afterwards. ``progress`` receives a line before each
    measurement. Of each input's records at one batch, the one with the smallest median has
    ``fastest`` set.

    ``validation(input, resolution)`` makes the [`Validation`][mobilenets.deploy.bench.Validation]
    of a checkpoint input (raising for one it cannot score): int8 is then calibrated on its
    training images, and every runtime's outputs are scored on its validation split, which
    fills each record's ``accuracy``.
    """
    models = (MobileNet, DeepLabV3, SSDLite)
    inputs = [item if isinstance(item, models) else str(item) for item in inputs]
    batches = list(dict.fromkeys(batches))  # in order, without repeats
    if not inputs:
        raise MobileNetsError("give at least one model name, checkpoint or .onnx file")
    if not batches:
        raise MobileNetsError("give at least one batch size")
    for batch in batches:
        check_count("batch size", batch)
    threads = torch.get_num_threads() if threads is None else threads
    check_count("threads", threads)
    check_count("warmup", warmup, minimum=0)
    check_count("iterations", iterations)
    check_count("calibration images", calibration_images)
    if resolution is not None:
        check_count("resolution", resolution)
    if pte or any(isinstance(item, str) and Path(item).suffix == ".pte" for item in inputs):
        require_executorch("measuring ExecuTorch")  # before any export
    if pte and int8:
        require_pt2e("measuring ExecuTorch int8")
    if not all(isinstance(item, str) and Path(item).suffix == ".pte" for item in inputs):
        require_onnx("measuring onnxruntime")
    if openvino:
        require("openvino", "measuring OpenVINO")
    say = progress or (lambda line: None)

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    records = []
    try:
        with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as folder:
            # every model first, so that a mistake stops the run before any export
            sources = {
                index: load_source(item, resolution, output_stride=output_stride, aspp=aspp)
                for index, item in enumerate(inputs)
                if not (isinstance(item, str) and Path(item).suffix in (".onnx", ".pte"))
            }
            checks = {}
            if validation is not None:
                files = [str(item) for index, item in enumerate(inputs) if index not in sources]
                if files:
                    raise MobileNetsError(
                        f"accuracy is measured for checkpoints, and {files[0]!r} is an exported "
                        "file: give the checkpoint it came from, or leave out the data"
                    )
                checks = {
                    index: validation(str(inputs[index]), source.resolution)
                    for index, source in sources.items()
                }
            if (output_stride is not None or aspp is not None) and not sources:
                raise MobileNetsError(
                    "output_stride and aspp apply to a segmenter name, not a file"
                )
            targets = []
            for index, item in enumerate(inputs):
                if index in sources:
                    made = ["fp32"] + ["int8"] * int8 + ["ExecuTorch fp32"] * pte
                    made += ["ExecuTorch int8"] * (pte and int8)
                    say(
                        f"exporting {_label(item)}"
                        + (f" ({', '.join(made)})" if len(made) > 1 else "")
                    )
                    pte_batches = tuple(batches) if pte else ()
                    targets.append(
                        _model_target(
                            sources[index],
                            Path(folder),
                            int8,
                            calibration_images,
                            pte_batches,
                            checks.get(index),
                        )
                    )
                elif Path(item).suffix == ".onnx":
                    targets.append(_file_target(Path(item), resolution, threads))
                else:
                    targets.append(_pte_file_target(Path(item), resolution))
            for target in targets:
                records += _bench_target(
                    target, batches, threads, warmup, iterations, say, openvino
                )
    finally:
        torch.set_num_threads(saved_threads)
    return records


class _SignalStack(ctypes.Structure):
    """Linux's ``stack_t``, as sigaltstack(2) reads and writes it."""

    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Leave the calling thread's alternate signal stack as it was before the block.

    OpenVINO's CPU plugin (2026.4) gives the thread that compiles a model a signal stack of its
    own and puts back the one it found when the model is freed. Two models freed in the order
    they were compiled (bench's fp32 and int8 files) leave the thread on the first model's
    stack after it was unmapped; the next signal handled there (Python handles SIGCHLD when a
    DataLoader worker exits) cannot be delivered and the kernel kills the process with SIGSEGV.
    Putting the previous stack back right after compiling keeps the thread on memory that
    stays mapped (faulthandler's, or none)."""
    if sys.platform != "linux":  # the struct's field order is Linux's
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    previous = _SignalStack()
    if libc.sigaltstack(None, ctypes.byref(previous)) != 0:
        yield  # cannot read it: nothing to keep
        return
    try:
        yield
    finally:
        previous.flags &= ~1  # SS_ONSTACK is reported, never set
        libc.sigaltstack(ctypes.byref(previous), None)


def openvino_model(path: Path, threads: int, precision: str = "fp32", counters: bool = False):
    """An ONNX file compiled by OpenVINO for the CPU with ``threads`` inference threads, for
    latency (one stream): a callable of one input array.

    On a CPU with AMX or AVX-512 BF16, OpenVINO's default runs every float operation in bf16,
    so an "fp32" row would not be fp32: a ``precision="fp32"`` file is compiled with an f32
    inference precision. In an int8 file the operations left in float keep the plugin's default
    (bf16 where the CPU has it), as an app deploying the file gets them. ``counters`` turns on
    the per-layer profile (``request.get_profiling_info()``)."""
    ov = require("openvino", "measuring OpenVINO")
    settings = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision == "fp32":
        settings["INFERENCE_PRECISION_HINT"] = "f32"
    if counters:
        settings["PERF_COUNT"] = True
    try:
        with kept_signal_stack():
            compiled = ov.Core().compile_model(str(path), "CPU", settings)
    except Exception as error:  # OpenVINO raises its own RuntimeError kinds for a bad file
        raise MobileNetsError(f"OpenVINO cannot compile {str(path)!r}: {error}") from error
    return compiled.create_infer_request()


def _bench_target(
    target: _Target, batches, threads, warmup, iterations, say, openvino: bool = False
) -> list[BenchRecord]:
    if target.fixed_batch is not None and any(b != target.fixed_batch for b in batches):
        again = (
            "export it again with a dynamic batch axis"
            if target.onnx_files
            else "export a .pte per batch size (its batch is fixed at export)"
        )
        raise MobileNetsError(
            f"{target.name} has a fixed batch of {target.fixed_batch}; measure it at batch "
            f"{target.fixed_batch} only, or {again}"
        )
    sessions = [(onnx_session(path, threads), path, *rest) for path, *rest in target.onnx_files]
    compiled = (
        [(openvino_model(path, threads, rest[0]), path, *rest) for path, *rest in target.onnx_files]
        if openvino
        else []
    )
    for path, *_ in target.pte_files:
        load_pte(path)  # a broken file stops the run before anything is timed
    eager = None
    size = None
    if target.model is not None:
        size = state_dict_mb(target.model)
        # a copy: the caller's model keeps its memory format (XNNPACK lowering wants NCHW)
        eager = copy.deepcopy(target.model).eval().to(memory_format=torch.channels_last)
    common = {"model": target.name, "resolution": target.resolution, "threads": threads}
    generator = torch.Generator().manual_seed(0)
    records = []
    for batch in batches:
        first = len(records)  # this batch's records start here
        shape = (batch, target.in_chans, target.resolution, target.resolution)
        images = torch.randn(shape, generator=generator)
        reference = None
        if eager is not None:
            say(f"{target.name}: {EAGER} fp32, batch {batch}")
            x = images.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                timing = measure(partial(eager, x), warmup, iterations)
            reference = timing.median_ms
            records.append(
                _record(common, EAGER, "fp32", batch, timing, size, reference, target.eager_source)
            )
        array = np.ascontiguousarray(images.numpy(), np.float32)
        for session, path, precision, source, note in sessions:
            say(f"{target.name}: {ORT} {precision}, batch {batch}")
            feed = {session.get_inputs()[0].name: array}
            output_names = [output.name for output in session.get_outputs()]
            timing = measure(partial(session.run, output_names, feed), warmup, iterations)
            size_mb = os.path.getsize(path) / 1e6
            records.append(
                _record(common, ORT, precision, batch, timing, size_mb, reference, source, note)
            )
        for request, path, precision, source, note in compiled:
            say(f"{target.name}: {OPENVINO} {precision}, batch {batch}")
            request.infer([array])  # a wrong input raises here, readably, not inside measure
            timing = measure(partial(request.infer, [array]), warmup, iterations)
            size_mb = os.path.getsize(path) / 1e6
            records.append(
                _record(
                    common, OPENVINO, precision, batch, timing, size_mb, reference, source, note
                )
            )
        for path, program_batch, precision, source, note in target.pte_files:
            if program_batch != batch:
                continue
            say(f"{target.name}: {PTE} {precision}, batch {batch}")
            x = images.contiguous()
            with pte_threads(threads):
                # loaded after the pool is resized: XNNPACK keeps the pool it was loaded with,
                # and one resized since hangs it
                method = load_method(load_pte(path))
                run_pte(method, x)  # a wrong input raises here, readably, not inside measure
                timing = measure(partial(method.execute, [x]), warmup, iterations)
            size_mb = os.path.getsize(path) / 1e6
            records.append(
                _record(common, PTE, precision, batch, timing, size_mb, reference, source, note)
            )
        records[first:] = mark_fastest(records[first:])
    if target.validation is not None:
        records = _scored(records, target, eager, sessions, compiled, say)
    return records


def _scored(records, target: _Target, eager, sessions, compiled, say):
    """``records`` with the accuracy of each runtime and precision, scored once (at every batch
    the outputs are the same)."""
    forwards = {}
    if eager is not None:
        forwards[EAGER, "fp32"] = (_Outputs(eager), 64)
    for session, _, precision, *_ in sessions:
        forwards[ORT, precision] = (partial(_run_onnx, session), 64)
    for request, _, precision, *_ in compiled:
        forwards[OPENVINO, precision] = (partial(_run_openvino, request), 64)
    for path, batch, precision, *_ in target.pte_files:
        method = load_method(load_pte(path))  # after the timing's pool resizes, see above
        forwards.setdefault(
            (PTE, precision), (partial(_run_program, method, target.model, batch), batch)
        )
    validation, scores = target.validation, {}
    for (runtime, precision), (forward, batch) in forwards.items():
        say(f"{target.name}: {validation.metric} of {runtime} {precision} on the validation split")
        with torch.inference_mode():
            scores[runtime, precision] = validation.score(forward, batch)
    return [
        dataclasses.replace(
            r, accuracy=scores.get((r.runtime, r.precision)), metric=validation.metric
        )
        for r in records
    ]


def _run_onnx(session, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images.numpy(), np.float32)}
    return tuple(torch.from_numpy(output) for output in session.run(None, feed))


def _run_openvino(request, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    results = request.infer([np.ascontiguousarray(images.numpy(), np.float32)])
    return tuple(torch.from_numpy(results[output].copy()) for output in request.model_outputs)


def _run_program(method, model, batch: int, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A .pte's output as _Outputs gives it (a detector's packed (N, A, C + 4) split again), for
    up to the program's fixed batch of ``images`` (padded with zeros, cut after)."""
    padding = images.new_zeros((batch - len(images), *images.shape[1:]))
    out = run_pte(method, torch.cat([images, padding]).contiguous())[: len(images)]
    if isinstance(model, SSDLite):
        return out[..., :-4], out[..., -4:]
    return (out,)


def mark_fastest(records: list[BenchRecord]) -> list[BenchRecord]:
    """``records`` (one model at one batch) with ``fastest`` set on the one with the smallest
    median (the first of equal ones) and cleared on the others."""
    if not records:
        return []
    best = min(range(len(records)), key=lambda i: records[i].median_ms)
    return [dataclasses.replace(r, fastest=i == best) for i, r in enumerate(records)]


def _record(common, runtime, precision, batch, timing, size_mb, reference, source, note=""):
    return BenchRecord(
        runtime=runtime,
        precision=precision,
        batch=batch,
        median_ms=timing.median_ms,
        p90_ms=timing.p90_ms,
        images_per_s=batch / (timing.median_ms / 1e3),
        size_mb=size_mb,
        latency_vs_eager=None if reference is None else timing.median_ms / reference,
        source=source,
        note=note,
        **common,
    )


# --- Reporting -------------------------------------------------------------------------------


def environment(threads: int | None = None) -> str:
    """One line naming the machine, with the CPU flags that pick the int8 kernels, and the
    libraries (onnxruntime, executorch and openvino when installed), for the head of a results
    table."""
    threads = torch.get_num_threads() if threads is None else threads
    processor = cpu_info().describe()
    onnxruntime, executorch = installed_version("onnxruntime"), executorch_version()
    openvino = installed_version("openvino")
    return (
        f"torch {torch.__version__}"
        + (f", onnxruntime {onnxruntime}" if onnxruntime else "")
        + (f", executorch {executorch}" if executorch else "")
        + (f", openvino {openvino}" if openvino else "")
        + f", {processor}, {os.cpu_count()} CPUs, {threads} thread{'' if threads == 1 else 's'}"
    )


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(records: list[BenchRecord]) -> list[list[str]]:
    """One row of HEADERS per record; the fastest of a model and batch has FASTEST_MARK after
    its x faster."""
    return [
        [
            r.model,
            r.runtime,
            r.precision,
            str(r.batch),
            f"{r.median_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.images_per_s:.1f}",
            _number(r.size_mb, ".1f"),
            _number(r.latency_vs_eager, ".3f"),
            _number(r.speedup, ".2f")
            + ("x" if r.speedup else "")
            + (FASTEST_MARK if r.fastest else ""),
            "-" if r.accuracy is None else f"{r.metric} {r.accuracy:.4f}",
        ]
        for r in records
    ]


def notes(records: list[BenchRecord]) -> list[str]:
    """The footnotes a table needs: which rows are synthetic-calibration int8, what the
    columns relative to eager mean and what marks the fastest runtime."""
    synthetic = sorted({r.model for r in records if r.note == SYNTHETIC_NOTE})
    lines = []
    if synthetic:
        lines.append(
            f"int8 of {', '.join(synthetic)}: calibrated on random normal inputs "
            "(synthetic), so only its speed means something, not its accuracy."
        )
    lines.append(
        "latency / eager: median over the PyTorch eager fp32 median of the same model and "
        "batch; x faster is its inverse."
    )
    if any(r.runtime == OPENVINO for r in records):
        lines.append(
            "OpenVINO runs fp32 files in f32; in int8 files the operations left in float run at "
            "its default precision, bf16 on CPUs with AMX or AVX-512 BF16."
        )
    if any(r.fastest for r in records):
        lines.append(
            f"A {FASTEST_MARK} after x faster marks the fastest runtime of that model and batch "
            "(the smallest median)."
        )
    return lines


def markdown_table(records: list[BenchRecord]) -> str:
    right = {
        "batch",
        "median ms",
        "p90 ms",
        "images/s",
        "size MB",
        "latency / eager",
        "x faster",
        "accuracy",
    }
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---:" if h in right else "---" for h in HEADERS) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(records)]
    return "\n".join(lines)
