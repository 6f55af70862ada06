"""The classifier's export adapter: a checkpoint (a ``.safetensors`` file or run folder) or a
registered name, with published weights or random ones, written as ``.onnx`` or ``.pte`` by the
deploy pipeline ([`export_onnx`][mobilenets.deploy.onnx_export.export_onnx],
[`export_executorch`][mobilenets.deploy.executorch_export.export_executorch]: the MobileNet's
graph with BN folded, its logits checked against the unfolded model) with the checkpoint's
classes, preprocessing and source in the file's metadata.
"""

from __future__ import annotations

import dataclasses
import os

from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import onnx_export
from mobilenets.deploy.export import file_format
from mobilenets.deploy.pipeline import ExportReport


def export(
    checkpoint_or_name: str | os.PathLike,
    path: str | os.PathLike,
    *,
    weights: str | None = None,
    resolution: int | None = None,
    opset: int | None = None,
    dynamic_batch: bool = False,
    batch: int = 1,
) -> ExportReport:
    """Write a classifier as an ONNX file or an ExecuTorch program, by ``path``'s suffix, and
    check it against PyTorch. ``checkpoint_or_name`` and ``weights`` are read by
    [`export_source`][mobilenets.deploy.onnx_export.export_source]; ``resolution`` defaults to
    the one the weights were evaluated at. ``opset`` and ``dynamic_batch`` apply to ONNX,
    ``batch`` (the program's fixed batch) to ``.pte``. ``report.source`` names the weights."""
    format = file_format(path)
    if format == "onnx":
        opset = onnx_export.DEFAULT_OPSET if opset is None else opset
        onnx_export.check_options(path, opset)  # before loading or downloading anything
    else:
        if opset is not None or dynamic_batch:
            option = "opset" if opset is not None else "dynamic_batch"
            raise MobileNetsError(f"{option}= applies to an ONNX file only")
        mobile.check_pte_options(path, batch)
        mobile.require_executorch("the ExecuTorch export")
    source = onnx_export.export_source(checkpoint_or_name, weights=weights, resolution=resolution)
    if format == "onnx":
        report = onnx_export.export_onnx(
            source.model,
            path,
            resolution=source.resolution,
            opset=opset,
            dynamic_batch=dynamic_batch,
            metadata=source.metadata,
        )
    else:
        report = mobile.export_executorch(
            source.model, path, resolution=source.resolution, batch=batch, metadata=source.metadata
        )
    return dataclasses.replace(report, details={**report.details, "source": source.weights})
