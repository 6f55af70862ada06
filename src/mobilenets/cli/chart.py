"""``zoo --chart``: the family chart, "On your CPU" (every named variant's published top-1 against
the latency measured here) and "Trained here" (``--trained``, from a bench run's JSON).

The measurement needs the onnx extra and the plot the plots extra, so both are imported when the
chart is drawn; the defaults its flags show are repeated here, and tests/cli checks that they are
the library's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilenets.cli.arguments import add_timing_arguments
from mobilenets.cli.common import format_table, millions, output_file, published
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import atomic_path, write_json

CHART_SUFFIXES = (".png", ".pdf", ".svg")
CHART_ITERATIONS = 20
CHART_WARMUP = 3
CHART_HEADERS = [
    "variant",
    "family",
    "params M",
    "MACs M",
    "top-1",
    "fp32 ms",
    "int8 ms",
    "runtime fp32 / int8",
    "front",
]
TRAINED_HEADERS = [
    "model",
    "family",
    "params M",
    "MACs M",
    "fp32 acc",
    "int8 acc",
    "fp32 ms",
    "int8 ms",
    "runtime fp32 / int8",
]
# the chart's flags and their defaults: given without --chart, they are an error
CHART_ONLY = {
    "chart_json": None,
    "chart_markdown": None,
    "chart_from": None,
    "trained": None,
    "models": None,
    "threads": None,
    "warmup": CHART_WARMUP,
    "iterations": CHART_ITERATIONS,
    "int8": True,
    "openvino": None,
    "pte": False,
}


def add_chart_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "family chart",
        "--chart FILE measures every named variant of the chosen families (--family) on this "
        "CPU, batch 1 at its native resolution, random weights, and draws its published "
        "ImageNet top-1 against the fastest fp32 and int8 latency, the Pareto front marked",
    )
    group.add_argument(
        "--chart",
        metavar="FILE",
        help=f"draw the family chart into FILE, ending in {', '.join(CHART_SUFFIXES)}; the "
        "table printed is the chart's (with --json: the chart as JSON)",
    )
    group.add_argument(
        "--chart-json", metavar="FILE", help="also write the chart's numbers to FILE as JSON"
    )
    group.add_argument(
        "--chart-markdown", metavar="FILE", help="also write the chart's table to FILE in Markdown"
    )
    group.add_argument(
        "--chart-from",
        metavar="JSON",
        help="draw the chart from a JSON file that --chart-json wrote, without measuring",
    )
    group.add_argument(
        "--trained",
        metavar="BENCH_JSON",
        help="draw 'trained here' instead: test accuracy (fp32 and int8) against params, MACs "
        "and latency, from the JSON of 'mobilenets bench RUN... --data D --int8 --batch 1 "
        "--json BENCH_JSON' (the run folders where bench found them)",
    )
    group.add_argument(
        "--models",
        nargs="+",
        metavar="PATTERN",
        help="only the variants whose name matches one of these shell patterns, e.g. '*_224' "
        "(default: every variant of the families)",
    )
    add_timing_arguments(group, warmup=CHART_WARMUP, iterations=CHART_ITERATIONS)
    group.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also an int8 ONNX file of each model, calibrated on 4 random images: its speed "
        "only (default: on)",
    )
    group.add_argument(
        "--openvino",
        action=argparse.BooleanOptionalAction,
        help="also OpenVINO on each ONNX file (default: when installed)",
    )
    group.add_argument(
        "--pte",
        action="store_true",
        help="also ExecuTorch (XNNPACK): one export per model, minutes more (mobilenets[mobile])",
    )


def check_chart_arguments(args: argparse.Namespace) -> None:
    """The chart's flags need --chart (or the chart's JSON file), and the file a known suffix."""
    if args.chart is None:
        given = [flag for flag in CHART_ONLY if _given(args, flag)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise MobileNetsError(f"{flag} draws or measures the family chart: add --chart FILE")
        return
    if Path(args.chart).suffix.lower() not in CHART_SUFFIXES:
        raise MobileNetsError(
            f"--chart takes a file ending in {', '.join(CHART_SUFFIXES)}, got {args.chart!r}"
        )
    if args.trained is not None and args.chart_from is not None:
        raise MobileNetsError("--trained and --chart-from draw different charts: give one")


def _given(args: argparse.Namespace, flag: str) -> bool:
    return getattr(args, flag) != CHART_ONLY[flag]


def run_chart(args: argparse.Namespace) -> None:
    from mobilenets.deploy.bench import family
    from mobilenets.engine.family_plots import plot_family_chart, plot_trained

    if args.trained is not None:
        rows = family.trained_rows(args.trained)
        print(json.dumps(rows, indent=1) if args.json else trained_text(rows))
        _write_outputs(args, rows, trained_markdown(rows))
        plot_trained(rows, args.chart)
        print(f"wrote {args.chart}", file=sys.stderr if args.json else sys.stdout)
        return
    if args.chart_from is not None:
        chart = family.read_chart(args.chart_from)
    else:
        _check_writable(args.chart, args.chart_json, args.chart_markdown)
        chart = family.measure_family(
            args.family,
            models=args.models,
            threads=args.threads,
            warmup=args.warmup,
            iterations=args.iterations,
            int8=args.int8,
            openvino=args.openvino,
            pte=args.pte,
            progress=lambda line: print(line, file=sys.stderr),
        )
    print(json.dumps(chart, indent=1) if args.json else chart_text(chart))
    _write_outputs(args, chart, chart_markdown(chart))
    plot_family_chart(chart, args.chart)
    print(f"wrote {args.chart}", file=sys.stderr if args.json else sys.stdout)


def _write_outputs(args: argparse.Namespace, numbers, markdown: str) -> None:
    """--chart-json and --chart-markdown, each written atomically; "wrote" goes to stderr when
    stdout is JSON."""
    out = sys.stderr if args.json else sys.stdout
    if args.chart_json:
        with output_file(args.chart_json) as path:
            write_json(path, numbers)
        print(f"wrote {args.chart_json}", file=out)
    if args.chart_markdown:
        with output_file(args.chart_markdown) as path, atomic_path(path) as temporary:
            Path(temporary).write_text(markdown + "\n")
        print(f"wrote {args.chart_markdown}", file=out)


def _check_writable(*paths: str | None) -> None:
    """Each output's folder exists, before minutes of measuring."""
    for path in paths:
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise MobileNetsError(f"cannot write {path!r}: its folder does not exist")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _runtimes(row: dict) -> str:
    return f"{row['fp32_runtime'] or '-'} / {row['int8_runtime'] or '-'}"


