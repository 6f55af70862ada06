"""Export to ONNX: the one ONNX writer, and onnxruntime to check and run the files.

[`write_onnx`][mobilenets.deploy.onnx_export.write_onnx] writes any task's
[`ExportGraph`][mobilenets.deploy.pipeline.ExportGraph] with the torch.export based exporter
(``torch.onnx.export(dynamo=True)``, called in
[`onnx_program`][mobilenets.deploy.onnx_export.onnx_program] alone), its metadata in the file's
``metadata_props``, atomically, once the task's check has run it with onnxruntime.

[`export_onnx`][mobilenets.deploy.onnx_export.export_onnx] writes a MobileNet: a transform on our
own modules, not a parallel model tree.
[`fold_batch_norm`][mobilenets.deploy.folding.fold_batch_norm] folds each block's BN into the conv
before it, found by the parts' names, on a deep copy (the caller's model is never changed); the
file records the model's config, classes and preprocessing, and its logits are checked against
the unfolded PyTorch model before the file takes its final name.

onnx, onnxscript and onnxruntime are the ``onnx`` extra (``pip install 'mobilenets[onnx]'``):
they are imported where they are used, so this module imports without them.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.models import (
    MobileNet,
    build_model,
)
from mobilenets.core.version import __version__
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.pipeline import (
    Agreement,
    Check,
    ExportGraph,
    ExportReport,
    check_metadata,
    write_checked,
)
from mobilenets.engine.checkpoint import load_checkpoint, pretrained_checkpoint
from mobilenets.zoo import pretrained
from mobilenets.zoo.registry import resolve_config

if TYPE_CHECKING:
    import onnx
    import onnxruntime

# torch's ONNX ops are written for opset 18: a lower target goes through a version converter
# that fails on our graph (Reduce* axes) and then silently keeps 18. 23 is the highest opset
# torch 2.14's exporter declares (torch.onnx._constants.ONNX_MAX_OPSET). 18 is the default:
# the oldest that needs no conversion, so the file runs on the widest range of runtimes.
MIN_OPSET = 18
MAX_OPSET = 23
DEFAULT_OPSET = 18
TOLERANCE = 1e-4  # max abs difference of logits, onnxruntime against PyTorch
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
DYNAMIC_CHECK_BATCHES = (1, 3)

# the onnx extra: torch.onnx.export(dynamo=True) builds and saves the graph with onnxscript and
# onnx; onnxruntime runs the written file
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

# metadata_props keys export_onnx writes itself; values that are JSON lists or objects are
# decoded by read_onnx_metadata, the others are plain strings.
RESERVED_KEYS = ("model_config", "mobilenets_version")


@dataclass(frozen=True)
class ExportSource:
    """What to export: the model, the resolution, and metadata describing its weights."""

    model: MobileNet
    resolution: int
    weights: str  # a phrase naming where the weights came from
    metadata: dict[str, str] = field(default_factory=dict)


def graph_input_shape(model: onnx.ModelProto) -> tuple[int | str, ...]:
    """The shape of a one-input graph's input as it declares it: a name for a dynamic axis."""
    (graph_input,) = model.graph.input
    return tuple(
        dim.dim_value if dim.HasField("dim_value") else dim.dim_param
        for dim in graph_input.type.tensor_type.shape.dim
    )


def format_shape(shape: tuple[int | str, ...]) -> str:
    """``(1, 3, 224, 224)`` -> ``1x3x224x224``; a dynamic axis shows as N."""
    return "x".join(str(dim) if isinstance(dim, int) else "N" for dim in shape)


# --- Export --------------------------------------------------------------------------------------


def require_onnx(purpose: str) -> None:
    """Raise the one-line error that says to install the onnx extra unless all of its packages
    import; ``purpose`` starts the sentence (``exporting to ONNX needs onnx: pip install ...``)."""
    for package in ONNX_PACKAGES:
        require(package, purpose)


def check_options(path: str | os.PathLike, opset: int) -> None:
    """The errors a caller can make before anything is loaded: the file name, the opset, and
    the onnx extra not installed."""
    if Path(path).suffix != ".onnx":
        raise MobileNetsError(f"the output must be a .onnx file, got {str(path)!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise MobileNetsError(
            f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET} (the torch.onnx "
            f"exporter's range), got {opset!r}"
        )
    require_onnx("exporting to ONNX")


