"""The one export pipeline: a task's adapter builds an
[`ExportGraph`][mobilenets.deploy.pipeline.ExportGraph] and a check, and
[`write`][mobilenets.deploy.export.write] hands them to the writer of the file's format, which
writes it atomically, runs the check and returns the one
[`ExportReport`][mobilenets.deploy.pipeline.ExportReport]. A new format is one writer and one
row of [`WRITERS`][mobilenets.deploy.export.WRITERS]; no task changes.
"""

from __future__ import annotations

import os
from pathlib import Path

from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy.executorch_export import write_pte
from mobilenets.deploy.onnx_export import write_onnx
from mobilenets.deploy.pipeline import Check, ExportGraph, ExportReport

# the format of each suffix and its writer
WRITERS = {".onnx": ("onnx", write_onnx), ".pte": ("pte", write_pte)}


def file_format(path: str | os.PathLike) -> str:
    """``"onnx"`` or ``"pte"``, by ``path``'s suffix; any other suffix is refused."""
    suffix = Path(path).suffix
    if suffix not in WRITERS:
        raise MobileNetsError(
            f"the output must be a {' or '.join(WRITERS)} file, got {str(path)!r}"
        )
    return WRITERS[suffix][0]


def write(
    graph: ExportGraph,
    path: str | os.PathLike,
    check: Check,
    *,
    opset: int | None = None,
    int8=None,
) -> ExportReport:
    """``graph`` written to ``path`` by the writer of its suffix and checked by ``check`` (see
    [`write_checked`][mobilenets.deploy.pipeline.write_checked]). ``opset`` applies to ONNX only
    (default 18); ``int8`` is what the file's quantization reported, for the report."""
    format = file_format(path)  # refuses a suffix no writer has
    writer = WRITERS[Path(path).suffix][1]
    if opset is not None and format != "onnx":
        raise MobileNetsError(f"opset={opset!r} applies to an ONNX file only, not to {str(path)!r}")
    options = {} if opset is None else {"opset": opset}
    return writer(graph, path, check, int8=int8, **options)
