"""``detect export`` (and ``detect quantize``, its int8 spelling): an SSDLite detector to an ONNX
file or an ExecuTorch program, fp32 or int8, with the box decoding and optionally NMS inside.

The library modules need the onnx extra (and ExecuTorch for .pte), so the command imports them
when it runs (see the package's docstring).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilenets.cli import arguments, common
from mobilenets.cli.detect import CALIBRATION_IMAGES
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.detection import DATA_HELP

# postprocess's settings, which --nms puts in the file (tests check they are the library's)
NMS_SETTINGS = (
    ("--score-threshold", float, 0.01, "S", "lowest score kept, in [0, 1)"),
    ("--nms-iou", float, 0.6, "IOU", "IoU above which NMS drops the lower-scoring box of a class"),
    ("--max-detections", int, 100, "K", "detections per image: the outputs' second axis"),
    ("--pre-nms-top-k", int, 1000, "K", "best (box, class) pairs that go through NMS"),
)
NMS_FLAGS = tuple(flag for flag, *_ in NMS_SETTINGS)
NMS_OUTSIDE = (
    "NMS is left to the caller: keep scores above a threshold per class, then "
    "torchvision.ops.batched_nms or the runtime's"
)
DESCRIPTION = (
    "Export a detector to ONNX or to an ExecuTorch program (.pte, XNNPACK delegate) with BN "
    "folded and the box decoding inside: outputs boxes [N, A, 4] and class scores [N, A, C], "
    "checked against PyTorch by the file's runtime; non-maximum suppression is left to the "
    "caller. With --nms (ONNX only) the file also applies the score threshold, class-wise NMS "
    "(ONNX NonMaxSuppression) and the top --max-detections, and outputs boxes [N, K, 4], scores "
    "[N, K], classes [N, K] and count [N], checked against the PyTorch post-processing."
)
INT8_DESCRIPTION = (
    "the network is quantized (the decoding and NMS stay float), calibrated on training images "
    "of --data, and the COCO AP and AP50 of the file and of the fp32 model on its validation "
    "split are printed."
)


def add_export_arguments(parser: argparse.ArgumentParser, *, int8_only: bool = False) -> None:
    """The flags of ``detect export``; ``int8_only``: of ``detect quantize``, which is ``detect
    export --int8``."""
    arguments.add_checkpoint_argument(parser)
    arguments.add_format_argument(
        parser,
        "onnx, or pte: an ExecuTorch program of batch 1 with the XNNPACK delegate (needs "
        "mobilenets[mobile]); default: by the suffix of --out",
        required=False,
    )
    arguments.add_out_file_argument(parser)
    arguments.add_opset_argument(parser)
    arguments.add_dynamic_batch_argument(parser)
    parser.add_argument(
        "--nms",
        action="store_true",
        help="put the score threshold, NMS and the top-k in the file; onnx only (ExecuTorch has "
        "no NMS kernel: a .pte program leaves NMS to its caller)",
    )
    for flag, kind, default, metavar, text in NMS_SETTINGS:
        parser.add_argument(
            flag, type=kind, metavar=metavar, help=f"with --nms: {text} (default {default})"
        )
    arguments.add_int8_arguments(
        parser,
        int8_help="an int8 network (onnx: onnxruntime QDQ; pte: PT2E with the XNNPACK quantizer), "
        "calibrated on training images of --data, with its COCO AP beside the fp32 model's",
        data_help=DATA_HELP,
        calibration_images=CALIBRATION_IMAGES,
        calibrate_help="onnx: how the ranges are set from them, %(choices)s (default minmax)",
        always=int8_only,
    )


def run_export(args: argparse.Namespace) -> None:
    from mobilenets.deploy import onnx_export as export

    pte = (args.format or ("pte" if Path(args.out).suffix == ".pte" else "onnx")) == "pte"
    if not args.nms:
        arguments.check_unused(args, NMS_FLAGS, "applies with --nms only")
    if pte:
        if args.nms:
            raise MobileNetsError(
                "--nms applies to --format onnx only: a .pte program leaves NMS to its caller, "
                "which runs it on the program's boxes and scores (ExecuTorch has no NMS kernel)"
            )
        arguments.check_unused(
            args,
            ("--opset", "--dynamic-batch", "--calibrate"),
            "applies to --format onnx only, not to pte",
        )
    arguments.check_int8_flags(
        args,
        "--int8 needs --data SPEC, the checkpoint's dataset: its training images calibrate the "
        f"int8 ranges and its validation split measures the AP ({DATA_HELP})",
    )

    opset = export.DEFAULT_OPSET if args.opset is None else args.opset
    calibrate = args.calibrate or "minmax"
    # the errors a user can make are reported before the checkpoint is loaded
    if pte:
        from mobilenets.deploy import executorch_export as mobile

        mobile.check_pte_options(args.out)
        mobile.require_executorch("--format pte")
    else:
        export.check_options(args.out, opset)
        if args.int8:
            from mobilenets.deploy import quantize

            quantize.check_options(args.out, calibrate, "u8")
    from mobilenets.tasks.detection import export as detection_export
    from mobilenets.tasks.detection.inference import load_detection_checkpoint

    given = {arguments.dest(flag): getattr(args, arguments.dest(flag)) for flag in NMS_FLAGS}
    settings = {name: value for name, value in given.items() if value is not None}
    checkpoint = load_detection_checkpoint(args.checkpoint)
    if args.int8:
        from mobilenets.tasks.detection.quantize import quantize

        onnx_options = (
            {}
            if pte
            else dict(
                opset=opset,
                dynamic_batch=args.dynamic_batch,
                nms=args.nms,
                method=calibrate,
                **settings,
            )
        )
        result = quantize(
            checkpoint,
            args.data,
            args.out,
            calibration_images=args.calibration_images,
            progress=True,
            **onnx_options,
        )
        print_int8(result, pte, args.data, calibrate)
        return
    if pte:
        report = detection_export.export(checkpoint, args.out)
        print_pte_report(report)
        print(
            f"ExecuTorch {report.executorch_version} vs PyTorch: max abs diff "
            f"{report.max_abs_diff:.2g}\n{NMS_OUTSIDE}"
        )
        return
    report = detection_export.export(
        checkpoint,
        args.out,
        opset=opset,
        dynamic_batch=args.dynamic_batch,
        nms=args.nms,
        **settings,
    )
    print_onnx_report(report)
    if report.nms is None:
        print(
            f"onnxruntime {report.onnxruntime_version} vs PyTorch: max abs diff "
            f"{report.max_abs_diff:.2g}\n{NMS_OUTSIDE}"
        )
        return
    print(
        f"onnxruntime {report.onnxruntime_version} vs PyTorch's postprocess: same detections, max "
        f"abs diff {report.max_abs_diff:.2g}"
    )


def print_onnx_report(report) -> None:
    from mobilenets.deploy.onnx_export import format_shape

    header = (
        f"wrote {report.path} ({report.model_name}; opset {report.opset}, input "
        f"{format_shape(report.input_shape)}, "
    )
    tail = f"{report.file_bytes / 1e6:.1f} MB, {report.bn_folded} BN folded)"
    if report.nms is None:
        print(
            f"{header}outputs boxes [N, {report.num_boxes}, 4] and scores [N, "
            f"{report.num_boxes}, {report.num_classes}], {tail}"
        )
        return
    nms, k = report.nms, report.nms.max_detections
    print(
        f"{header}outputs boxes [N, {k}, 4], scores [N, {k}], classes [N, {k}] and count [N], "
        f"{tail}\nNMS in the graph: score > {nms.score_threshold:g}, the {nms.pre_nms_top_k} best "
        f"through class-wise NMS at IoU {nms.nms_iou:g}, the {k} best kept"
    )


def print_pte_report(report) -> None:
    from mobilenets.deploy.onnx_export import format_shape

    outside = ", ".join(report.outside_delegate) or "none"
    partitions = f"{report.partitions} XNNPACK partition{'' if report.partitions == 1 else 's'}"
    print(
        f"wrote {report.path} ({report.model_name}; ExecuTorch {report.executorch_version}, input "
        f"{format_shape(report.input_shape)}, outputs boxes [1, {report.num_boxes}, 4] and scores "
        f"[1, {report.num_boxes}, {report.num_classes}], {report.file_bytes / 1e6:.1f} MB, "
        f"{report.bn_folded} BN folded, {partitions}, ops outside it: {outside})"
    )


def print_int8(result, pte: bool, data: str, calibrate: str) -> None:
    report = result.report
    if not pte:
        print_onnx_report(report)
        quantization = report.int8
        convs = quantization.quantized_convs + len(quantization.float_convs)
        print(
            f"int8: {quantization.quantized_convs} of {convs} convs with int8 weights (QDQ, "
            f"{quantization.activation_type} activations, {calibrate} ranges from "
            f"{quantization.calibration_images:,} training images of {data}); decoding, scores"
            f"{' and NMS' if report.nms else ''} float\nonnxruntime {report.onnxruntime_version}: "
            f"the file vs its float end on its int8 network's outputs: max abs diff "
            f"{report.max_abs_diff:.2g}"
        )
    else:
        print_pte_report(report)
        from mobilenets.tasks.detection.export import INT8_TOLERANCE_STEPS

        int8 = report.int8
        layers = int8.quantized_layers + len(int8.float_layers)
        print(
            f"int8: {int8.quantized_layers} of {layers} convs with int8 weights, "
            f"{int8.quantize_ops} activation quantize ops, calibrated on "
            f"{int8.calibration_images:,} training images of {data}; decoding and scores float\n"
            f"ExecuTorch {report.executorch_version} int8 vs its PyTorch reference: within "
            f"{report.steps:.1f} quantization steps of the head outputs (allowed "
            f"{INT8_TOLERANCE_STEPS}); vs the fp32 model: max abs diff {report.max_abs_diff:.2g}"
        )
    drop = 100 * (result.int8_ap50 - result.fp32_ap50)
    print(
        f"fp32 AP {result.fp32_ap:.3f} AP50 {result.fp32_ap50:.3f}, int8 AP {result.int8_ap:.3f} "
        f"AP50 {result.int8_ap50:.3f} (AP50 {drop:+.1f} points, AP "
        f"{100 * (result.int8_ap - result.fp32_ap):+.1f}) on {result.count:,} validation images"
    )
    common.print_int8_arithmetic(None if pte else report.int8.pair_bound)


EXPORT, QUANTIZE = common.export_commands(
    "detect",
    help="ONNX or ExecuTorch with BN folded and the box decoding inside (NMS too with --nms), "
    "fp32 or int8",
    description=DESCRIPTION,
    int8_description=INT8_DESCRIPTION,
    add_arguments=add_export_arguments,
    run=run_export,
)