def export_onnx(
    model: MobileNet,
    path: str | os.PathLike,
    *,
    resolution: int,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    metadata: dict[str, str] | None = None,
    check_sizes: tuple[int, ...] | None = None,
) -> ExportReport:
    """Write ``model`` as an ONNX file with BN folded, input ``input`` of shape
    (1, C, resolution, resolution) (batch axis dynamic with ``dynamic_batch``) and output
    ``logits``, then check it with onnxruntime.

    ``check_sizes`` are the batch sizes run through onnxruntime and the unfolded PyTorch model
    (default: 1 and 3 with a dynamic batch, else 1); a max abs difference above 1e-4 raises and
    leaves no file. ``metadata`` adds string entries to the file's metadata_props, beside the
    model config (at the export resolution) and the mobilenets version. ``report.checks`` holds
    the difference per checked input shape.
    """
    check_options(path, opset)
    try:
        config = model.config.replace(resolution=resolution)
    except MobileNetsError as error:
        raise MobileNetsError(f"cannot export {model.name} at {resolution!r} px: {error}") from None
    if check_sizes is None:
        check_sizes = DYNAMIC_CHECK_BATCHES if dynamic_batch else (1,)
    if not dynamic_batch and tuple(check_sizes) != (1,):
        raise MobileNetsError(
            f"a fixed-shape export takes batch 1 only; check_sizes {tuple(check_sizes)} needs "
            "dynamic_batch=True"
        )
    metadata = check_metadata(metadata, RESERVED_KEYS, "export_onnx")
    metadata |= {
        "model_config": json.dumps(config.to_dict()),
        "mobilenets_version": __version__,
    }
    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    folded, bn_folded = fold_batch_norm(reference)
    # torch.export specialises a size-1 axis to the constant 1: a dynamic batch is traced at 2
    example = torch.zeros(2 if dynamic_batch else 1, config.in_chans, resolution, resolution)
    graph = ExportGraph(
        folded,
        (example,),
        (INPUT_NAME,),
        (OUTPUT_NAME,),
        metadata,
        config.name,
        bn_folded,
        dynamic_batch,
    )
    shapes = [(batch, config.in_chans, resolution, resolution) for batch in check_sizes]

    def check(written: Path) -> Agreement:
        differences = verify_onnx(written, reference, shapes)
        return Agreement(max(differences.values()), differences)

    return write_onnx(graph, path, check, opset=opset)


def onnx_program(graph: ExportGraph, opset: int = DEFAULT_OPSET):
    """The ``torch.onnx.export`` (dynamo) program of ``graph`` with its metadata: the one place
    this package calls the ONNX exporter."""
    dynamic_shapes = None
    if graph.dynamic_batch:
        batch = torch.export.Dim(BATCH_AXIS)
        dynamic_shapes = tuple({0: batch} for _ in graph.examples)
    with torch.no_grad():
        program = torch.onnx.export(
            graph.module.eval(),
            tuple(graph.examples),
            dynamo=True,
            opset_version=opset,
            input_names=list(graph.input_names),
            output_names=list(graph.output_names),
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=dict(graph.onnx_translations) or None,
            verbose=False,
        )
    program.model.metadata_props.update(graph.metadata)
    return program


def write_onnx(
    graph: ExportGraph,
    path: str | os.PathLike,
    check: Check,
    *,
    opset: int = DEFAULT_OPSET,
    int8=None,
) -> ExportReport:
    """The ONNX writer: ``graph`` exported (opset ``opset``), written under a temporary name,
    refused if torch.onnx wrote another opset, run by ``check`` (onnxruntime against the task's
    reference), and only then renamed to ``path``."""
    check_options(path, opset)
    program = onnx_program(graph, opset)
    written = []

    def write(temporary: str) -> None:
        program.save(temporary, external_data=False)
        model = _read_model(temporary)
        found = {entry.domain: entry.version for entry in model.opset_import}.get("")
        if found != opset:
            raise MobileNetsError(
                f"torch.onnx wrote opset {found} where {opset} was asked for (its version "
                f"converter gave up); the default, {DEFAULT_OPSET}, needs no conversion"
            )
        written.append(model)

    agreement, file_bytes = write_checked(path, write, check)
    return onnx_report(graph, Path(path), written[0], file_bytes, agreement, opset, int8)


def onnx_report(
    graph: ExportGraph,
    path: Path,
    model: onnx.ModelProto,
    file_bytes: int,
    agreement: Agreement,
    opset: int,
    int8=None,
) -> ExportReport:
    """The report of an ONNX file written from ``graph`` (``model``, as written)."""
    version = require("onnxruntime", "exporting to ONNX").__version__
    return ExportReport(
        path,
        "onnx",
        graph.model_name,
        graph_input_shape(model),
        tuple(graph.output_names),
        file_bytes,
        agreement.max_abs_diff,
        graph.bn_folded,
        f"onnxruntime {version}",
        opset=opset,
        checks=dict(agreement.checks),
        int8=agreement.int8 if agreement.int8 is not None else int8,
        details=dict(agreement.details),
    )


