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

ExecuTorch is optional: ``pip install 'mobilenets[mobile]'`` (tested with executorch 1.5.1 on
torch 2.14.1). Importing it takes several seconds, so nothing here imports it at module level.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import operator
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import installed_version, require
from mobilenets.core.files import atomic_path
from mobilenets.core.models import MobileNet
from mobilenets.core.version import __version__
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.onnx_export import check_agreement, format_shape

SUFFIX = ".pte"
TOLERANCE = 1e-4  # max abs difference of logits, ExecuTorch (XNNPACK) against PyTorch
METHOD = "forward"
# constant methods export_executorch writes itself; other metadata keys must differ from these
RESERVED_KEYS = ("model_config", "mobilenets_version", METHOD)
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
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exir = require("executorch.exir", purpose)
            runtime = require("executorch.runtime", purpose)
            partitioner = require(
                "executorch.backends.xnnpack.partition.xnnpack_partitioner", purpose
            )
            delegate = require("executorch.exir.delegate", purpose)
            portable_lib = require("executorch.extension.pybindings.portable_lib", purpose)
    finally:
        pytree_log.setLevel(level)
    return (exir, runtime, partitioner.XnnpackPartitioner, delegate.executorch_call_delegate,
            portable_lib)  # fmt: skip


def check_pte_options(path: str | os.PathLike, batch: int = 1) -> None:
    """The errors a caller can make before anything is loaded: the file name and the batch."""
    if Path(path).suffix != SUFFIX:
        raise MobileNetsError(f"the output must be a {SUFFIX} file, got {str(path)!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MobileNetsError(
            f"batch must be an integer >= 1 (a .pte program has a fixed batch), got {batch!r}"
        )


def lower_to_xnnpack(module: nn.Module, shape: tuple[int, ...],
                     metadata: dict[str, str]) -> tuple[bytes, int, tuple[str, ...]]:  # fmt: skip
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
) -> PteReport:
    """Write ``model`` as an ExecuTorch program with BN folded and its layers lowered to the
    XNNPACK delegate (the report lists any op left outside it), input float32 (batch, C,
    resolution, resolution), output the logits; then run the file with ExecuTorch's runtime
    against the unfolded PyTorch model. A max abs difference above 1e-4 raises and leaves no
    file (a previous one at ``path`` stays).

    ``metadata`` (string to string, as for export_onnx) is stored beside the model config and the
    mobilenets version as constant methods of the program; keys must be Python identifiers.
    """
    check_pte_options(path, batch)
    if not isinstance(model, MobileNet):
        raise MobileNetsError(
            f"export_executorch takes a MobileNet, got {type(model).__name__} (a checkpoint or "
            "name goes through mobilenets.deploy.onnx_export.export_source first)"
        )
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
    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    folded, bn_folded = fold_batch_norm(reference)
    shape = (batch, config.in_chans, resolution, resolution)
    buffer, partitions, outside = lower_to_xnnpack(folded, shape, metadata)
    path = Path(path)
    with atomic_path(path) as temporary:
        Path(temporary).write_bytes(buffer)
        difference = verify_pte(temporary, reference, shape)
    return PteReport(
        path, config.name, shape, len(buffer), difference, bn_folded, partitions, outside,
        executorch_version() or "?",
    )  # fmt: skip


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
    """The output of a loaded ``forward`` method on float32 ``images`` of its input shape."""
    shape = format_shape(tuple(images.shape))
    (output,) = _runtime_call(
        f"ExecuTorch could not run the program on an input {shape}",
        method.execute,
        [images.to(torch.float32).contiguous()],
    )
    return output


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


def verify_pte(path: str | os.PathLike, reference: nn.Module, shape: tuple[int, ...]) -> float:
    """The max abs difference of the ExecuTorch program's output and ``reference``'s (run in eval
    mode, then put back as it was) on the same seeded random input; raises above TOLERANCE."""
    method = load_method(load_pte(path))
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0))
    ours = run_pte(method, x).numpy()
    return check_agreement(ours, reference, x, "the ExecuTorch program", TOLERANCE)


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
