"""``bench``: the CPU latency of models in PyTorch and in each runtime, and their accuracy there.

The library module needs the onnx extra, so the command imports it when it runs (see the
package's docstring); the defaults its flags show are repeated here, and tests/cli checks that
they are the library's.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from mobilenets.cli.arguments import add_timing_arguments
from mobilenets.cli.common import add_command, format_table, output_file, save_json
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.segmentation_spec import SEGMENTATION_OUTPUT_STRIDES

BENCH_BATCHES = (1, 32)
BENCH_WARMUP = 5
BENCH_ITERATIONS = 30
BENCH_DATA_CALIBRATION = 256  # training images for int8 when --data gives them


def add_commands(commands) -> None:
    add_bench(commands)


# --- bench --------------------------------------------------------------------------------------


def add_bench(commands) -> None:
    parser = add_command(
        commands,
        "bench",
        run_bench,
        help="CPU latency: PyTorch eager fp32 against onnxruntime fp32 / int8, ExecuTorch",
        description="Time classifiers, segmenters and detectors on the CPU, the median and 90th "
        "percentile per batch, in PyTorch eager and in each runtime, in one process on the same "
        "inputs; a * marks the fastest runtime of each model and batch.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="MODEL_OR_FILE",
        help="a registered name (random weights: a classifier, a segmenter such as "
        "deeplabv3_mobilenet_v2 or the detector ssdlite_mobilenet_v2), a checkpoint or run "
        "folder, an .onnx file or a .pte file (ExecuTorch, at the batch it was exported with)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=list(BENCH_BATCHES),
        metavar="B",
        help=f"batch sizes (default {' '.join(map(str, BENCH_BATCHES))})",
    )
    add_timing_arguments(parser, warmup=BENCH_WARMUP, iterations=BENCH_ITERATIONS)
    parser.add_argument(
        "--resolution",
        type=int,
        metavar="R",
        help="input side in pixels (default: the model's own; 513 for a registered segmenter, "
        "320 for a registered detector)",
    )
    parser.add_argument(
        "--output-stride",
        type=int,
        choices=SEGMENTATION_OUTPUT_STRIDES,
        metavar="OS",
        help="a registered segmenter's output stride, 8 or 16 (default: the name's, 16)",
    )
    parser.add_argument(
        "--aspp",
        action=argparse.BooleanOptionalAction,
        help="a registered segmenter with (--aspp) or without (--no-aspp) the atrous branches "
        "(default: the name's; deeplabv3_mobilenet_v2 has none)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also an int8 ONNX file of each model (and with --pte an int8 .pte), calibrated "
        "on random inputs (speed only) or, with --data, on training images",
    )
    parser.add_argument(
        "--pte",
        action="store_true",
        help="also ExecuTorch (XNNPACK delegate) of each model: one .pte per batch size "
        "(needs mobilenets[mobile]; each export takes a while)",
    )
    parser.add_argument(
        "--data",
        metavar="SPEC",
        help="fill the accuracy column: each checkpoint's validation split of SPEC scored in "
        "every runtime (top-1, detection AP50 or mIoU), int8 calibrated on its training split",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help="int8 calibration images (default 32 random ones; with --data 256 training images)",
    )
    parser.add_argument(
        "--openvino",
        action="store_true",
        help="also OpenVINO (CPU plugin) on every ONNX file, fp32 and int8 (needs "
        "mobilenets[openvino])",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the records to FILE as JSON")
    parser.add_argument(
        "--markdown", metavar="FILE", help="also write the table to FILE in Markdown"
    )


def run_bench(args: argparse.Namespace) -> None:
    from mobilenets.deploy import bench

    validation, calibration = None, args.calibration_images
    if args.data is not None:
        validation = functools.partial(bench_validation, data=args.data)
        calibration = BENCH_DATA_CALIBRATION if calibration is None else calibration
    records = bench.run_benchmarks(
        args.inputs,
        batches=args.batch,
        threads=args.threads,
        warmup=args.warmup,
        iterations=args.iterations,
        resolution=args.resolution,
        int8=args.int8,
        pte=args.pte,
        openvino=args.openvino,
        output_stride=args.output_stride,
        aspp=args.aspp,
        calibration_images=bench.CALIBRATION_IMAGES if calibration is None else calibration,
        validation=validation,
        progress=(lambda line: print(line, file=sys.stderr)) if sys.stderr.isatty() else None,
    )
    head = (
        f"{bench.environment(args.threads)}; median and p90 of {args.iterations} runs after "
        f"{args.warmup} warm-up"
    )
    print(head)
    print(format_table(bench.HEADERS, bench.table_rows(records)))
    print("\n" + "\n".join(bench.notes(records)))
    if args.json:
        save_json(args.json, [record.to_dict() for record in records])
    if args.markdown:
        markdown = "\n\n".join([head, bench.markdown_table(records), *bench.notes(records)])
        with output_file(args.markdown) as path:
            path.write_text(markdown + "\n")
        print(f"wrote {args.markdown}")


def bench_validation(item: str, resolution: int, data: str):
    """The accuracy column's scorer of one bench input: its task's, from its checkpoint."""
    from mobilenets.core.detector import saved_detection_config
    from mobilenets.core.segmenter import saved_segmentation_config
    from mobilenets.engine.checkpoint import checkpoint_path

    if not Path(item).exists():
        raise MobileNetsError(
            f"--data scores checkpoints, and {item!r} is a registered name (random weights): "
            "give a checkpoint or run folder"
        )
    path = checkpoint_path(item)
    if saved_detection_config(path) is not None:
        from mobilenets.tasks.detection.validation import bench_validation as detection

        return detection(str(path), resolution, data)
    if saved_segmentation_config(path) is not None:
        from mobilenets.tasks.segmentation.validation import bench_validation as segmentation

        return segmentation(str(path), resolution, data)
    from mobilenets.tasks.classification.validation import bench_validation as classification

    return classification(str(path), resolution, data)
