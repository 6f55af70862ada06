"""Export to ExecuTorch, PyTorch's on-device runtime: a ``.pte`` program whose layers run in the
XNNPACK delegate (the CPU kernels ExecuTorch uses on Android and iOS), checked with ExecuTorch's
own Python runtime.

[`write_pte`][mobilenets.deploy.executorch_export.write_pte] is the one ``.pte`` writer, for every
task: ``torch.export`` of the task's graph and ``executorch.exir.to_edge_transform_and_lower``
with the XNNPACK partitioner. A ``.pte`` program has fixed shapes, so the batch is fixed at export
(1 by default). The metadata (model config, preprocessing, classes, source) is stored in the
program as constant methods that return JSON strings (``read_pte_metadata`` decodes them). The
file is written under a temporary name, run with ``executorch.runtime`` against the task's
reference, and only then renamed.

[`export_executorch`][mobilenets.deploy.executorch_export.export_executorch] writes a MobileNet
classifier: BN folded
([`fold_batch_norm`][mobilenets.deploy.folding.fold_batch_norm] on a copy), and with
``int8=True`` quantized first by PT2E with ExecuTorch's XNNPACK quantizer
([`mobilenets.deploy.pt2e`][mobilenets.deploy.pt2e]); the program is then checked against that
converted module, the quantized PyTorch reference, not against the fp32 model. ``qat=`` replaces
calibration alone by PT2E quantization-aware training.

ExecuTorch is optional: ``pip install 'mobilenets[mobile]'`` (tested with executorch 1.5.1 on
torch 2.14.1). Importing it takes several seconds, so nothing here imports it at module level.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import operator
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import installed_version, require
from mobilenets.core.models import MobileNet
from mobilenets.core.version import __version__
from mobilenets.deploy import pipeline
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.onnx_export import check_agreement, format_shape
from mobilenets.deploy.pt2e import (
    SETTINGS,
    QuantizedReference,
    quantize_pt2e,
    quantize_qat_pt2e,
    quiet_imports,
)
from mobilenets.deploy.qat import QatConfig

SUFFIX = ".pte"
TOLERANCE = 1e-4  # max abs difference of logits, ExecuTorch (XNNPACK) against PyTorch
METHOD = "forward"
QUANTIZATION_KEY = "quantization"  # the constant method an int8 program adds: its settings
# constant methods export_executorch writes itself; other metadata keys must differ from these
RESERVED_KEYS = ("model_config", "mobilenets_version", QUANTIZATION_KEY, METHOD)
LOG_PREFIX = re.compile(r"^\[[\w.]+:\d+\] ")  # "[method.cpp:1243] " before a runtime log line


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
    with quiet_imports():
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


def write_pte(
    graph: pipeline.ExportGraph, path: str | os.PathLike, check: pipeline.Check, *, int8=None
) -> pipeline.ExportReport:
    """The ``.pte`` writer: ``graph`` (one input, its example's shape fixed) lowered to the
    XNNPACK delegate with its metadata as constant methods (keys must be Python identifiers),
    written under a temporary name, run by ``check`` (ExecuTorch's runtime against the task's
    reference), and only then renamed to ``path``."""
    check_pte_options(path)
    bad = sorted(key for key in graph.metadata if not key.isidentifier())
    if bad:
        raise MobileNetsError(f"metadata keys must be Python identifiers, got {bad}")
    (example,) = graph.examples
    shape = tuple(example.shape)
    buffer, partitions, outside = lower_to_xnnpack(graph.module, shape, dict(graph.metadata))
    agreement, file_bytes = pipeline.write_checked(
        path, lambda temporary: Path(temporary).write_bytes(buffer), check
    )
    return pipeline.ExportReport(
        Path(path),
        "pte",
        graph.model_name,
        shape,
        tuple(graph.output_names),
        file_bytes,
        agreement.max_abs_diff,
        graph.bn_folded,
        f"executorch {executorch_version() or '?'}",
        partitions=partitions,
        outside_delegate=outside,
        checks=dict(agreement.checks),
        int8=agreement.int8 if agreement.int8 is not None else int8,
        details=dict(agreement.details),
    )


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
) -> pipeline.ExportReport:
    """Write ``model`` as an ExecuTorch program with BN folded and its layers lowered to the
    XNNPACK delegate (the report lists any op left outside it), input float32 (batch, C,
    resolution, resolution), output the logits; then run the file with ExecuTorch's runtime
    against the unfolded PyTorch model. A max abs difference above 1e-4 raises and leaves no
    file (a previous one at ``path`` stays).

    ``metadata`` (string to string, as for export_onnx) is stored beside the model config and the
    mobilenets version as constant methods of the program; keys must be Python identifiers.

    ``int8=True`` quantizes the program (PT2E with the XNNPACK quantizer, see
    [`mobilenets.deploy.pt2e`][mobilenets.deploy.pt2e]) with activation ranges calibrated on
    ``calibration``: float (N, C, resolution, resolution) batches, preprocessed as the model's
    inputs (training images through the evaluation transform). The program is checked against
    the quantized PyTorch reference, on the first calibration images, within
    INT8_TOLERANCE_STEPS quantization steps of the logits; ``report.int8`` (an
    [`Int8Report`][mobilenets.deploy.pt2e.Int8Report]) says what was quantized and how far the
    program is from the fp32 model.

    ``qat=QatConfig(...)`` with ``int8=True`` fine-tunes a copy of the model by PT2E
    quantization-aware training on ``train_dataset`` before the conversion (see
    `quantize_qat_pt2e`; items indexed by (index, seed), the training augmentation as its
    transform); ``calibration`` then starts the activation ranges. ``model`` is not changed.
    """
    check_pte_options(path, batch)
    if not isinstance(model, MobileNet):
        raise MobileNetsError(
            f"export_executorch takes a MobileNet, got {type(model).__name__} (a checkpoint or "
            "name goes through mobilenets.tasks.classification.export.export)"
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
    metadata = pipeline.check_metadata(metadata, (), "export_executorch")
    bad = sorted(key for key in metadata if not key.isidentifier())
    if bad:
        raise MobileNetsError(f"metadata keys must be Python identifiers, got {bad}")
    metadata = pipeline.check_metadata(metadata, RESERVED_KEYS, "export_executorch")
    metadata |= {"model_config": json.dumps(config.to_dict()), "mobilenets_version": __version__}
    # NCHW weights whatever the caller's memory format: the XNNPACK lowering expects them
    reference = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    reference.eval()
    folded, bn_folded = fold_batch_norm(reference)
    shape = (batch, config.in_chans, resolution, resolution)
    int8_report = None
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if int8:
        if qat is None:
            folded, x, int8_report = quantize_pt2e(folded, calibration, shape)
        else:
            folded, x, int8_report = quantize_qat_pt2e(
                copy.deepcopy(reference), train_dataset, qat, calibration, shape, progress=progress
            )
        if not math.isfinite(int8_report.logits_scale):
            raise MobileNetsError("the logits of the int8 graph are not quantized")
        settings = SETTINGS | {"calibration_images": int8_report.calibration_images}
        if qat is not None:
            settings |= {"method": "qat", "qat": dataclasses.asdict(qat)}
        metadata[QUANTIZATION_KEY] = json.dumps(settings)
    graph = pipeline.ExportGraph(
        folded, (torch.zeros(shape),), ("input",), ("logits",), metadata, config.name, bn_folded
    )

    def check(written: Path) -> pipeline.Agreement:
        if int8_report is None:
            return pipeline.Agreement(verify_pte(written, reference, shape))
        difference = verify_pte(
            written,
            QuantizedReference(folded),
            shape,
            x=x,
            tolerance=int8_report.tolerance,
            what="the int8 ExecuTorch program",
        )
        fp32_difference = verify_pte(written, reference, shape, x=x, tolerance=math.inf)
        return pipeline.Agreement(
            difference, int8=dataclasses.replace(int8_report, fp32_max_abs_diff=fp32_difference)
        )

    return write_pte(graph, path, check)


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
