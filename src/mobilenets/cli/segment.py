"""``segment train``, ``eval``, ``predict`` and ``export``: Mobile DeepLabv3 semantic segmentation.

Each command imports mobilenets.tasks.segmentation when it runs (its export needs the onnx or
mobile extra), so the defaults and choices the flags show are repeated here; tests/cli checks that
they are the library's.
"""

from __future__ import annotations

import argparse
import json
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
    model="deeplabv3_mobilenet_v2", epochs=30, batch_size=8, optimizer="sgd", lr=0.007,
    momentum=0.9, nesterov=False, weight_decay=4e-5, schedule="poly", warmup_epochs=0.0,
    output_stride=16, crop=513, min_scale=0.5, max_scale=2.0, flip=True, aux_loss=0.0,
    eval_batch_size=1,
)  # fmt: skip
OUTPUT_STRIDES = (8, 16)
TTA_MODES = ("none", "flip", "multiscale")
EXPORT_FORMATS = ("onnx", "pte")

TRAIN_SETTINGS = (
    Setting("--data", str, f"required unless --resume: {SEGMENTATION_DATA_HELP}", "SPEC"),
    Setting("--model", str, "a registered segmenter: deeplabv3_mobilenet_v2 (MNet V2*, no "
            "ASPP) or deeplabv3_mobilenet_v1 (with ASPP)", "NAME"),
    Setting("--alpha", float, "backbone width multiplier (default: the segmenter's, 1.0)", "A"),
    Setting("--resolution", int, "nominal input side recorded in the model, at which its cost "
            "is given; the model takes any size (default: --crop)", "N"),
    Setting("--output-stride", int, "the backbone's output stride, 16 or 8 (atrous "
            "convolution; 8 is finer and about four times the MACs)", "S"),
    Setting("--aspp", argparse.BooleanOptionalAction, "the three atrous branches of ASPP in the "
            "head (default: the model's: off for deeplabv3_mobilenet_v2, on for "
            "deeplabv3_mobilenet_v1)"),
    Setting("--crop", int, "side of the square training crop in pixels, at least 32; the "
            "validation images are scored at their own size", "N"),
    Setting("--min-scale", float, "smallest random scale of a training image", "F"),
    Setting("--max-scale", float, "largest random scale of a training image", "F"),
    Setting("--flip", argparse.BooleanOptionalAction, "random horizontal flips in training"),
    Setting("--aux-loss", float, "weight of the auxiliary cross-entropy on a head over the "
            "stride-8 features; 0: no auxiliary head", "W"),
    Setting("--backbone-weights", str, "start the backbone from torchvision, timm or keras "
            "ImageNet weights, or from a classification checkpoint (default: from scratch)",
            "SRC"),
    *OPTIMIZER_SETTINGS,
    Setting("--nesterov", argparse.BooleanOptionalAction, "nesterov momentum for SGD"),
    Setting("--weight-decay", float, "L2 on conv weights", "WD"),
    SCHEDULE_SETTING,
    Setting("--lr-decay", float, "per-epoch factor of the exponential schedule", "F"),
    Setting("--warmup-epochs", float, "linear warmup length", "E"),
    Setting("--ema-decay", float, "weight EMA decay; 0: no EMA", "D"),
    Setting("--eval-batch-size", int, "validation images per batch; 1 scores each at its own "
            "size, a larger batch pads them to the largest", "B"),
    Setting("--compile", "store_true", "torch.compile the model for training"),
    *RUN_SETTINGS,
)  # fmt: skip