def chart_cells(chart: dict) -> list[list[str]]:
    """One row of CHART_HEADERS per variant."""
    return [
        [
            row["name"],
            row["family"],
            millions(row["params"]),
            millions(row["macs"], 1),
            published(row["top1"], ".1f"),
            _ms(row["fp32_ms"]),
            _ms(row["int8_ms"]),
            _runtimes(row),
            " + ".join(row["front"]) or "-",
        ]
        for row in chart["rows"]
    ]


def trained_cells(rows: list[dict]) -> list[list[str]]:
    return [
        [
            row["name"],
            row["family"],
            millions(row["params"]),
            millions(row["macs"], 1),
            published(row["fp32_accuracy"], ".4f"),
            published(row["int8_accuracy"], ".4f"),
            _ms(row["fp32_ms"]),
            _ms(row["int8_ms"]),
            _runtimes(row),
        ]
        for row in rows
    ]


def chart_notes(chart: dict) -> list[str]:
    unpublished = [row["name"] for row in chart["rows"] if row["top1"] is None]
    lines = [
        f"{chart['environment']}; median of {chart['iterations']} batch-1 runs after "
        f"{chart['warmup']} warm-up, the fastest of {', '.join(chart['runtimes'])}; "
        f"mobilenets {chart['versions']['mobilenets']}, commit {chart['commit'] or 'unknown'}, "
        f"{chart['date']}.",
        "top-1: the best published ImageNet top-1 of a weights file of this exact variant (or "
        "TF-slim's table); the int8 point is plotted at it too (int8 accuracy is not measured "
        "here). front: the precisions at which the variant is on the Pareto front.",
    ]
    if unpublished:
        lines.append(f"Not plotted, no published top-1: {', '.join(unpublished)}.")
    return lines


def chart_text(chart: dict) -> str:
    return "\n\n".join(
        [format_table(CHART_HEADERS, chart_cells(chart)), "\n".join(chart_notes(chart))]
    )


def _markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    """The name, family, runtime and front columns left-aligned, the numbers right-aligned."""
    left = {"variant", "model", "family", "runtime fp32 / int8", "front"}
    align = ["---" if header in left else "---:" for header in headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def chart_markdown(chart: dict) -> str:
    table = _markdown_table(CHART_HEADERS, chart_cells(chart))
    return table + "\n\n" + "\n\n".join(chart_notes(chart))


TRAINED_NOTE = (
    "acc: test accuracy of the checkpoint in PyTorch/onnxruntime fp32 and onnxruntime int8; "
    "ms: the fastest batch-1 median of each precision; params and MACs of the trained model at "
    "its input size."
)


def trained_text(rows: list[dict]) -> str:
    return format_table(TRAINED_HEADERS, trained_cells(rows)) + "\n\n" + TRAINED_NOTE


def trained_markdown(rows: list[dict]) -> str:
    return _markdown_table(TRAINED_HEADERS, trained_cells(rows)) + "\n\n" + TRAINED_NOTE
