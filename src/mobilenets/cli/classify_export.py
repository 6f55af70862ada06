"""``export`` and ``quantize``: a classifier (a checkpoint or a registered model) to an ONNX file
or an ExecuTorch program, fp32 or int8.

Their library modules need the onnx extra (and ExecuTorch for .pte), so each command imports
them when it runs (see the package's docstring); the defaults and choices its flags show are
repeated here, and tests/cli checks that they are the library's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilenets.cli.arguments import (
    CALIBRATE_METHODS,
    CHECKPOINT_HELP,
    EXPORT_FORMATS,
    PUBLISHED_WEIGHTS,
    add_checkpoint_argument,
    add_dynamic_batch_argument,
    add_format_argument,
    add_int8_arguments,
    add_opset_argument,
    add_out_file_argument,
    check_int8_flags,
    check_unused,
)
from mobilenets.cli.common import Command, print_int8_arithmetic
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.classification import SPEC_HELP
from mobilenets.deploy.qat import QatConfig
from mobilenets.engine.checkpoint import load_checkpoint

QUANTIZE_METHODS = ("ptq", "qat")
QUANTIZE_CALIBRATE = CALIBRATE_METHODS
QUANTIZE_ACTIVATIONS = ("u8", "s8")
QUANTIZE_CALIBRATION_IMAGES = 512
QUANTIZE_BATCH_SIZE = 64


# --- export -------------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="CKPT_OR_NAME",
        help=f"{CHECKPOINT_HELP}, or a registered name (mobilenet_v2_1.0_224)",
    )
    add_format_argument(parser)
    add_out_file_argument(parser)
    add_opset_argument(parser)
    parser.add_argument(
        "--resolution",
        type=int,
        metavar="N",
        help="input side in pixels (default: the model's own)",
    )
    add_dynamic_batch_argument(parser)
    parser.add_argument(
        "--weights",
        metavar="SRC",
        help=f"published weights for a registered name: {PUBLISHED_WEIGHTS}; without it the "
        "weights are random",
    )
    add_int8_arguments(
        parser,
        int8_help="pte only: an int8 program (PT2E with the XNNPACK quantizer) calibrated on "
        "training images of a checkpoint's data, with its top-1 beside the fp32 model's; int8 "
        "ONNX is `mobilenets quantize`",
        data_help=f"{SPEC_HELP} (default: the one its training run recorded)",
        calibration_images=QUANTIZE_CALIBRATION_IMAGES,
    )


def run_export(args: argparse.Namespace) -> None:
    from mobilenets.deploy import onnx_export as export
    from mobilenets.tasks.classification.export import export as classification_export

    if args.format == "pte":
        run_export_pte(args)
        return
    check_unused(
        args,
        ("--int8", "--data", "--calibration-images"),
        "applies to --format pte only; an int8 ONNX file is written by "
        "`mobilenets quantize CKPT --data SPEC --method ptq --out FILE.onnx`",
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

    check_unused(
        args, ("--opset", "--dynamic-batch"), "applies to --format onnx only, not to --format pte"
    )
    check_int8_flags(args)
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


EXPORT = Command(
    "export",
    help="export a checkpoint or a registered model to ONNX or ExecuTorch, BN folded, checked",
    description="Export a model to ONNX or to an ExecuTorch program with BN folded into the "
    "convolutions, then run the file and compare its outputs with PyTorch's.",
    add_arguments=add_export_arguments,
    run=run_export,
)


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


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
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
    add_out_file_argument(parser, "the int8 .onnx or .pte")
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


QUANTIZE = Command(
    "quantize",
    help="int8 ONNX (onnxruntime QDQ) or ExecuTorch by post-training quantization or "
    "quantization-aware fine-tuning",
    description="Quantize a checkpoint to an int8 ONNX file (onnxruntime QDQ, weights s8 "
    "per channel) or, with --format pte, an int8 ExecuTorch program (PT2E with the XNNPACK "
    "quantizer), and report its top-1 beside the fp32 model's on the validation split.",
    add_arguments=add_quantize_arguments,
    run=run_quantize,
)