def add_commands(commands) -> None:
    segment = commands.add_parser(
        "segment", help="Mobile DeepLabv3 semantic segmentation: train, eval (mIoU), predict, "
        "export",
        description="Mobile DeepLabv3 on a MobileNetV2 or V1 backbone (V2 paper section 6.3): "
        "train it, measure mIoU, draw its masks, export it to ONNX or ExecuTorch.",
    )  # fmt: skip
    actions = segment.add_subparsers(dest="action", required=True, parser_class=Parser,
                                     title="actions", metavar="ACTION")  # fmt: skip
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
        actions, "train", run_train,
        help="train a Mobile DeepLabv3 segmenter",
        description="Train a Mobile DeepLabv3 segmenter into a run folder: checkpoints (best by "
        "val mIoU, and last), metrics, the final evaluation with the IoU of each class, curves, "
        "an IoU chart and validation overlays. An interrupted run continues with --resume; "
        "torchrun runs it on several GPUs.",
    )  # fmt: skip
    out_help = "the run folder for checkpoints, metrics and plots"
    add_training_arguments(parser, TRAIN_SETTINGS, train_defaults(), out_help=out_help)


def segmentation_config(**settings):
    from mobilenets.tasks.segmentation.train import SegmentationTrainConfig

    if "data" not in settings:
        raise MobileNetsError(f"--data is required (one of: {SEGMENTATION_DATA_HELP})")
    return SegmentationTrainConfig(**settings)


def run_train(args: argparse.Namespace) -> None:
    from mobilenets.tasks.segmentation.train import SegmentationTrainConfig, fit_segmenter

    result = fit_from(args, SegmentationTrainConfig, segmentation_config, fit_segmenter)
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
        actions, "eval", run_eval,
        help="mIoU, pixel accuracy and the IoU of each class on val",
        description="Score a segmenter checkpoint on the validation split of a dataset at full "
        "image size: mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU and the "
        "IoU of each class, from one confusion matrix over every pixel.",
    )  # fmt: skip
    add_checkpoint_argument(parser)
    parser.add_argument("--data", required=True, metavar="SPEC", help=SEGMENTATION_DATA_HELP)
    parser.add_argument(
        "--output-stride", type=int, choices=OUTPUT_STRIDES, metavar="S",
        help="rebuild the same weights at output stride 8 or 16 (default: the checkpoint's; "
        "DeepLab trains at 16 and evaluates at 8 for finer masks)",
    )  # fmt: skip
    parser.add_argument(
        "--tta", choices=TTA_MODES, default="none",
        help="test-time augmentation: none, flip (the image and its mirror) or multiscale "
        "(scales 0.5 to 1.75, each with its mirror: V2 paper Table 7's MF) (default "
        "%(default)s)",
    )  # fmt: skip
    add_loader_arguments(parser, batch_size=1)
    add_json_file_argument(parser)


def run_eval(args: argparse.Namespace) -> None:
    from mobilenets.tasks.segmentation import inference as segmentation
    from mobilenets.tasks.segmentation.evaluate import METRIC_NAMES

    checkpoint = segmentation.load_segmentation_checkpoint(args.checkpoint)
    metrics = segmentation.evaluate_checkpoint(
        checkpoint, args.data, output_stride=args.output_stride, tta=args.tta,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
    )  # fmt: skip
    model = segmentation.with_output_stride(checkpoint.model, args.output_stride)
    report = cost(model)
    names = ["mIoU", "pixel acc", "mean acc", "fwIoU"]
    row = [model.name, f"{report.params:,}", f"{report.macs / 1e6:.1f}M",
           *(f"{100 * metrics[name]:.2f}" for name in METRIC_NAMES)]  # fmt: skip
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
        record = {"checkpoint": str(checkpoint.path), "data": args.data, "model": model.name,
                  "output_stride": model.config.output_stride, "tta": args.tta,
                  "params": report.params, "macs": report.macs, **metrics}  # fmt: skip
        print()
        save_json(args.json, record)


# --- predict ------------------------------------------------------------------------------------


