"""``export``, ``quantize`` and ``bench``: from a trained model to a device.

Their library modules need the onnx extra (and ExecuTorch for .pte), so each command imports
them when it runs (see the package's docstring); the defaults and choices its flags show are
repeated here, and tests/cli checks that they are the library's.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from mobilenets.cli.common import (
    CHECKPOINT_HELP,
    PUBLISHED_WEIGHTS,
    add_checkpoint_argument,
    add_command,
    format_table,
    output_file,
    print_int8_arithmetic,
    save_json,
)
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.segmentation_spec import SEGMENTATION_OUTPUT_STRIDES
from mobilenets.data.classification import SPEC_HELP
from mobilenets.deploy.qat import QatConfig
from mobilenets.engine.checkpoint import load_checkpoint

EXPORT_FORMATS = ("onnx", "pte")
OPSET_HELP = "ONNX opset, 18 to 23 (default 18)"
QUANTIZE_METHODS = ("ptq", "qat")
QUANTIZE_CALIBRATE = ("minmax", "entropy", "percentile")
QUANTIZE_ACTIVATIONS = ("u8", "s8")
QUANTIZE_CALIBRATION_IMAGES = 512
QUANTIZE_BATCH_SIZE = 64
BENCH_BATCHES = (1, 32)
BENCH_WARMUP = 5
BENCH_ITERATIONS = 30
BENCH_DATA_CALIBRATION = 256  # training images for int8 when --data gives them


def add_commands(commands) -> None:
    add_export(commands)
    add_quantize(commands)
    add_bench(commands)


# --- export -------------------------------------------------------------------------------------


def add_export(commands) -> None:
    parser = add_command(
        commands,
        "export",
        run_export,
        help="export a checkpoint or a registered model to ONNX or ExecuTorch, BN folded, checked",
        description="Export a model to ONNX or to an ExecuTorch program with BN folded into the "
        "convolutions, then run the file and compare its outputs with PyTorch's.",
    )
    parser.add_argument(
        "model",
        metavar="CKPT_OR_NAME",
        help=f"{CHECKPOINT_HELP}, or a registered name (mobilenet_v2_1.0_224)",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="onnx, or pte: ExecuTorch with the XNNPACK delegate (needs mobilenets[mobile])",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the .onnx or .pte file to write"
    )
    parser.add_argument("--opset", type=int, metavar="N", help=f"{OPSET_HELP}; onnx only")
    parser.add_argument(
        "--resolution",
        type=int,
        metavar="N",
        help="input side in pixels (default: the model's own)",
    )
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="a dynamic batch axis (default: batch 1); onnx only",
    )
    parser.add_argument(
        "--weights",
        metavar="SRC",
        help=f"published weights for a registered name: {PUBLISHED_WEIGHTS}; without it the "
        "weights are random",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="pte only: an int8 program (PT2E with the XNNPACK quantizer) calibrated on training "
        "images of a checkpoint's data, with its top-1 beside the fp32 model's; int8 ONNX is "
        "`mobilenets quantize`",
    )
    parser.add_argument(
        "--data",
        metavar="SPEC",
        help=f"--int8: the checkpoint's dataset, {SPEC_HELP} (default: the one its training "
        "run recorded)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help=f"--int8: training images that set the activation ranges (default "
        f"{QUANTIZE_CALIBRATION_IMAGES}, or all if fewer)",
    )


def run_export(args: argparse.Namespace) -> None:
    from mobilenets.deploy import onnx_export as export
    from mobilenets.tasks.classification.export import export as classification_export

    if args.format == "pte":
        run_export_pte(args)
        return
    if args.int8 or args.data is not None or args.calibration_images is not None:
        option = "--int8" if args.int8 else "--data" if args.data else "--calibration-images"
        raise MobileNetsError(
            f"{option} applies to --format pte only; an int8 ONNX file is written by "
            "`mobilenets quantize CKPT --data SPEC --method ptq --out FILE.onnx`"
        )
    opset = export.DEFAULT_OPSET if args.opset is None else args.opset
    export.check_options(args.out, opset)  # before loading or downloading anything
    report = classification_export(
        args.model,
        args.out,
        weights=args.weights,
        resolution=args.resolution,
        opset=opset,
        dynamic_batch=args.dynamic_batch,
    )
    print(
        f"wrote {report.path} ({report.model_name} with {report.source}; opset {report.opset}, "
        f"input {export.format_shape(report.input_shape)}, {report.file_bytes / 1e6:.1f} MB, "
        f"{report.bn_folded} BN folded)"
    )
    for shape, difference in report.checks.items():
        print(
            f"onnxruntime {report.onnxruntime_version} vs PyTorch: max abs diff "
            f"{difference:.2g} at {export.format_shape(shape)}"
        )


def run_export_pte(args: argparse.Namespace) -> None:
    from mobilenets.deploy import executorch_export as mobile
    from mobilenets.deploy import onnx_export as export
    from mobilenets.tasks.classification.export import export as classification_export

    if args.opset is not None or args.dynamic_batch:
        option = "--opset" if args.opset is not None else "--dynamic-batch"
        raise MobileNetsError(f"{option} applies to --format onnx only, not to --format pte")
    if not args.int8 and (args.data is not None or args.calibration_images is not None):
        option = "--data" if args.data is not None else "--calibration-images"
        raise MobileNetsError(f"{option} applies to --int8 only")
    mobile.check_pte_options(args.out)  # before loading or downloading anything
    mobile.require_executorch("--format pte")
    if args.int8:
        run_export_pte_int8(args, mobile, export)
        return
    report = classification_export(
        args.model, args.out, weights=args.weights, resolution=args.resolution
    )
    print_pte_report(report, report.source, export.format_shape)
    print(
        f"ExecuTorch {report.executorch_version} vs PyTorch: max abs diff "
        f"{report.max_abs_diff:.2g} at {export.format_shape(report.input_shape)}"
    )


def run_export_pte_int8(args: argparse.Namespace, mobile, export) -> None:
    from pathlib import Path

    from mobilenets.tasks.classification.quantize import quantize as classification_quantize

    if args.weights is not None or not Path(args.model).exists():
        raise MobileNetsError(
            f"--int8 calibrates a checkpoint on its training images; {args.model!r} is not a "
            "checkpoint file or run folder"
        )
    checkpoint = load_checkpoint(args.model)
    data = args.data or (checkpoint.train_config or {}).get("data")
    if not data:
        raise MobileNetsError(
            f"--int8 needs the checkpoint's training images, and {str(checkpoint.path)!r} records "
            f"no dataset: give --data SPEC ({SPEC_HELP})"
        )
    source = export.export_source(args.model, resolution=args.resolution)
    result = classification_quantize(
        checkpoint,
        data,
        args.out,
        resolution=source.resolution,
        calibration_images=args.calibration_images,
        batch_size=QUANTIZE_BATCH_SIZE,
        metadata=source.metadata,
        progress=True,
    )
    print_pte_int8(result, source.weights, data, mobile, export)


def print_pte_int8(result, weights: str, data: str, mobile, export) -> None:
    """The report of an int8 program written from a checkpoint: file, layers, check, top-1."""
    from mobilenets.deploy.pt2e import INT8_TOLERANCE_STEPS

    report, int8 = result.report, result.report.int8
    print_pte_report(report, weights, export.format_shape)
    layers = int8.quantized_layers + len(int8.float_layers)
    floating = f" (float: {', '.join(int8.float_layers)})" if int8.float_layers else ""
    print(
        f"int8: {int8.quantized_layers} of {layers} layers with int8 weights{floating}, "
        f"{int8.quantize_ops} activation quantize ops, calibrated on {int8.calibration_images:,} "
        f"training images of {data}"
    )
    steps = report.max_abs_diff / int8.logits_scale
    print(
        f"ExecuTorch {report.executorch_version} int8 vs its PyTorch reference: max abs diff "
        f"{report.max_abs_diff:.2g} ({steps:.1f} quantization steps of the logits, allowed "
        f"{INT8_TOLERANCE_STEPS}); vs the fp32 model: {int8.fp32_max_abs_diff:.2g}"
    )
    drop = 100 * (result.int8_top1 - result.fp32_top1)
    print(
        f"fp32 top-1 {100 * result.fp32_top1:.2f}%, int8 top-1 {100 * result.int8_top1:.2f}% "
        f"({drop:+.2f} points) on {result.count:,} validation images"
    )
    print_int8_arithmetic(None)


def print_pte_report(report, weights: str, format_shape) -> None:
    outside = ", ".join(report.outside_delegate) or "none"
    print(
        f"wrote {report.path} ({report.model_name} with {weights}; ExecuTorch "
        f"{report.executorch_version}, input {format_shape(report.input_shape)}, "
        f"{report.file_bytes / 1e6:.1f} MB, {report.bn_folded} BN folded, "
        f"{report.partitions} XNNPACK partition{'' if report.partitions == 1 else 's'}, "
        f"ops outside it: {outside})"
    )


# --- quantize -----------------------------------------------------------------------------------


def add_quantize(commands) -> None:
    parser = add_command(
        commands,
        "quantize",
        run_quantize,
        help="int8 ONNX (onnxruntime QDQ) or ExecuTorch by post-training quantization or "
        "quantization-aware fine-tuning",
        description="Quantize a checkpoint to an int8 ONNX file (onnxruntime QDQ, weights s8 "
        "per channel) or, with --format pte, an int8 ExecuTorch program (PT2E with the XNNPACK "
        "quantizer), and report its top-1 beside the fp32 model's on the validation split.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help=f"the dataset the checkpoint was trained on: {SPEC_HELP}",
    )
    parser.add_argument(
        "--method",
        required=True,
        choices=QUANTIZE_METHODS,
        help="ptq: post-training static quantization; qat: fine-tune through simulated int8 "
        "first, then quantize the same way",
    )
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="onnx",
        help="onnx (default): onnxruntime QDQ; pte: ExecuTorch with the XNNPACK delegate, PT2E "
        "quantization and, for qat, PT2E quantization-aware training (needs mobilenets[mobile])",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the int8 .onnx or .pte file to write"
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=QUANTIZE_CALIBRATION_IMAGES,
        metavar="N",
        help="training images that set the activation ranges (default %(default)s)",
    )
    parser.add_argument(
        "--calibrate",
        choices=QUANTIZE_CALIBRATE,
        default="minmax",
        help="how the ranges are set from them: %(choices)s (default %(default)s); onnx only",
    )
    parser.add_argument(
        "--activations",
        choices=QUANTIZE_ACTIVATIONS,
        default="u8",
        help="activation type, u8 or s8 (default %(default)s, fast on x86); weights are s8 per "
        "channel; onnx only (a .pte program is s8)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=QUANTIZE_BATCH_SIZE,
        metavar="B",
        help="calibration, evaluation and QAT batch size (default %(default)s)",
    )
    parser.add_argument(
        "--qat-epochs",
        type=float,
        default=QatConfig.epochs,
        metavar="E",
        help="QAT: passes over the training split, fractions allowed (default %(default)s)",
    )
    parser.add_argument(
        "--qat-lr",
        type=float,
        default=QatConfig.lr,
        metavar="LR",
        help="QAT: SGD learning rate, cosine to zero (default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=QatConfig.seed,
        help="QAT: seed of the data order (default %(default)s)",
    )


def run_quantize(args: argparse.Namespace) -> None:
    from mobilenets.deploy import quantize
    from mobilenets.tasks.classification.quantize import quantize as classification_quantize

    if args.format == "pte":
        run_quantize_pte(args)
        return
    quantize.check_options(args.out, args.calibrate, args.activations)
    qat = quantize_qat_config(args)
    checkpoint = load_checkpoint(args.checkpoint)
    result = classification_quantize(
        checkpoint,
        args.data,
        args.out,
        calibration_images=args.calibration_images,
        method=args.calibrate,
        activation_type=args.activations,
        batch_size=args.batch_size,
        qat=qat,
        progress=True,
    )
    report = result.report
    drop = 100 * (result.int8_top1 - result.fp32_top1)
    print(
        f"fp32 top-1 {100 * result.fp32_top1:.2f}%, int8 top-1 {100 * result.int8_top1:.2f}% "
        f"({drop:+.2f} points) on {result.count:,} validation images; int8 file "
        f"{report.int8_bytes / 1e6:.1f} MB (fp32 {report.fp32_bytes / 1e6:.1f} MB)"
    )
    print_int8_arithmetic(report.pair_bound)
    print(
        f"int8 top-1 with the file's QDQ arithmetic in float: {100 * result.reference_top1:.2f}% "
        f"({100 * (result.int8_top1 - result.reference_top1):+.2f} points on this CPU's kernels)"
    )
    print(f"wrote {report.path}")


def quantize_qat_config(args: argparse.Namespace) -> QatConfig | None:
    if args.method != "qat":
        return None
    return QatConfig(
        epochs=args.qat_epochs, lr=args.qat_lr, batch_size=args.batch_size, seed=args.seed
    )


def run_quantize_pte(args: argparse.Namespace) -> None:
    """``--format pte``: the int8 program of ``export --format pte --int8``, by PTQ or by PT2E
    quantization-aware training first."""
    from mobilenets.deploy import executorch_export as mobile
    from mobilenets.deploy import onnx_export as export
    from mobilenets.tasks.classification.quantize import quantize as classification_quantize

    # the XNNPACK quantizer sets its own ranges (histogram for PTQ, moving min/max for QAT)
    # and runs s8 activations; these two choices belong to onnxruntime
    if args.calibrate != "minmax":
        raise MobileNetsError(
            f"--calibrate {args.calibrate} applies to --format onnx only; the XNNPACK quantizer "
            "of --format pte sets its own activation ranges"
        )
    if args.activations != "u8":
        raise MobileNetsError(
            f"--activations {args.activations} applies to --format onnx only; a .pte program's "
            "activations are s8"
        )
    mobile.check_pte_options(args.out)  # before loading anything
    qat = quantize_qat_config(args)
    mobile.require_executorch("--format pte")
    checkpoint = load_checkpoint(args.checkpoint)
    source = export.export_source(args.checkpoint)
    result = classification_quantize(
        checkpoint,
        args.data,
        args.out,
        calibration_images=args.calibration_images,
        batch_size=args.batch_size,
        metadata=source.metadata,
        qat=qat,
        progress=True,
    )
    print_pte_int8(result, source.weights, args.data, mobile, export)


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
    parser.add_argument(
        "--threads", type=int, metavar="N", help="threads of every runtime (default: torch's)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=BENCH_WARMUP,
        metavar="W",
        help="untimed runs first (default %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=BENCH_ITERATIONS,
        metavar="K",
        help="timed runs (default %(default)s)",
    )
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
