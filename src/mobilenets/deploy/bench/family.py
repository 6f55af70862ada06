"""The family chart's numbers: every named ImageNet classifier's batch-1 latency on this CPU, fp32
and int8 in the fastest runtime, beside its published top-1; and the "trained here" rows read
from a bench run's JSON.

A chart is one JSON-ready dict: the environment (machine, CPU flags, threads, versions), the
settings, the commit and date, and one row per variant
([`zoo_rows`][mobilenets.zoo.table.zoo_rows]' fields plus ``fp32_ms``, ``fp32_runtime``,
``int8_ms``, ``int8_runtime`` and ``front``, the precisions at which it is on the Pareto front of
published top-1 against latency). Latency does not depend on the weights, so every model has
random ones and its int8 file is calibrated on a few synthetic images: the chart measures speed,
and takes accuracy from the published records.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import installed_version
from mobilenets.core.version import __version__
from mobilenets.core.weights import saved_config
from mobilenets.deploy.bench.report import BenchRecord, environment
from mobilenets.deploy.bench.run import run_benchmarks
from mobilenets.deploy.bench.runtimes import OPENVINO, ORT, PTE
from mobilenets.deploy.bench.timing import check_count
from mobilenets.zoo.factory import cost
from mobilenets.zoo.table import family_of, zoo_rows

CHART_WARMUP = 3
CHART_ITERATIONS = 20  # batch-1 medians settle within a few percent; dozens of models in minutes
CHART_CALIBRATION_IMAGES = 4  # int8 ranges for speed only: accuracy is not measured here
PRECISIONS = ("fp32", "int8")
CHART_KIND = "mobilenets family chart"
REPOSITORY = Path(__file__).resolve().parents[4]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """The indices, in order, of the ``(latency, top1)`` points no other point dominates: none
    is at most as slow and at least as accurate, and strictly better in one (ties both stay)."""
    return [
        index
        for index, (latency, top1) in enumerate(points)
        if not any(
            other_latency <= latency
            and other_top1 >= top1
            and (other_latency, other_top1) != (latency, top1)
            for other_latency, other_top1 in points
        )
    ]


def measure_family(
    families: Sequence[str] | None = None,
    *,
    models: Sequence[str] | None = None,
    threads: int | None = None,
    warmup: int = CHART_WARMUP,
    iterations: int = CHART_ITERATIONS,
    int8: bool = True,
    openvino: bool | None = None,
    pte: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The chart of every registered classifier of ``families`` (keys such as ``"v2"``; default
    all; ``models``, shell-style patterns such as ``"*_224"``, keeps the variants whose name
    matches one): each timed at batch 1 and its native resolution by
    [`run_benchmarks`][mobilenets.deploy.bench.run.run_benchmarks] in every deployment runtime
    it supports (onnxruntime; OpenVINO when ``openvino``, by default when installed;
    ExecuTorch with ``pte``), one variant at a time, its fastest fp32 and (with ``int8``) int8
    median kept."""
    rows = zoo_rows(families)
    for pattern in models or ():
        if not any(fnmatch.fnmatchcase(row["name"], pattern) for row in rows):
            raise MobileNetsError(
                f"models: {pattern!r} matches no registered classifier of the chosen families "
                "(see mobilenets zoo)"
            )
    if models:
        rows = [row for row in rows if any(fnmatch.fnmatchcase(row["name"], p) for p in models)]
    threads = torch.get_num_threads() if threads is None else threads
    check_count("threads", threads)
    openvino = installed_version("openvino") is not None if openvino is None else openvino
    say = progress or (lambda line: None)
    commit, started = source_commit(), datetime.datetime.now(datetime.timezone.utc)
    for number, row in enumerate(rows, 1):
        say(f"[{number}/{len(rows)}] {row['name']}")
        records = run_benchmarks(
            [row["name"]],
            batches=(1,),
            threads=threads,
            warmup=warmup,
            iterations=iterations,
            int8=int8,
            pte=pte,
            openvino=openvino,
            eager=False,
            calibration_images=CHART_CALIBRATION_IMAGES,
        )
        row.update(fastest_by_precision(records))
    mark_front(rows)
    runtimes = [ORT] + [OPENVINO] * openvino + [PTE] * pte
    return {
        "kind": CHART_KIND,
        "environment": environment(threads),
        "threads": threads,
        "warmup": warmup,
        "iterations": iterations,
        "int8": int8,
        "runtimes": runtimes,
        "versions": {"mobilenets": __version__, "torch": torch.__version__},
        "commit": commit,  # of the code that measured, taken when it started
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "rows": rows,
    }


