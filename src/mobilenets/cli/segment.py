"""``segment train``, ``eval``, ``predict`` and ``export``: Mobile DeepLabv3 semantic segmentation.

Each command imports mobilenets.tasks.segmentation when it runs (its export needs the onnx or
mobile extra), so the defaults and choices the flags show are repeated here; tests/cli checks that
they are the library's.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from mobilenets.cli.common import (
    Parser,
    add_checkpoint_argument,
    add_command,
    add_device_argument,
    add_json_file_argument,
    add_json_switch,
    add_loader_arguments,
    format_table,
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
from mobilenets.data.segmentation import SEGMENTATION_DATA_HELP
from mobilenets.engine.settings import TrainSettings
from mobilenets.zoo.factory import cost

# SegmentationTrainConfig's defaults where they differ from TrainSettings' (but --data, which the
# command asks for), and the library's choices that the flags repeat.
SEGMENTATION_DEFAULTS = dict(
    model="deeplabv3_mobilenet_v2",
    epochs=30,
    batch_size=8,
    optimizer="sgd",
    lr=0.007,
    momentum=0.9,
    nesterov=False,
    weight_decay=4e-5,
    schedule="poly",
    warmup_epochs=0.0,
    output_stride=16,
    crop=513,
    min_scale=0.5,
    max_scale=2.0,
    flip=True,
    aux_loss=0.0,
    eval_batch_size=1,
)
OUTPUT_STRIDES = (8, 16)
TTA_MODES = ("none", "flip", "multiscale")
EXPORT_FORMATS = ("onnx", "pte")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_IMAGES = 100
EDGE_OP = re.compile(r"^<EdgeOpOverload: ([^>]+)>")

TRAIN_SETTINGS = (
    Setting("--data", str, f"required unless --resume: {SEGMENTATION_DATA_HELP}", "SPEC"),
    Setting(
        "--model",
        str,
        "a registered segmenter: deeplabv3_mobilenet_v2 (MNet V2*, no "
        "ASPP) or deeplabv3_mobilenet_v1 (with ASPP)",
        "NAME",
    ),
    Setting("--alpha", float, "backbone width multiplier (default: the segmenter's, 1.0)", "A"),
    Setting(
        "--resolution",
        int,
        "nominal input side recorded in the model, at which its cost "
        "is given; the model takes any size (default: --crop)",
        "N",
    ),
    Setting(
        "--output-stride",
        int,
        "the backbone's output stride, 16 or 8 (atrous "
        "convolution; 8 is finer and about four times the MACs)",
        "S",
    ),
    Setting(
        "--aspp",
        argparse.BooleanOptionalAction,
        "the three atrous branches of ASPP in the "
        "head (default: the model's: off for deeplabv3_mobilenet_v2, on for "
        "deeplabv3_mobilenet_v1)",
    ),
    Setting(
        "--crop",
        int,
        "side of the square training crop in pixels, at least 32; the "
        "validation images are scored at their own size",
        "N",
    ),
    Setting("--min-scale", float, "smallest random scale of a training image", "F"),
    Setting("--max-scale", float, "largest random scale of a training image", "F"),
    Setting("--flip", argparse.BooleanOptionalAction, "random horizontal flips in training"),
    Setting(
        "--aux-loss",
        float,
        "weight of the auxiliary cross-entropy on a head over the "
        "stride-8 features; 0: no auxiliary head",
        "W",
    ),
    Setting(
        "--backbone-weights",
        str,
        "start the backbone from torchvision, timm or keras "
        "ImageNet weights, or from a classification checkpoint (default: from scratch)",
        "SRC",
    ),
    *OPTIMIZER_SETTINGS,
    Setting("--nesterov", argparse.BooleanOptionalAction, "nesterov momentum for SGD"),
    Setting("--weight-decay", float, "L2 on conv weights", "WD"),
    SCHEDULE_SETTING,
    Setting("--lr-decay", float, "per-epoch factor of the exponential schedule", "F"),
    Setting("--warmup-epochs", float, "linear warmup length", "E"),
    Setting("--ema-decay", float, "weight EMA decay; 0: no EMA", "D"),
    Setting(
        "--eval-batch-size",
        int,
        "validation images per batch; 1 scores each at its own "
        "size, a larger batch pads them to the largest",
        "B",
    ),
    *RUN_SETTINGS,
)


def add_commands(commands) -> None:
    segment = commands.add_parser(
        "segment",
        help="Mobile DeepLabv3 semantic segmentation: train, eval (mIoU), predict, export",
        description="Mobile DeepLabv3 on a MobileNetV2 or V1 backbone (V2 paper section 6.3): "
        "train it, measure mIoU, draw its masks, export it to ONNX or ExecuTorch.",
    )
    actions = segment.add_subparsers(
        dest="action", required=True, parser_class=Parser, title="actions", metavar="ACTION"
    )
    add_train(actions)
    add_eval(actions)
    add_predict(actions)
    add_export(actions)


# --- train --------------------------------------------------------------------------------------


def train_defaults() -> dict[str, str]:
    values = {**field_defaults(TrainSettings), **SEGMENTATION_DEFAULTS}
    return {name: default_text(value) for name, value in values.items() if value not in (None, "")}


def add_train(actions) -> None:
    parser = add_command(
        actions,
        "train",
        run_train,
        help="train a Mobile DeepLabv3 segmenter",
        description="Train a Mobile DeepLabv3 segmenter into a run folder: checkpoints (best by "
        "val mIoU, and last), metrics, the final evaluation with the IoU of each class, curves, "
        "an IoU chart and validation overlays. An interrupted run continues with --resume; "
        "torchrun runs it on several GPUs.",
    )
    out_help = "the run folder for checkpoints, metrics and plots"
    add_training_arguments(parser, TRAIN_SETTINGS, train_defaults(), out_help=out_help)


def segmentation_config(**settings):
    from mobilenets.tasks.segmentation.train import TrainConfig

    if "data" not in settings:
        raise MobileNetsError(f"--data is required (one of: {SEGMENTATION_DATA_HELP})")
    return TrainConfig(**settings)


def run_train(args: argparse.Namespace) -> None:
    from mobilenets.tasks.segmentation.train import TrainConfig, fit

    result = fit_from(args, TrainConfig, segmentation_config, fit)
    if result is None:
        return
    final, out = result.final, result.out
    print(
        f"\nval mIoU {100 * final['mIoU']:.2f}%, pixel accuracy "
        f"{100 * final['pixel_accuracy']:.2f}% after {result.epochs} epochs (best mIoU "
        f"{100 * result.best:.2f}%)\n"
        + run_files(out, f"plots: {out / 'curves.png'}, {out / 'iou.png'}, {out / 'overlays'}")
    )


# --- eval ---------------------------------------------------------------------------------------


def add_eval(actions) -> None:
    parser = add_command(
        actions,
        "eval",
        run_eval,
        help="mIoU, pixel accuracy and the IoU of each class on val",
        description="Score a segmenter checkpoint on the validation split of a dataset at full "
        "image size: mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU and the "
        "IoU of each class, from one confusion matrix over every pixel.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("--data", required=True, metavar="SPEC", help=SEGMENTATION_DATA_HELP)
    parser.add_argument(
        "--output-stride",
        type=int,
        choices=OUTPUT_STRIDES,
        metavar="S",
        help="rebuild the same weights at output stride 8 or 16 (default: the checkpoint's; "
        "DeepLab trains at 16 and evaluates at 8 for finer masks)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation: none, flip (the image and its mirror) or multiscale "
        "(scales 0.5 to 1.75, each with its mirror: V2 paper Table 7's MF) (default "
        "%(default)s)",
    )
    add_loader_arguments(parser, batch_size=1)
    add_json_file_argument(parser)


def run_eval(args: argparse.Namespace) -> None:
    from mobilenets.tasks.segmentation import inference as segmentation
    from mobilenets.tasks.segmentation.evaluate import METRIC_NAMES, evaluate

    checkpoint = segmentation.load_segmentation_checkpoint(args.checkpoint)
    metrics = evaluate(
        checkpoint,
        args.data,
        output_stride=args.output_stride,
        tta=args.tta,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    model = segmentation.with_output_stride(checkpoint.model, args.output_stride)
    report = cost(model)
    names = ["mIoU", "pixel acc", "mean acc", "fwIoU"]
    row = [
        model.name,
        f"{report.params:,}",
        f"{report.macs / 1e6:.1f}M",
        *(f"{100 * metrics[name]:.2f}" for name in METRIC_NAMES),
    ]
    print(format_table(["model", "params", "MACs", *names], [row]))
    rows = [
        [name, "-" if iou is None else f"{100 * iou:.2f}"]
        for name, iou in zip(metrics["classes"], metrics["IoU"], strict=True)
    ]
    print()
    print(format_table(["class", "IoU"], rows))
    resolution = model.config.resolution
    print(
        f"\n{metrics['pixels']:,} pixels scored at full image size, tta {args.tta}; metrics in %; "
        f"MACs of one {resolution}x{resolution} pass\n(IoU -: a class in neither the ground "
        "truth nor the predictions, left out of mIoU)"
    )
    if args.json:
        record = {
            "checkpoint": str(checkpoint.path),
            "data": args.data,
            "model": model.name,
            "output_stride": model.config.output_stride,
            "tta": args.tta,
            "params": report.params,
            "macs": report.macs,
            **metrics,
        }
        print()
        save_json(args.json, record)


# --- predict ------------------------------------------------------------------------------------


def add_predict(actions) -> None:
    parser = add_command(
        actions,
        "predict",
        run_predict,
        help="segment images: a mask PNG and a colour overlay PNG per image",
        description="Segment images at their own size and write, for each IMAGE, "
        "OUT/STEM_mask.png (a palette PNG whose pixel values are the class indices, in the VOC "
        "colours) and OUT/STEM_overlay.png (the image blended with the class colours).",
    )
    add_checkpoint_argument(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--out",
        default=".",
        metavar="DIR",
        help="the folder the PNGs go to (default: the current folder)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation: none, flip or multiscale (default %(default)s)",
    )
    add_device_argument(parser, "cpu")
    add_json_switch(parser, "the files written and the share of each class as JSON")


def run_predict(args: argparse.Namespace) -> None:
    from mobilenets.data.common import open_image
    from mobilenets.tasks.segmentation import inference as segmentation

    stems: dict[str, str] = {}
    for path in args.images:
        stem = Path(path).stem
        if stem in stems:
            raise MobileNetsError(
                f"{stems[stem]!r} and {path!r} would both write {stem}_mask.png; give images "
                "of different names"
            )
        stems[stem] = path
    checkpoint = segmentation.load_segmentation_checkpoint(args.checkpoint)
    # Every image is read before anything is written: a bad one leaves no output behind.
    images = [open_image(path).convert("RGB") for path in args.images]
    masks = [
        segmentation.predict(checkpoint, image, tta=args.tta, device=args.device)
        for image in images
    ]
    records = []
    for path, image, mask in zip(args.images, images, masks, strict=True):
        mask_path, overlay_path = segmentation.save_prediction(
            image, mask, args.out, Path(path).stem
        )
        shares = segmentation.class_shares(mask, checkpoint.classes)
        records.append(
            {
                "image": path,
                "mask": str(mask_path),
                "overlay": str(overlay_path),
                "classes": {name: round(share, 4) for name, share in shares.items()},
            }
        )
    if args.json:
        print(json.dumps(records))
        return
    for record in records:
        shares = ", ".join(
            f"{name} {100 * share:.1f}%" for name, share in record["classes"].items()
        )
        print(f"{record['image']}: {shares}\n  wrote {record['mask']}, {record['overlay']}")


# --- export -------------------------------------------------------------------------------------


def add_export(actions) -> None:
    parser = add_command(
        actions,
        "export",
        run_export,
        help="ONNX or ExecuTorch with BN folded, fp32 or int8: logits, or class indices with "
        "--argmax",
        description="Export a segmenter to ONNX or to an ExecuTorch program with BN folded: "
        "the file outputs class logits [N, C, H, W] at the input size, or with --argmax the "
        "class index of every pixel [N, H, W]; it is run and checked against PyTorch. With "
        "--int8 the file is quantized (onnxruntime static quantization, or PT2E with the XNNPACK "
        "quantizer) on training images of --data, and the mIoU of the fp32 model and of the "
        "int8 file on its validation split are printed, each image padded (or shrunk) to the "
        "file's input size.",
    )
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="onnx, or pte: ExecuTorch with the XNNPACK delegate (needs mobilenets[mobile])",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the .onnx or .pte file to write"
    )
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
    parser.add_argument("--opset", type=int, metavar="N", help=f"{OPSET_HELP}; onnx only")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="an int8 file: weights s8 per channel, activations calibrated on training images of "
        "--data; prints the validation mIoU of the fp32 model and of the int8 file",
    )
    parser.add_argument(
        "--data", metavar="SPEC", help=f"--int8: the checkpoint's dataset, {SEGMENTATION_DATA_HELP}"
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
        choices=CALIBRATE_METHODS,
        help="--int8 --format onnx: onnxruntime's calibration method (default minmax; entropy "
        "and percentile hold every activation of every calibration image in memory)",
    )


def run_export(args: argparse.Namespace) -> None:
    if args.format == "pte" and args.opset is not None:
        raise MobileNetsError("--opset applies to --format onnx only, not to --format pte")
    int8_flags = {
        "--data": args.data,
        "--calibration-images": args.calibration_images,
        "--calibrate": args.calibrate,
    }
    if not args.int8:
        for flag, value in int8_flags.items():
            if value is not None:
                raise MobileNetsError(f"{flag} applies to --int8 only")
    elif args.data is None:
        raise MobileNetsError(
            "--int8 needs --data SPEC: the dataset whose training images calibrate the file and "
            "whose validation images score it"
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
    print_int8_arithmetic(result.report.int8.pair_bound)


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