def verify_onnx(
    path: str | os.PathLike, reference: nn.Module, shapes: list[tuple[int, ...]]
) -> dict[tuple[int, ...], float]:
    """The max abs difference of onnxruntime's output (CPU) and ``reference``'s (run in eval
    mode, then put back as it was) on the same random input, per input shape; raises when one
    exceeds TOLERANCE."""
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(0)
    differences = {}
    for shape in shapes:
        x = torch.randn(tuple(shape), generator=generator)
        (ours,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        differences[tuple(shape)] = check_agreement(ours, reference, x, "the ONNX model")
    return differences


def check_agreement(
    ours: np.ndarray,
    reference: nn.Module,
    x: torch.Tensor,
    what: str,
    tolerance: float | None = None,
) -> float:
    """The max abs difference of an exported program's output ``ours`` and ``reference``'s on
    ``x`` (run in eval mode, then put back as it was); raises above ``tolerance`` (default
    TOLERANCE), naming ``what`` disagrees."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    training = reference.training
    try:
        with torch.no_grad():
            expected = reference.eval()(x).numpy()
    finally:
        reference.train(training)
    difference = float(np.abs(ours.astype(np.float64) - expected).max())
    if not difference <= tolerance:  # catches NaN too
        raise MobileNetsError(
            f"{what} disagrees with PyTorch: max abs difference {difference:.3g} at input "
            f"{format_shape(tuple(x.shape))} (allowed {tolerance:g})"
        )
    return difference


def onnx_session(
    path: str | os.PathLike, threads: int | None = None, *, optimize: bool = True
) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session on ``threads`` intra-op threads (default: what torch is
    allowed, no more), all graph optimizations; a missing or unloadable file is named.

    ``optimize=False`` turns every graph optimization off: an int8 QDQ file then runs its
    QuantizeLinear and DequantizeLinear nodes one by one and its convolutions in float, never
    fused into int8 kernels. That is the file's arithmetic emulated in float, the same on every
    CPU: the reference its int8 kernels are checked against."""
    if not Path(path).is_file():
        raise MobileNetsError(f"ONNX file {str(path)!r} does not exist")
    onnxruntime = require("onnxruntime", "running an ONNX file")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    levels = onnxruntime.GraphOptimizationLevel
    options.graph_optimization_level = levels.ORT_ENABLE_ALL if optimize else levels.ORT_DISABLE_ALL
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MobileNetsError(f"onnxruntime cannot load {str(path)!r}: {first}") from error


def _read_model(path: str | os.PathLike) -> onnx.ModelProto:
    if not Path(path).is_file():
        raise MobileNetsError(f"ONNX file {str(path)!r} does not exist")
    onnx = require("onnx", "reading an ONNX file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # OSError, or protobuf's DecodeError for a file that is not ONNX
        raise MobileNetsError(f"cannot read ONNX file {str(path)!r}: {error}") from error


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The metadata_props of an ONNX file: JSON lists and objects decoded (classes,
    preprocessing, model_config, ...), other values as the strings they are."""
    decoded = {}
    for entry in _read_model(path).metadata_props:
        value = entry.value
        if value[:1] in ("[", "{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass  # a plain string that happens to start with a bracket
        decoded[entry.key] = value
    return decoded


# --- What the CLI exports ------------------------------------------------------------------------


def export_source(
    checkpoint_or_name: str, *, weights: str | None = None, resolution: int | None = None
) -> ExportSource:
    """A checkpoint (a .safetensors file or run folder) or a registered name, with published
    ``weights`` or else random initialisation, ready for export_onnx. ``resolution`` defaults to
    the one the weights were evaluated at."""
    text = str(checkpoint_or_name)
    if Path(text).exists() or os.sep in text or Path(text).suffix in (".safetensors", ".pt"):
        if weights is not None:
            raise MobileNetsError(
                f"weights={weights!r} applies to a registered model name, not to the checkpoint "
                f"{text!r}"
            )
        checkpoint = load_checkpoint(text)
        described = f"checkpoint {checkpoint.path}"
        extra = {"source": f"checkpoint {checkpoint.path.name}"}
    elif weights is not None:
        checkpoint = pretrained_checkpoint(text, weights)
        record = checkpoint.model.weights_record
        described = f"{record.source} weights {record.tag}"
        extra = {"source": f"{record.source} {record.tag}", "weights": record.to_dict()}
    else:
        model = build_model(resolve_config(text)).eval()
        resolution = model.resolution if resolution is None else resolution
        # no weights, so no classes; inputs as torchvision's ImageNet models read them
        preprocessing = pretrained.default_preprocessing("torchvision", resolution)
        info = {"source": "random initialisation", "preprocessing": preprocessing.to_dict()}
        return ExportSource(
            model,
            resolution,
            "random weights (no published weights asked for)",
            metadata_props(info),
        )
    resolution = checkpoint.preprocessing.resolution if resolution is None else resolution
    metadata = metadata_props(checkpoint.info(resolution, **extra))
    return ExportSource(checkpoint.model, resolution, described, metadata)


def metadata_props(info: dict) -> dict[str, str]:
    """Checkpoint metadata ([`checkpoint_info`][mobilenets.engine.checkpoint.checkpoint_info]) as
    an exported file's string entries: strings as they are, other values as JSON (which
    [`read_onnx_metadata`][mobilenets.deploy.onnx_export.read_onnx_metadata] decodes)."""
    return {
        key: value if isinstance(value, str) else json.dumps(value) for key, value in info.items()
    }
