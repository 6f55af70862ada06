"""The runtimes bench measures: PyTorch eager, onnxruntime, OpenVINO's CPU plugin and
ExecuTorch's XNNPACK delegate, each a [`Runner`][mobilenets.deploy.bench.runtimes.Runner] that
is timed on a batch of images and, for the accuracy column, runs as a
[`Forward`][mobilenets.deploy.bench.runtimes.Forward]."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.segmenter import Segmenter
from mobilenets.deploy.bench.timing import Timing, measure
from mobilenets.deploy.executorch_export import load_method, load_pte, pte_threads, run_pte
from mobilenets.deploy.onnx_export import onnx_session

EAGER = "pytorch eager"
ORT = "onnxruntime"
PTE = "executorch xnnpack"
OPENVINO = "openvino"
DETECTOR_OUTPUTS = ("cls_logits", "box_regression")  # SSDLite.forward's keys, the ONNX outputs
SCORE_BATCH = 64  # the batch a runtime with a dynamic batch is scored in

# A runtime's forward: a float batch (N, C, R, R) to the model's outputs, as a tuple in
# Outputs' order (a classifier's or segmenter's logits; a detector's cls_logits, box_regression)
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


class RuntimeModel(torch.nn.Module):
    """A [`Forward`][mobilenets.deploy.bench.runtimes.Forward] as the model it runs: a module
    whose call returns what the eager model's does (a detector's dict of cls_logits and
    box_regression, else the logits), for a task's own evaluation to score."""

    def __init__(self, forward: Forward, detector: bool = False) -> None:
        super().__init__()
        self.run, self.detector = forward, detector

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        outputs = self.run(images)
        if self.detector:
            return dict(zip(DETECTOR_OUTPUTS, outputs, strict=True))
        (logits,) = outputs
        return logits


class Outputs(torch.nn.Module):
    """A segmenter's or detector's forward as a tuple of tensors, in the ONNX outputs' order:
    ONNX outputs are positional, a detector's forward returns a dict."""

    def __init__(self, model: Segmenter | SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out[name] for name in DETECTOR_OUTPUTS) if isinstance(out, dict) else (out,)


@dataclass(frozen=True)
class Runner:
    """One runtime running one graph of a bench input: what its records say, how it is timed
    (``time(images, warmup, iterations)``) and what its accuracy is scored with (``forward()``:
    a Forward and the batch to feed it)."""

    runtime: str
    precision: str
    size_mb: float | None
    source: str
    note: str
    time: Callable[[torch.Tensor, int, int], Timing]
    forward: Callable[[], tuple[Forward, int]]
    batch: int | None = None  # a .pte program's fixed batch: it is timed at that batch only


def eager_runner(model: torch.nn.Module, source: str) -> Runner:
    """``model`` in PyTorch eager fp32, channels_last; its size is its state dict's."""
    # a copy: the caller's model keeps its memory format (XNNPACK lowering wants NCHW)
    eager = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    forward = Outputs(eager)
    return Runner(
        EAGER,
        "fp32",
        state_dict_mb(model),
        source,
        "",
        partial(_time_eager, eager),
        lambda: (forward, SCORE_BATCH),
    )


def onnxruntime_runner(path: Path, precision: str, source: str, note: str, threads: int) -> Runner:
    session = onnx_session(path, threads)  # the load error names the file
    return Runner(
        ORT,
        precision,
        _file_mb(path),
        source,
        note,
        partial(_time_onnx, session),
        lambda: (partial(run_onnx, session), SCORE_BATCH),
    )


def openvino_runner(path: Path, precision: str, source: str, note: str, threads: int) -> Runner:
    request = openvino_model(path, threads, precision)
    return Runner(
        OPENVINO,
        precision,
        _file_mb(path),
        source,
        note,
        partial(_time_openvino, request),
        lambda: (partial(run_openvino, request), SCORE_BATCH),
    )


def pte_runner(path: Path, batch: int, precision: str, source: str, note: str, threads: int, model):
    """A .pte program, timed at its fixed ``batch`` with ``threads`` XNNPACK threads; ``model``
    (the eager one, or None) tells a detector's packed output apart."""
    load_pte(path)  # a broken file stops the run before anything is timed

    def forward() -> tuple[Forward, int]:
        method = load_method(load_pte(path))  # after the timing's pool resizes, see _time_pte
        return partial(run_program, method, model, batch), batch

    timed = partial(_time_pte, path, threads)
    return Runner(PTE, precision, _file_mb(path), source, note, timed, forward, batch)


def _time_eager(model, images: torch.Tensor, warmup: int, iterations: int) -> Timing:
    x = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return measure(partial(model, x), warmup, iterations)


def _time_onnx(session, images: torch.Tensor, warmup: int, iterations: int) -> Timing:
    feed = {session.get_inputs()[0].name: _array(images)}
    output_names = [output.name for output in session.get_outputs()]
    return measure(partial(session.run, output_names, feed), warmup, iterations)


def _time_openvino(request, images: torch.Tensor, warmup: int, iterations: int) -> Timing:
    array = _array(images)
    request.infer([array])  # a wrong input raises here, readably, not inside measure
    return measure(partial(request.infer, [array]), warmup, iterations)


def _time_pte(path: Path, threads: int, images: torch.Tensor, warmup: int, iterations: int):
    x = images.contiguous()
    with pte_threads(threads):
        # loaded after the pool is resized: XNNPACK keeps the pool it was loaded with, and one
        # resized since hangs it
        method = load_method(load_pte(path))
        run_pte(method, x)  # a wrong input raises here, readably, not inside measure
        return measure(partial(method.execute, [x]), warmup, iterations)


def _array(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.numpy(), np.float32)


def _file_mb(path: Path) -> float:
    return os.path.getsize(path) / 1e6


def state_dict_mb(model: torch.nn.Module) -> float:
    """The fp32 state dict's size as a safetensors file, in MB."""
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    return len(safetensors_bytes(state)) / 1e6


def run_onnx(session, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    feed = {session.get_inputs()[0].name: _array(images)}
    return tuple(torch.from_numpy(output) for output in session.run(None, feed))


def run_openvino(request, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    results = request.infer([_array(images)])
    return tuple(torch.from_numpy(results[output].copy()) for output in request.model_outputs)


def run_program(method, model, batch: int, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A .pte's output as Outputs gives it (a detector's packed (N, A, C + 4) split again), for
    up to the program's fixed batch of ``images`` (padded with zeros, cut after)."""
    padding = images.new_zeros((batch - len(images), *images.shape[1:]))
    out = run_pte(method, torch.cat([images, padding]).contiguous())[: len(images)]
    if isinstance(model, SSDLite):
        return out[..., :-4], out[..., -4:]
    return (out,)


class SignalStack(ctypes.Structure):
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
    previous = SignalStack()
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
