"""``segment train``, ``eval`` and ``predict``: Mobile DeepLabv3 and LR-ASPP semantic segmentation
(``segment export`` and ``quantize`` are in [`segment_export`][mobilenets.cli.segment_export]).

Each command imports mobilenets.tasks.segmentation when it runs (its export needs the onnx or
mobile extra), so the defaults and choices the flags show are repeated here; tests check that
they are the library's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilenets.cli import arguments, common, training
from mobilenets.cli.training import Setting
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.segmentation import SEGMENTATION_DATA_HELP
from mobilenets.zoo.factory import cost

# segmentation's TrainConfig's defaults where they differ from TrainSettings' (but --data, which the
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
CALIBRATION_IMAGES = 100  # the segmentation task's int8 default
CALIBRATE_METHODS = arguments.CALIBRATE_METHODS  # tests/deploy check that these are the library's

TRAIN_SETTINGS = (
    training.data_setting(SEGMENTATION_DATA_HELP),
    Setting(
        "--model",
        str,
        "a registered segmenter: deeplabv3_mobilenet_v2 (MNet V2*, no "
        "ASPP), deeplabv3_mobilenet_v1 (with ASPP), lraspp_mobilenet_v3_large or _small "
        "(LR-ASPP on the reduced tail, V3 section 6.4); deeplabv3_<family> for any backbone",
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
    training.BACKBONE_WEIGHTS_SETTING,
    *training.OPTIMIZER_SETTINGS,
    training.NESTEROV_SETTING,
    training.CONV_WEIGHT_DECAY_SETTING,
    training.SCHEDULE_SETTING,
    training.LR_DECAY_SETTING,
    training.WARMUP_SETTING,
    training.EMA_SETTING,
    Setting(
        "--eval-batch-size",
        int,
        "validation images per batch; 1 scores each at its own "
        "size, a larger batch pads them to the largest",
        "B",
    ),
    *training.RUN_SETTINGS,
)


# --- train --------------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> None:
    from mobilenets.tasks.segmentation.train import TrainConfig, fit

    make_config = training.data_required(TrainConfig, SEGMENTATION_DATA_HELP)
    result = training.fit_from(args, TrainConfig, make_config, fit)
    if result is None:
        return
    final, out = result.final, result.out
    print(
        f"\nval mIoU {100 * final['mIoU']:.2f}%, pixel accuracy "
        f"{100 * final['pixel_accuracy']:.2f}% after {result.epochs} epochs (best mIoU "
        f"{100 * result.best:.2f}%)\n"
        + training.run_files(
            out, f"plots: {out / 'curves.png'}, {out / 'iou.png'}, {out / 'overlays'}"
        )
    )


TRAIN = training.train_command(
    run_train,
    help="train a Mobile DeepLabv3 segmenter",
    description="Train a Mobile DeepLabv3 segmenter into a run folder: checkpoints (best by "
    "val mIoU, and last), metrics, the final evaluation with the IoU of each class, curves, "
    "an IoU chart and validation overlays. An interrupted run continues with --resume; "
    "torchrun runs it on several GPUs.",
    settings=TRAIN_SETTINGS,
    defaults=training.task_defaults(SEGMENTATION_DEFAULTS),
)


# --- eval ---------------------------------------------------------------------------------------


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_eval_arguments(parser, SEGMENTATION_DATA_HELP, batch_size=1)
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


def run_eval(args: argparse.Namespace) -> None:
    from mobilenets.tasks.segmentation import inference as segmentation
    from mobilenets.tasks.segmentation.evaluate import METRIC_NAMES, evaluate

    checkpoint = segmentation.load_segmentation_checkpoint(args.checkpoint)
    metrics = evaluate(
        checkpoint,
        args.data,
        output_stride=args.output_stride,
        tta=args.tta,
        **arguments.loader_options(args),
    )
    model = segmentation.with_output_stride(checkpoint.model, args.output_stride)
    report = cost(model)
    names = ["mIoU", "pixel acc", "mean acc", "fwIoU"]
    row = [
        *common.cost_cells(model.name, report),
        *(f"{100 * metrics[name]:.2f}" for name in METRIC_NAMES),
    ]
    print(common.format_table([*common.COST_HEADERS, *names], [row]))
    rows = [
        [name, "-" if iou is None else f"{100 * iou:.2f}"]
        for name, iou in zip(metrics["classes"], metrics["IoU"], strict=True)
    ]
    print()
    print(common.format_table(["class", "IoU"], rows))
    resolution = model.config.resolution
    print(
        f"\n{metrics['pixels']:,} pixels scored at full image size, tta {args.tta}; metrics in %; "
        f"MACs of one {resolution}x{resolution} pass\n(IoU -: a class in neither the ground "
        "truth nor the predictions, left out of mIoU)"
    )
    if args.json:
        record = {
            **common.eval_record(checkpoint, args.data, model.name, report),
            "output_stride": model.config.output_stride,
            "tta": args.tta,
            **metrics,
        }
        print()
        common.save_json(args.json, record)


EVAL = common.Command(
    "eval",
    help="mIoU, pixel accuracy and the IoU of each class on val",
    description="Score a segmenter checkpoint on the validation split of a dataset at full "
    "image size: mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU and the "
    "IoU of each class, from one confusion matrix over every pixel.",
    add_arguments=add_eval_arguments,
    run=run_eval,
)


# --- predict ------------------------------------------------------------------------------------


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_checkpoint_argument(parser)
    arguments.add_images_argument(parser)
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
    arguments.add_device_argument(parser, "cpu")
    arguments.add_json_switch(parser, "the files written and the share of each class as JSON")


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


PREDICT = common.Command(
    "predict",
    help="segment images: a mask PNG and a colour overlay PNG per image",
    description="Segment images at their own size and write, for each IMAGE, "
    "OUT/STEM_mask.png (a palette PNG whose pixel values are the class indices, in the VOC "
    "colours) and OUT/STEM_overlay.png (the image blended with the class colours).",
    add_arguments=add_predict_arguments,
    run=run_predict,
)