def fastest_by_precision(records: list[BenchRecord]) -> dict:
    """``fp32_ms``/``fp32_runtime`` and ``int8_ms``/``int8_runtime``: the smallest median of each
    precision (None where none was measured)."""
    fields = {}
    for precision in PRECISIONS:
        measured = [r for r in records if r.precision == precision]
        best = min(measured, key=lambda r: r.median_ms, default=None)
        fields[f"{precision}_ms"] = None if best is None else best.median_ms
        fields[f"{precision}_runtime"] = None if best is None else best.runtime
    return fields


def mark_front(rows: list[dict]) -> None:
    """Set each row's ``front``: the precisions at which the variant is on the Pareto front of
    every plotted point (published top-1 against latency, fp32 and int8 points together)."""
    points = [
        (index, precision, (row[f"{precision}_ms"], row["top1"]))
        for index, row in enumerate(rows)
        for precision in PRECISIONS
        if row.get(f"{precision}_ms") is not None and row["top1"] is not None
    ]
    for row in rows:
        row["front"] = []
    for member in pareto_front([point for _, _, point in points]):
        index, precision, _ = points[member]
        rows[index]["front"].append(precision)


def source_commit() -> str | None:
    """The short commit of the source checkout this package runs from; None outside one."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def read_chart(path: str | os.PathLike) -> dict:
    """A chart that ``--json`` wrote, checked to be one."""
    chart = _read_json(path)
    if not isinstance(chart, dict) or chart.get("kind") != CHART_KIND:
        raise MobileNetsError(
            f"{str(path)!r} is not a family chart's JSON (written by mobilenets zoo --chart --json)"
        )
    return chart


def _read_json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise MobileNetsError(f"cannot read {str(path)!r}: {error.strerror}") from error
    except ValueError as error:
        raise MobileNetsError(f"{str(path)!r} is not JSON: {error}") from error


# --- trained here -------------------------------------------------------------------------------


def trained_rows(path: str | os.PathLike) -> list[dict]:
    """One row per checkpoint of a ``mobilenets bench ... --data D --int8 --json FILE`` run:
    name, family, params and MACs (of the checkpoint's config, at its input size), fp32 and int8
    accuracy (``metric``: top-1) and the fastest batch-1 fp32 and int8 medians. A checkpoint is
    found where its record's ``source`` names it, as given to bench or beside the JSON."""
    records = _read_json(path)
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and "model" in r for r in records
    ):
        raise MobileNetsError(
            f"{str(path)!r} is not a bench run's JSON (written by mobilenets bench --json)"
        )
    grouped: dict[str, list[dict]] = {}
    for record in records:
        if record.get("batch") == 1:
            grouped.setdefault(record["model"], []).append(record)
    scored = [any(r.get("accuracy") is not None for r in group) for group in grouped.values()]
    if not grouped or not all(scored):
        raise MobileNetsError(
            f"{str(path)!r} has no accuracy at batch 1 for every model: bench the checkpoints "
            "with --data and --batch 1"
        )
    return [_trained_row(model, group, Path(path)) for model, group in grouped.items()]


def _trained_row(model: str, records: list[dict], json_path: Path) -> dict:
    checkpoint = next(
        (
            r["source"].removeprefix("checkpoint ")
            for r in records
            if r["source"].startswith("checkpoint ")
        ),
        None,
    )
    config = None if checkpoint is None else _checkpoint_config(checkpoint, json_path)
    if config is None:
        raise MobileNetsError(
            f"{model}: the bench records name no checkpoint that can be read ({checkpoint!r}); "
            "run the chart where bench ran, or keep the run folders beside the JSON"
        )
    report = cost(config)
    row = {
        "name": model,
        "arch": config.arch,
        "family": family_of(config.arch),
        "alpha": config.alpha,
        "resolution": config.resolution,
        "params": report.params,
        "macs": report.macs,
        "metric": next((r.get("metric") for r in records if r.get("metric")), "top-1"),
    }
    for precision in PRECISIONS:
        measured = [r for r in records if r["precision"] == precision]
        best = min(measured, key=lambda r: r["median_ms"], default=None)
        scored = [r["accuracy"] for r in measured if r.get("accuracy") is not None]
        row[f"{precision}_ms"] = None if best is None else best["median_ms"]
        row[f"{precision}_runtime"] = None if best is None else best["runtime"]
        row[f"{precision}_accuracy"] = max(scored, default=None)
    return row


def _checkpoint_config(checkpoint: str, json_path: Path):
    """The config a checkpoint records, looked for as given, then under each folder above the
    JSON file (bench records paths relative to where it ran)."""
    candidates = [Path(checkpoint)] + [
        parent / checkpoint for parent in json_path.resolve().parents
    ]
    for candidate in candidates:
        if candidate.is_file():
            return saved_config(candidate)
    return None
