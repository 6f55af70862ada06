"""A bench run: every input loaded, exported where it is a model, and each of its runtimes timed
at each batch size (and scored, with a validation), one runtime at a time."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.models import MobileNet
from mobilenets.core.segmenter import Segmenter
from mobilenets.deploy.bench.exports import CALIBRATION_IMAGES, model_target
from mobilenets.deploy.bench.report import BenchRecord, make_record, mark_fastest
from mobilenets.deploy.bench.runtimes import (
    EAGER,
    Runner,
    eager_runner,
    onnxruntime_runner,
    openvino_runner,
    pte_runner,
)
from mobilenets.deploy.bench.scoring import Validation, scored
from mobilenets.deploy.bench.sources import Target, file_target, is_file, label, load_source
from mobilenets.deploy.bench.timing import (
    DEFAULT_BATCHES,
    DEFAULT_ITERATIONS,
    DEFAULT_WARMUP,
    check_count,
)
from mobilenets.deploy.executorch_export import require_executorch
from mobilenets.deploy.onnx_export import ExportSource, require_onnx
from mobilenets.deploy.pt2e import require_pt2e

MODELS = (MobileNet, Segmenter, SSDLite)


def run_benchmarks(
    inputs: Iterable[str | os.PathLike | MobileNet | Segmenter | SSDLite],
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
    eager: bool = True,
    output_stride: int | None = None,
    aspp: bool | None = None,
    validation: Callable[[str, int], Validation] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRecord]:
    """Time each input at each batch size: PyTorch eager fp32, then onnxruntime on each ONNX file.

    An input is a model, a registered name or a checkpoint (a .safetensors file or run folder),
    classifier, segmenter or detector ([`load_source`][mobilenets.deploy.bench.sources.load_source];
    ``output_stride`` and ``aspp`` set a registered segmenter's), exported to fp32 ONNX with a
    dynamic batch (and with ``int8`` quantized, on synthetic calibration unless a validation gives
    training images), or
    an ``.onnx`` file, whose eager reference is built from the model config in its metadata.
    With ``pte`` each model is also exported to an ExecuTorch program (XNNPACK delegate),
    one per batch size; a ``.pte`` file is run with ExecuTorch at its own batch, beside eager
    built from the model config stored in it. With ``openvino`` every ONNX file (fp32 and QDQ
    int8 alike) is also run by OpenVINO's CPU plugin (the ``openvino`` extra).
    ``threads`` (default: torch's current setting) applies to every runtime; torch's and
    ExecuTorch's settings are restored afterwards. ``progress`` receives a line before each
    measurement. Of each input's records at one batch, the one with the smallest median has
    ``fastest`` set.

    ``validation(input, resolution)`` makes the
    [`Validation`][mobilenets.deploy.bench.scoring.Validation] of a checkpoint input (raising
    for one it cannot score): int8 is then calibrated on its training images, and every
    runtime's outputs are scored on its validation split, which fills each record's
    ``accuracy``.
    """
    inputs = [item if isinstance(item, MODELS) else str(item) for item in inputs]
    batches = list(dict.fromkeys(batches))  # in order, without repeats
    threads = torch.get_num_threads() if threads is None else threads
    _check_settings(inputs, batches, threads, warmup, iterations, calibration_images, resolution)
    _require_runtimes(inputs, int8=int8, pte=pte, openvino=openvino)
    say = progress or (lambda line: None)
    with _torch_threads(threads), tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as folder:
        # every model first, so that a mistake stops the run before any export
        sources = {
            index: load_source(item, resolution, output_stride=output_stride, aspp=aspp)
            for index, item in enumerate(inputs)
            if not is_file(item)
        }
        checks = _validations(inputs, sources, validation)
        if (output_stride is not None or aspp is not None) and not sources:
            raise MobileNetsError("output_stride and aspp apply to a segmenter name, not a file")
        settings = {
            "int8": int8,
            "pte_batches": tuple(batches) if pte else (),
            "calibration_images": calibration_images,
            "resolution": resolution,
            "threads": threads,
        }
        targets = [
            _target(item, sources.get(index), checks.get(index), Path(folder), say, **settings)
            for index, item in enumerate(inputs)
        ]
        return [
            record
            for target in targets
            for record in bench_target(
                target, batches, threads, warmup, iterations, say, openvino, eager
            )
        ]


def _check_settings(inputs, batches, threads, warmup, iterations, calibration_images, resolution):
    if not inputs:
        raise MobileNetsError("give at least one model name, checkpoint or .onnx file")
    if not batches:
        raise MobileNetsError("give at least one batch size")
    for batch in batches:
        check_count("batch size", batch)
    check_count("threads", threads)
    check_count("warmup", warmup, minimum=0)
    check_count("iterations", iterations)
    check_count("calibration images", calibration_images)
    if resolution is not None:
        check_count("resolution", resolution)


def _require_runtimes(inputs: list, *, int8: bool, pte: bool, openvino: bool) -> None:
    """Each runtime's extra, before anything is exported."""
    is_pte = [isinstance(item, str) and Path(item).suffix == ".pte" for item in inputs]
    if pte or any(is_pte):
        require_executorch("measuring ExecuTorch")
    if pte and int8:
        require_pt2e("measuring ExecuTorch int8")
    if not all(is_pte):
        require_onnx("measuring onnxruntime")
    if openvino:
        require("openvino", "measuring OpenVINO")


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _validations(
    inputs: list, sources: dict[int, ExportSource], validation
) -> dict[int, Validation]:
    """The Validation of every model input, by index; none without ``validation``."""
    if validation is None:
        return {}
    files = [str(item) for index, item in enumerate(inputs) if index not in sources]
    if files:
        raise MobileNetsError(
            f"accuracy is measured for checkpoints, and {files[0]!r} is an exported "
            "file: give the checkpoint it came from, or leave out the data"
        )
    return {
        index: validation(str(inputs[index]), source.resolution)
        for index, source in sources.items()
    }


def _target(
    item,
    source: ExportSource | None,
    validation: Validation | None,
    folder: Path,
    say: Callable[[str], None],
    *,
    int8: bool,
    pte_batches: tuple[int, ...],
    calibration_images: int,
    resolution: int | None,
    threads: int,
) -> Target:
    """A file input as it is; a model exported to what the settings ask for."""
    if source is None:
        return file_target(Path(item), resolution, threads)
    made = ["fp32"] + ["int8"] * int8 + ["ExecuTorch fp32"] * bool(pte_batches)
    made += ["ExecuTorch int8"] * (bool(pte_batches) and int8)
    say(f"exporting {label(item)}" + (f" ({', '.join(made)})" if len(made) > 1 else ""))
    return model_target(source, folder, int8, calibration_images, pte_batches, validation)


def bench_target(
    target: Target,
    batches,
    threads,
    warmup,
    iterations,
    say,
    openvino: bool = False,
    eager: bool = True,
) -> list[BenchRecord]:
    """The records of ``target``'s runtimes at each batch, the fastest of each batch marked,
    scored when the target has a validation."""
    _check_fixed_batch(target, batches)
    runners = open_runners(target, threads, openvino, eager)
    generator = torch.Generator().manual_seed(0)
    records = []
    for batch in batches:
        shape = (batch, target.in_chans, target.resolution, target.resolution)
        images = torch.randn(shape, generator=generator)
        timed = _time_batch(target, runners, images, threads, warmup, iterations, say)
        records += mark_fastest(timed)
    if target.validation is not None:
        records = scored(records, runners, target.validation, target.name, say)
    return records


def _check_fixed_batch(target: Target, batches) -> None:
    if target.fixed_batch is None or all(b == target.fixed_batch for b in batches):
        return
    again = (
        "export it again with a dynamic batch axis"
        if target.onnx_files
        else "export a .pte per batch size (its batch is fixed at export)"
    )
    raise MobileNetsError(
        f"{target.name} has a fixed batch of {target.fixed_batch}; measure it at batch "
        f"{target.fixed_batch} only, or {again}"
    )


def open_runners(target: Target, threads: int, openvino: bool, eager: bool = True) -> list[Runner]:
    """Eager (when the target has a model and ``eager``), then onnxruntime and OpenVINO on each
    ONNX file and ExecuTorch on each .pte; every file is loaded before anything is timed, so that
    a broken one stops the run first."""
    sessions = [
        onnxruntime_runner(path, precision, source, note, threads)
        for path, precision, source, note in target.onnx_files
    ]
    compiled = [
        openvino_runner(path, precision, source, note, threads)
        for path, precision, source, note in (target.onnx_files if openvino else [])
    ]
    programs = [
        pte_runner(path, batch, precision, source, note, threads, target.model)
        for path, batch, precision, source, note in target.pte_files
    ]
    reference = (
        [eager_runner(target.model, target.eager_source)]
        if eager and target.model is not None
        else []
    )
    return reference + sessions + compiled + programs


def _time_batch(target, runners, images, threads, warmup, iterations, say) -> list[BenchRecord]:
    """One record per runner that runs ``images``' batch, in ``runners``' order; latency is
    relative to the eager runner's, the first."""
    batch = len(images)
    common = {"model": target.name, "resolution": target.resolution, "threads": threads}
    records, reference = [], None
    for runner in runners:
        if runner.batch is not None and runner.batch != batch:
            continue
        say(f"{target.name}: {runner.runtime} {runner.precision}, batch {batch}")
        timing = runner.time(images, warmup, iterations)
        if runner.runtime == EAGER:
            reference = timing.median_ms
        records.append(
            make_record(
                common,
                runner.runtime,
                runner.precision,
                batch,
                timing,
                runner.size_mb,
                reference,
                runner.source,
                runner.note,
            )
        )
    return records
