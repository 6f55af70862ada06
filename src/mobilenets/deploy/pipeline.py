"""The export pipeline's types: what a task's adapter hands a writer
([`ExportGraph`][mobilenets.deploy.pipeline.ExportGraph]: the graph, its example inputs, output
names and metadata), what the task's check of the written file finds
([`Agreement`][mobilenets.deploy.pipeline.Agreement]), and what every export returns
([`ExportReport`][mobilenets.deploy.pipeline.ExportReport]); and the one atomic write and check
([`write_checked`][mobilenets.deploy.pipeline.write_checked]) every writer goes through.

The writers are one per format ([`write_onnx`][mobilenets.deploy.onnx_export.write_onnx],
[`write_pte`][mobilenets.deploy.executorch_export.write_pte]), picked by the file's suffix in
[`mobilenets.deploy.export`][mobilenets.deploy.export].
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import atomic_path


@dataclass(frozen=True)
class ExportGraph:
    """What a task exports: ``module`` (eval mode, BN folded) run on ``examples``, its inputs and
    outputs named, ``metadata`` (string to string) stored in the file, ``model_name`` and
    ``bn_folded`` for the report. ``dynamic_batch`` makes the first axis of every input dynamic
    (ONNX only: a .pte program has fixed shapes); ``onnx_translations`` maps custom operators to
    their ONNX functions (a detector's NMS)."""

    module: nn.Module
    examples: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    metadata: Mapping[str, str]
    model_name: str
    bn_folded: int = 0
    dynamic_batch: bool = False
    onnx_translations: Mapping[Any, Callable] = field(default_factory=dict)


@dataclass(frozen=True)
class Agreement:
    """What a task's check of a written file found: the largest difference from its reference
    (None where the comparison is not one of values: a class map), per checked input shape
    where there are several, and what else the task reports (``details``); ``int8`` replaces
    the report's int8 entry where the check completes it (the int8 file against fp32)."""

    max_abs_diff: float | None
    checks: Mapping[tuple[int, ...], float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    int8: Any = None


# A check runs the file at the temporary path it is given and raises when it disagrees.
Check = Callable[[Path], Agreement]


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how well it agrees with PyTorch, for every task and format.
    A task's own entries (a detector's ``num_boxes``, a segmenter's ``differing_pixels``) are in
    ``details`` and read as attributes too (``report.num_boxes``)."""

    path: Path
    format: str  # "onnx" or "pte"
    model_name: str  # the config's name at the export resolution
    input_shape: tuple[int | str, ...]  # as the file declares it: "batch" for a dynamic axis
    output_names: tuple[str, ...]
    file_bytes: int
    max_abs_diff: float | None  # the file against its reference, the largest over the checks
    bn_folded: int
    runtime: str  # what ran the check: "onnxruntime 1.23.2", "executorch 1.5.1"
    opset: int | None = None  # ONNX only
    partitions: int | None = None  # .pte only: XNNPACK delegate calls in the program
    outside_delegate: tuple[str, ...] = ()  # .pte only: ops left to the portable kernels
    checks: Mapping[tuple[int, ...], float] = field(default_factory=dict)  # per input shape
    int8: Any = None  # an int8 file: what its runtime's quantization reported
    details: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # called only for names that are not fields: a task's entries in details
        details = self.__dict__.get("details", {})
        if name in details:
            return details[name]
        raise AttributeError(f"{type(self).__name__} has no {name!r}")

    @property
    def onnxruntime_version(self) -> str:
        return self._version("onnxruntime")

    @property
    def executorch_version(self) -> str:
        return self._version("executorch")

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    def _version(self, runtime: str) -> str:
        name, _, version = self.runtime.partition(" ")
        if name != runtime:
            raise AttributeError(f"a {self.format} file was checked by {self.runtime}")
        return version


def check_metadata(metadata: Mapping[str, str], reserved: tuple[str, ...], writer: str) -> dict:
    """``metadata`` as a dict, refused unless it maps strings to strings and leaves the
    ``reserved`` keys to ``writer``."""
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise MobileNetsError("metadata must map strings to strings (JSON-encode other values)")
    taken = sorted(set(metadata) & set(reserved))
    if taken:
        raise MobileNetsError(f"metadata keys {taken} are written by {writer} itself")
    return metadata


def write_checked(
    path: str | os.PathLike, write: Callable[[str], None], check: Check
) -> tuple[Agreement, int]:
    """``write`` the file under a temporary name beside ``path``, run ``check`` on it, and only
    then rename it to ``path``: a check that raises leaves no file (a previous one stays). The
    check's agreement and the file's size."""
    with atomic_path(path) as temporary:
        write(temporary)
        agreement = check(Path(temporary))
        file_bytes = os.path.getsize(temporary)
    return agreement, file_bytes
