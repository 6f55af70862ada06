"""The results of a bench run: one record per runtime, precision and batch, the fastest of each
model and batch marked, and the table, its notes and the environment line that head it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from mobilenets.core.extras import installed_version
from mobilenets.deploy.bench.runtimes import OPENVINO
from mobilenets.deploy.bench.timing import Timing
from mobilenets.deploy.executorch_export import executorch_version
from mobilenets.engine.device import cpu_info

SYNTHETIC_NOTE = "synthetic calibration: speed only, accuracy meaningless"
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
RIGHT_ALIGNED = set(HEADERS[3:])  # in Markdown: batch and the columns after it


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


def make_record(
    common: dict,
    runtime: str,
    precision: str,
    batch: int,
    timing: Timing,
    size_mb: float | None,
    reference: float | None,
    source: str,
    note: str = "",
) -> BenchRecord:
    """The record of one timing; ``common`` holds the model, resolution and threads, and
    ``reference`` the eager fp32 median of the same model and batch (None: no eager model)."""
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


def mark_fastest(records: list[BenchRecord]) -> list[BenchRecord]:
    """``records`` (one model at one batch) with ``fastest`` set on the one with the smallest
    median (the first of equal ones) and cleared on the others."""
    if not records:
        return []
    best = min(range(len(records)), key=lambda i: records[i].median_ms)
    return [dataclasses.replace(r, fastest=i == best) for i, r in enumerate(records)]


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
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---:" if h in RIGHT_ALIGNED else "---" for h in HEADERS) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(records)]
    return "\n".join(lines)
