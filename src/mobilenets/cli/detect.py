"""``detect train``, ``eval`` and ``predict``: SSDLite object detection (``detect export`` and
``quantize`` are in [`detect_export`][mobilenets.cli.detect_export]).

mobilenets.tasks.detection needs the detection extra (pycocotools), and its export the onnx
extra, so each command imports it when it runs (see the package's docstring); the defaults and
choices the flags show are repeated here, and tests check that they are the library's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from mobilenets.cli import arguments, common, training
from mobilenets.cli.training import Setting
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.detection import DATA_HELP
from mobilenets.zoo.factory import cost

# detection's TrainConfig's choices and the defaults in which it differs from TrainSettings.
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
CALIBRATION_IMAGES = 256  # tasks.detection.quantize's default
CALIBRATE = arguments.CALIBRATE_METHODS  # tests/tasks check that these are the library's

TRAIN_SETTINGS = (
    training.data_setting(DATA_HELP),
    Setting(
        "--model",
        str,
        "a registered detector: ssdlite_mobilenet_v2, or ssdlite_mobilenet_v3_large or "
        "_small (the reduced tail, V3 section 6.2); ssdlite_<family> for any backbone family",
        "NAME",
    ),
    Setting("--alpha", float, "backbone width multiplier (default: the detector's)", "A"),
    Setting("--resolution", int, "square input side in pixels (default: the detector's, 320)", "N"),
    *training.OPTIMIZER_SETTINGS,
    training.CONV_WEIGHT_DECAY_SETTING,
    training.SCHEDULE_SETTING,
    training.WARMUP_SETTING,
    training.EMA_SETTING,
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
    training.BACKBONE_WEIGHTS_SETTING,
    *training.RUN_SETTINGS,
)


# --- train --------------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection.train import TrainConfig, fit

    make_config = training.data_required(TrainConfig, DATA_HELP)
    result = training.fit_from(args, TrainConfig, make_config, fit)
    if result is None:
        return
    final = result.final
    print(
        f"\nval AP {final['AP']:.3f}, AP50 {final['AP50']:.3f}, AP75 {final['AP75']:.3f} after "
        f"{result.epochs} epochs (best AP {result.best:.3f})\n" + training.run_files(result.out)
    )


TRAIN = training.train_command(
    run_train,
    help="train an SSDLite detector",
    description="Train an SSDLite detector into a run folder: checkpoints (best by val AP, "
    "and last), metrics and the final COCO evaluation. An interrupted run continues with "
    "--resume; torchrun runs it on several GPUs.",
    settings=TRAIN_SETTINGS,
    defaults=training.task_defaults(DETECTION_DEFAULTS),
    out_help="the run folder for checkpoints and metrics",
)


# --- eval and predict ---------------------------------------------------------------------------


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_eval_arguments(parser, DATA_HELP, batch_size=32)


def run_eval(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection import inference as detection
    from mobilenets.tasks.detection.evaluate import METRIC_NAMES, evaluate

    checkpoint = detection.load_detection_checkpoint(args.checkpoint)
    metrics = evaluate(checkpoint, args.data, **arguments.loader_options(args))
    report = cost(checkpoint.model)
    row = [
        *common.cost_cells(checkpoint.model.name, report),
        *(f"{metrics[name]:.3f}" for name in METRIC_NAMES),
    ]
    print(common.format_table([*common.COST_HEADERS, *METRIC_NAMES], [row]))
    print(
        "\nCOCO box metrics (pycocotools): AP at IoU 0.50:0.95, 0.50 and 0.75; AP of small,"
        "\nmedium and large objects (-1: none of that size); AR100: recall at 100 detections"
    )
    if args.json:
        record = common.eval_record(checkpoint, args.data, checkpoint.model.name, report)
        print()
        common.save_json(args.json, {**record, **metrics})


EVAL = common.Command(
    "eval",
    help="COCO AP, AP50, AP75, APs, APm, APl on val",
    description="COCO box metrics (pycocotools) of a detector checkpoint on the validation "
    "split of a dataset.",
    add_arguments=add_eval_arguments,
    run=run_eval,
)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_checkpoint_argument(parser)
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
    arguments.add_device_argument(parser, "cpu")
    arguments.add_json_switch(parser, "the detections as JSON")


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
    with common.output_file(out) as path:
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


PREDICT = common.Command(
    "predict",
    help="draw the detections of an image and save it",
    description="Detect the objects in one image, print them and save the image with its "
    "boxes, class names and scores drawn.",
    add_arguments=add_predict_arguments,
    run=run_predict,
)