def add_predict(actions) -> None:
    parser = add_command(
        actions, "predict", run_predict,
        help="segment images: a mask PNG and a colour overlay PNG per image",
        description="Segment images at their own size and write, for each IMAGE, "
        "OUT/STEM_mask.png (a palette PNG whose pixel values are the class indices, in the VOC "
        "colours) and OUT/STEM_overlay.png (the image blended with the class colours).",
    )  # fmt: skip
    add_checkpoint_argument(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--out", default=".", metavar="DIR",
                        help="the folder the PNGs go to (default: the current folder)")  # fmt: skip
    parser.add_argument(
        "--tta", choices=TTA_MODES, default="none",
        help="test-time augmentation: none, flip or multiscale (default %(default)s)",
    )  # fmt: skip
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
        segmentation.segment_image(checkpoint, image, tta=args.tta, device=args.device)
        for image in images
    ]
    records = []
    for path, image, mask in zip(args.images, images, masks, strict=True):
        mask_path, overlay_path = segmentation.save_prediction(image, mask, args.out,
                                                               Path(path).stem)  # fmt: skip
        shares = segmentation.class_shares(mask, checkpoint.classes)
        records.append({
            "image": path, "mask": str(mask_path), "overlay": str(overlay_path),
            "classes": {name: round(share, 4) for name, share in shares.items()},
        })  # fmt: skip
    if args.json:
        print(json.dumps(records))
        return
    for record in records:
        shares = ", ".join(f"{name} {100 * share:.1f}%" for name, share in
                           record["classes"].items())  # fmt: skip
        print(f"{record['image']}: {shares}\n  wrote {record['mask']}, {record['overlay']}")


# --- export -------------------------------------------------------------------------------------


def add_export(actions) -> None:
    parser = add_command(
        actions, "export", run_export,
        help="ONNX or ExecuTorch with BN folded: logits, or class indices with --argmax",
        description="Export a segmenter to ONNX or to an ExecuTorch program with BN folded: "
        "the file outputs class logits [N, C, H, W] at the input size, or with --argmax the "
        "class index of every pixel [N, H, W]; it is run and checked against PyTorch.",
    )  # fmt: skip
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS,
        help="onnx, or pte: ExecuTorch with the XNNPACK delegate (needs mobilenets[mobile])",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the .onnx or .pte file to write")  # fmt: skip
    parser.add_argument("--argmax", action="store_true",
                        help="output class indices [N, H, W] instead of logits")  # fmt: skip
    parser.add_argument(
        "--resolution", type=int, metavar="N",
        help="square input side in pixels; the file takes only that size (default: the "
        "model's resolution, which a run sets to its --crop)",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, metavar="N", help=f"{OPSET_HELP}; onnx only")


def run_export(args: argparse.Namespace) -> None:
    if args.format == "pte" and args.opset is not None:
        raise MobileNetsError("--opset applies to --format onnx only, not to --format pte")
    from mobilenets.tasks.segmentation.export import export_segmenter
    from mobilenets.tasks.segmentation.inference import load_segmentation_checkpoint

    checkpoint = load_segmentation_checkpoint(args.checkpoint)
    report = export_segmenter(checkpoint, args.out, format=args.format,
                              resolution=args.resolution, argmax=args.argmax,
                              opset=args.opset)  # fmt: skip
    print(describe_export(report))


def describe_export(report) -> str:
    """The lines ``segment export`` prints for a
    [`SegmentationExportReport`][mobilenets.tasks.segmentation.export.SegmentationExportReport]."""
    shape = "x".join(str(dim) for dim in report.input_shape)
    output = f"{report.output_name} [{', '.join(str(dim) for dim in report.output_shape)}]"
    kind = f"opset {report.opset}" if report.format == "onnx" else "ExecuTorch, XNNPACK"
    lines = [
        f"wrote {report.path} ({report.model_name} from {report.source}; {kind}, input {shape}, "
        f"output {output}, {report.file_bytes / 1e6:.1f} MB, {report.bn_folded} BN folded)"
    ]
    if report.partitions is not None:
        outside = ", ".join(report.outside_delegate) or "none"
        lines.append(f"{report.partitions} XNNPACK partition{'' if report.partitions == 1 else 's'}"
                     f", ops outside it: {outside}")  # fmt: skip
    if report.max_abs_diff is not None:
        lines.append(f"{report.runtime} vs PyTorch: max abs diff {report.max_abs_diff:.2g}")
    else:
        lines.append(
            f"{report.runtime} vs PyTorch: {report.differing_pixels} pixel(s) of another class, "
            "each where PyTorch's two best logits nearly tie"
        )
    return "\n".join(lines)
