"""``detect train``, ``eval``, ``predict`` and ``export``: SSDLite object detection.

mobilenets.tasks.detection needs the detection extra (pycocotools), and its export the onnx
extra, so each command imports it when it runs (see the package's docstring); the defaults and
choices the flags show are repeated here, and tests/cli checks that they are the library's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from mobilenets.cli.common import (
    Parser,
    add_checkpoint_argument,
    add_command,
    add_device_argument,
    add_json_file_argument,
    add_json_switch,
    add_loader_arguments,
    format_table,
    output_file,
    print_int8_arithmetic,
    save_json,
)
from mobilenets.cli.deploy import OPSET_HELP
from mobilenets.cli.training import (
    OPTIMIZER_SETTINGS,
    RUN_SETTINGS,
    SCHEDULE_SETTING,
    Setting,
    add_training_arguments,
    default_text,
    field_defaults,
    fit_from,
    run_files,
)
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.detection import DATA_HELP
from mobilenets.engine.settings import TrainSettings
from mobilenets.zoo.factory import cost

# DetectionTrainConfig's choices and the defaults in which it differs from TrainSettings.
LOSSES = ("softmax", "focal")
AUGMENTS = ("ssd", "flip")
DETECTION_DEFAULTS = dict(
    model="ssdlite_mobilenet_v2",
    epochs=20,
    batch_size=32,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=1e-4,
    loss="softmax",
    match_iou=0.5,
    augment="ssd",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

TRAIN_SETTINGS = (
    Setting("--data", str, f"required unless --resume: {DATA_HELP}", "SPEC"),
    Setting("--model", str, "a registered detector", "NAME"),
    Setting("--alpha", float, "backbone width multiplier (default: the detector's)", "A"),
    Setting("--resolution", int, "square input side in pixels (default: the detector's, 320)", "N"),
    *OPTIMIZER_SETTINGS,
    Setting("--weight-decay", float, "L2 on conv weights", "WD"),
    SCHEDULE_SETTING,
    Setting("--warmup-epochs", float, "linear warmup length", "E"),
    Setting("--ema-decay", float, "weight EMA decay; 0: no EMA", "D"),
    Setting(
        "--loss",
        str,
        f"classification loss, {' or '.join(LOSSES)}: softmax is SSD's, with "
        "3:1 hard negative mining",
    ),
    Setting("--match-iou", float, "IoU at which a default box matches an object", "IOU"),
    Setting(
        "--augment",
        str,
        f"{' or '.join(AUGMENTS)}: SSD's (paper section 2.2), or horizontal flips only",
    ),
    Setting(
        "--backbone-weights",
        str,
        "start the backbone from torchvision, timm or keras "
        "ImageNet weights, or from a classification checkpoint (default: from scratch)",
        "SRC",
    ),
    *RUN_SETTINGS,
)


def add_commands(commands) -> None:
    detect = commands.add_parser(
        "detect",
        help="SSDLite object detection: train, eval (COCO mAP), predict, export",
        description="SSDLite with a MobileNetV2 backbone (V2 paper section 6.2): train it, "
        "measure COCO mAP, draw its detections, export it to ONNX or ExecuTorch, fp32 or int8.",
    )
    actions = detect.add_subparsers(
        dest="action", required=True, parser_class=Parser, title="actions", metavar="ACTION"
    )
    add_train(actions)
    add_eval(actions)
    add_predict(actions)
    add_export(actions)


# --- train --------------------------------------------------------------------------------------


def train_defaults() -> dict[str, str]:
    values = {**field_defaults(TrainSettings), **DETECTION_DEFAULTS}
    return {name: default_text(value) for name, value in values.items() if value not in (None, "")}


def add_train(actions) -> None:
    parser = add_command(
        actions,
        "train",
        run_train,
        help="train an SSDLite detector",
        description="Train an SSDLite detector into a run folder: checkpoints (best by val AP, "
        "and last), metrics and the final COCO evaluation. An interrupted run continues with "
        "--resume; torchrun runs it on several GPUs.",
    )
    add_training_arguments(
        parser,
        TRAIN_SETTINGS,
        train_defaults(),
        out_help="the run folder for checkpoints and metrics",
    )


def detection_config(**settings):
    from mobilenets.tasks.detection.train import TrainConfig

    if "data" not in settings:
        raise MobileNetsError(f"--data is required (one of: {DATA_HELP})")
    return TrainConfig(**settings)


def run_train(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection.train import TrainConfig, fit

    result = fit_from(args, TrainConfig, detection_config, fit)
    if result is None:
        return
    final = result.final
    print(
        f"\nval AP {final['AP']:.3f}, AP50 {final['AP50']:.3f}, AP75 {final['AP75']:.3f} after "
        f"{result.epochs} epochs (best AP {result.best:.3f})\n" + run_files(result.out)
    )


# --- eval, predict, export ----------------------------------------------------------------------


def add_eval(actions) -> None:
    parser = add_command(
        actions,
        "eval",
        run_eval,
        help="COCO AP, AP50, AP75, APs, APm, APl on val",
        description="COCO box metrics (pycocotools) of a detector checkpoint on the validation "
        "split of a dataset.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    add_loader_arguments(parser, batch_size=32)
    add_json_file_argument(parser)


def run_eval(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection import inference as detection
    from mobilenets.tasks.detection.evaluate import METRIC_NAMES, evaluate

    checkpoint = detection.load_detection_checkpoint(args.checkpoint)
    metrics = evaluate(
        checkpoint,
        args.data,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    report = cost(checkpoint.model)
    row = [
        checkpoint.model.name,
        f"{report.params:,}",
        f"{report.macs / 1e6:.1f}M",
        *(f"{metrics[name]:.3f}" for name in METRIC_NAMES),
    ]
    print(format_table(["model", "params", "MACs", *METRIC_NAMES], [row]))
    print(
        "\nCOCO box metrics (pycocotools): AP at IoU 0.50:0.95, 0.50 and 0.75; AP of small,"
        "\nmedium and large objects (-1: none of that size); AR100: recall at 100 detections"
    )
    if args.json:
        record = {
            "checkpoint": str(checkpoint.path),
            "data": args.data,
            "model": checkpoint.model.name,
            "params": report.params,
            "macs": report.macs,
            **metrics,
        }
        print()
        save_json(args.json, record)


def add_predict(actions) -> None:
    parser = add_command(
        actions,
        "predict",
        run_predict,
        help="draw the detections of an image and save it",
        description="Detect the objects in one image, print them and save the image with its "
        "boxes, class names and scores drawn.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("image", metavar="IMAGE", help="an image file")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="the annotated image, .png or .jpg (default: IMAGE_STEM_detections.png in the "
        "current folder)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        metavar="S",
        help="lowest score drawn and printed, in [0, 1) (default %(default)s)",
    )
    add_device_argument(parser, "cpu")
    add_json_switch(parser, "the detections as JSON")


def run_predict(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection import inference as detection

    out = Path(args.out or f"{Path(args.image).stem}_detections.png")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise MobileNetsError(f"--out must end in .png, .jpg or .jpeg, got {str(out)!r}")
    checkpoint = detection.load_detection_checkpoint(args.checkpoint)
    image, found = detection.predict(
        checkpoint, args.image, score_threshold=args.score_threshold, device=args.device
    )
    drawn = detection.draw_detections(image, found, checkpoint.classes)
    with output_file(out) as path:
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(path)
    records = [
        {
            "class": checkpoint.classes[label],
            "score": round(score, 4),
            "box": [round(value, 1) for value in box],
        }
        for label, score, box in zip(
            found["labels"].tolist(), found["scores"].tolist(), found["boxes"].tolist(), strict=True
        )
    ]
    if args.json:
        print(json.dumps({"image": args.image, "out": str(out), "detections": records}))
        return
    print(f"{args.image}: {len(records)} detections with score >= {args.score_threshold}")
    for record in records:
        box = ", ".join(f"{value:.0f}" for value in record["box"])
        print(f"  {record['score']:.3f}  {record['class']:<16} ({box})")
    print(f"wrote {out}")


# postprocess's settings, which --nms puts in the file (tests check they are the library's)
NMS_SETTINGS = (
    ("--score-threshold", float, 0.01, "S", "lowest score kept, in [0, 1)"),
    ("--nms-iou", float, 0.6, "IOU", "IoU above which NMS drops the lower-scoring box of a class"),
    ("--max-detections", int, 100, "K", "detections per image: the outputs' second axis"),
    ("--pre-nms-top-k", int, 1000, "K", "best (box, class) pairs that go through NMS"),
)


FORMATS = ("onnx", "pte")
CALIBRATE = ("minmax", "entropy", "percentile")  # deploy.quantize's calibration methods
CALIBRATION_IMAGES = 256  # tasks.detection.quantize's default (tests check)


def add_export(actions) -> None:
    parser = add_command(
        actions,
        "export",
        run_export,
        help="ONNX or ExecuTorch with BN folded and the box decoding inside (NMS too with --nms), "
        "fp32 or int8",
        description="Export a detector to ONNX or to an ExecuTorch program (.pte, XNNPACK "
        "delegate) with BN folded and the box decoding inside: outputs boxes [N, A, 4] and class "
        "scores [N, A, C], checked against PyTorch by the file's runtime; non-maximum "
        "suppression is left to the caller. With --nms (ONNX only) the file also applies the "
        "score threshold, class-wise NMS (ONNX NonMaxSuppression) and the top --max-detections, "
        "and outputs boxes [N, K, 4], scores [N, K], classes [N, K] and count [N], checked "
        "against the PyTorch post-processing. With --int8 the network is quantized (the decoding "
        "and NMS stay float), calibrated on training images of --data, and the COCO AP and AP50 "
        "of the file and of the fp32 model on its validation split are printed.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the .onnx or .pte file to write"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="onnx, or pte: an ExecuTorch program of batch 1 with the XNNPACK delegate (needs "
        "mobilenets[mobile]); default: by the suffix of --out",
    )
    parser.add_argument("--opset", type=int, metavar="N", help=f"{OPSET_HELP}; onnx only")
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="a dynamic batch axis (default: batch 1); onnx only",
    )
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
    parser.add_argument(
        "--int8",
        action="store_true",
        help="an int8 network (onnx: onnxruntime QDQ; pte: PT2E with the XNNPACK quantizer), "
        "calibrated on training images of --data, with its COCO AP beside the fp32 model's",
    )
    parser.add_argument(
        "--data", metavar="SPEC", help=f"--int8: the checkpoint's dataset, {DATA_HELP}"
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help=f"--int8: training images that set the activation ranges (default "
        f"{CALIBRATION_IMAGES}, or all if fewer)",
    )
    parser.add_argument(
        "--calibrate",
        choices=CALIBRATE,
        help="--int8, onnx: how the ranges are set from them, %(choices)s (default minmax)",
    )


def run_export(args: argparse.Namespace) -> None:
    from mobilenets.deploy import onnx_export as export

    pte = (args.format or ("pte" if Path(args.out).suffix == ".pte" else "onnx")) == "pte"
    given = {flag: getattr(args, flag[2:].replace("-", "_")) for flag, *_ in NMS_SETTINGS}
    if not args.nms:
        stray = [flag for flag, value in given.items() if value is not None]
        if stray:
            raise MobileNetsError(f"{stray[0]} applies with --nms only")
    if pte:
        if args.nms:
            raise MobileNetsError(
                "--nms applies to --format onnx only: a .pte program leaves NMS to its caller, "
                "which runs it on the program's boxes and scores (ExecuTorch has no NMS kernel)"
            )
        onnx_only = {
            "--opset": args.opset is not None,
            "--dynamic-batch": args.dynamic_batch,
            "--calibrate": args.calibrate is not None,
        }
        for option, used in onnx_only.items():
            if used:
                raise MobileNetsError(f"{option} applies to --format onnx only, not to pte")
    if not args.int8:
        int8_only = {
            "--data": args.data,
            "--calibration-images": args.calibration_images,
            "--calibrate": args.calibrate,
        }
        for option, value in int8_only.items():
            if value is not None:
                raise MobileNetsError(f"{option} applies to --int8 only")
    elif args.data is None:
        raise MobileNetsError(
            "--int8 needs --data SPEC, the checkpoint's dataset: its training images calibrate "
            f"the int8 ranges and its validation split measures the AP ({DATA_HELP})"
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

    settings = {
        flag[2:].replace("-", "_"): value for flag, value in given.items() if value is not None
    }
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


NMS_OUTSIDE = (
    "NMS is left to the caller: keep scores above a threshold per class, then "
    "torchvision.ops.batched_nms or the runtime's"
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
    print_int8_arithmetic(None if pte else report.int8.pair_bound)
