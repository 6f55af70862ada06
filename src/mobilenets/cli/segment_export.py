"""``segment export`` (and ``segment quantize``, its int8 spelling): a Mobile DeepLabv3 segmenter
to an ONNX file or an ExecuTorch program, fp32 or int8, logits or class indices.

The library modules need the onnx or mobile extra, so the command imports them when it runs (see
the package's docstring).
"""

from __future__ import annotations

import argparse
import re

from mobilenets.cli import arguments, common
from mobilenets.cli.segment import CALIBRATION_IMAGES
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.segmentation import SEGMENTATION_DATA_HELP

EDGE_OP = re.compile(r"^<EdgeOpOverload: ([^>]+)>")
DESCRIPTION = (
    "Export a segmenter to ONNX or to an ExecuTorch program with BN folded: the file outputs "
    "class logits [N, C, H, W] at the input size, or with --argmax the class index of every "
    "pixel [N, H, W]; it is run and checked against PyTorch."
)
INT8_DESCRIPTION = (
    "the file is quantized (onnxruntime static quantization, or PT2E with the XNNPACK "
    "quantizer) on training images of --data, and the mIoU of the fp32 model and of the int8 "
    "file on its validation split are printed, each image padded (or shrunk) to the file's "
    "input size."
)


def add_export_arguments(parser: argparse.ArgumentParser, *, int8_only: bool = False) -> None:
    """The flags of ``segment export``; ``int8_only``: of ``segment quantize``, which is
    ``segment export --int8``."""
    arguments.add_checkpoint_argument(parser)
    arguments.add_format_argument(parser)
    arguments.add_out_file_argument(parser)
    parser.add_argument(
        "--argmax", action="store_true", help="output class indices [N, H, W] instead of logits"
    )
    parser.add_argument(
        "--resolution",
        type=int,
        metavar="N",
        help="square input side in pixels; the file takes only that size (default: the "
        "model's resolution, which a run sets to its --crop)",
    )
    arguments.add_opset_argument(parser)
    arguments.add_int8_arguments(
        parser,
        int8_help="an int8 file: weights s8 per channel, activations calibrated on training "
        "images of --data; prints the validation mIoU of the fp32 model and of the int8 file",
        data_help=SEGMENTATION_DATA_HELP,
        calibration_images=CALIBRATION_IMAGES,
        calibrate_help="onnx: onnxruntime's calibration method (default minmax; entropy and "
        "percentile hold every activation of every calibration image in memory)",
        always=int8_only,
    )


def run_export(args: argparse.Namespace) -> None:
    if args.format == "pte":
        arguments.check_unused(
            args, ("--opset",), "applies to --format onnx only, not to --format pte"
        )
    arguments.check_int8_flags(
        args,
        "--int8 needs --data SPEC: the dataset whose training images calibrate the file and "
        "whose validation images score it",
    )
    if args.calibrate is not None and args.format != "onnx":
        raise MobileNetsError(
            "--calibrate applies to --format onnx only (PT2E sets a .pte program's ranges with "
            "histogram observers)"
        )
    if args.int8:
        run_export_int8(args)
        return
    from mobilenets.tasks.segmentation.export import export
    from mobilenets.tasks.segmentation.inference import load_segmentation_checkpoint

    checkpoint = load_segmentation_checkpoint(args.checkpoint)
    report = export(
        checkpoint,
        args.out,
        format=args.format,
        resolution=args.resolution,
        argmax=args.argmax,
        opset=args.opset,
    )
    print(describe_export(report))


def run_export_int8(args: argparse.Namespace) -> None:
    from mobilenets.tasks.segmentation.quantize import quantize

    result = quantize(
        args.checkpoint,
        args.data,
        args.out,
        format=args.format,
        resolution=args.resolution,
        argmax=args.argmax,
        calibration_images=args.calibration_images,
        calibrate=args.calibrate,
        opset=args.opset,
        progress=True,
    )
    print(describe_export(result.report))
    change = 100 * (result.int8_miou - result.fp32_miou)
    side = result.report.input_shape[-1]
    print(
        f"fp32 mIoU {100 * result.fp32_miou:.2f}%, int8 mIoU {100 * result.int8_miou:.2f}% "
        f"({change:+.2f} points); pixel accuracy {100 * result.fp32_pixel_accuracy:.2f}% and "
        f"{100 * result.int8_pixel_accuracy:.2f}%; {result.images:,} validation images of "
        f"{result.data}, each fed at {side}x{side}"
    )
    common.print_int8_arithmetic(result.report.int8.pair_bound)


EXPORT, QUANTIZE = common.export_commands(
    "segment",
    help="ONNX or ExecuTorch with BN folded, fp32 or int8: logits, or class indices with --argmax",
    description=DESCRIPTION,
    int8_description=INT8_DESCRIPTION,
    add_arguments=add_export_arguments,
    run=run_export,
)


def describe_export(report) -> str:
    """The lines ``segment export`` prints for a
    segmenter's [`ExportReport`][mobilenets.deploy.pipeline.ExportReport]."""
    shape = "x".join(str(dim) for dim in report.input_shape)
    output = f"{report.output_name} [{', '.join(str(dim) for dim in report.output_shape)}]"
    kind = f"opset {report.opset}" if report.format == "onnx" else "ExecuTorch, XNNPACK"
    lines = [
        f"wrote {report.path} ({report.model_name} from {report.source}; {kind}, input {shape}, "
        f"output {output}, {report.file_bytes / 1e6:.1f} MB, {report.bn_folded} BN folded)"
    ]
    if report.partitions is not None:
        outside = ", ".join(op_name(op) for op in report.outside_delegate) or "none"
        lines.append(
            f"{report.partitions} XNNPACK partition{'' if report.partitions == 1 else 's'}"
            f", ops outside it: {outside}"
        )
    int8 = report.int8
    if int8 is None:
        lines.append(describe_check(report, f"{report.runtime} vs PyTorch"))
        return "\n".join(lines)
    convs = int8.quantized_convs + len(int8.float_convs)
    floating = f" (float: {', '.join(int8.float_convs)})" if int8.float_convs else ""
    lines.append(
        f"int8: {int8.quantized_convs} of {convs} convs with int8 weights{floating}, activation "
        f"ranges by {int8.calibration} calibration on {int8.calibration_images:,} training images"
    )
    if report.format == "onnx":
        lines.append(describe_check(report, f"{report.runtime}: the fp32 file vs PyTorch"))
    else:
        allowed = round(int8.tolerance / int8.logits_scale)
        if report.max_abs_diff is not None:
            lines.append(
                f"{report.runtime} int8 vs its PyTorch reference: max abs diff "
                f"{report.max_abs_diff:.2g} ({report.max_abs_diff / int8.logits_scale:.1f} "
                f"quantization steps of the logits, allowed {allowed})"
            )
        else:
            lines.append(
                f"{report.runtime} int8 vs its PyTorch reference: {report.differing_pixels} "
                f"pixel(s) of another class, each where its two best logits are within {allowed} "
                "quantization steps"
            )
    if int8.fp32_max_abs_diff is not None:
        versus = f"max abs diff {int8.fp32_max_abs_diff:.2g}"
    else:
        versus = f"{int8.fp32_differing_pixels} pixel(s) of another class"
    lines.append(f"int8 file vs the fp32 model on a calibration image: {versus}")
    return "\n".join(lines)


def op_name(op: str) -> str:
    """``aten.argmax.default`` for ExecuTorch's ``<EdgeOpOverload: aten.argmax.default>:
    schema = ...``; another string as it is."""
    match = EDGE_OP.match(op)
    return match[1] if match else op


def describe_check(report, what: str) -> str:
    """The line of an fp32 file's check against PyTorch."""
    if report.max_abs_diff is not None:
        return f"{what}: max abs diff {report.max_abs_diff:.2g}"
    return (
        f"{what}: {report.differing_pixels} pixel(s) of another class, each where PyTorch's two "
        "best logits nearly tie"
    )
