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
    model="ssdlite_mobilenet_v2", epochs=20, batch_size=32, optimizer="adamw", lr=3e-3,
    weight_decay=1e-4, loss="softmax", match_iou=0.5, augment="ssd",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

TRAIN_SETTINGS = (
    Setting("--data", str, f"required unless --resume: {DATA_HELP}", "SPEC"),
    Setting("--model", str, "a registered detector", "NAME"),
    Setting("--alpha", float, "backbone width multiplier (default: the detector's)", "A"),
    Setting("--resolution", int, "square input side in pixels (default: the detector's, 320)",
            "N"),
    *OPTIMIZER_SETTINGS,
    Setting("--weight-decay", float, "L2 on conv weights", "WD"),
    SCHEDULE_SETTING,
    Setting("--warmup-epochs", float, "linear warmup length", "E"),
    Setting("--ema-decay", float, "weight EMA decay; 0: no EMA", "D"),
    Setting("--loss", str, f"classification loss, {' or '.join(LOSSES)}: softmax is SSD's, with "
            "3:1 hard negative mining"),
    Setting("--match-iou", float, "IoU at which a default box matches an object", "IOU"),
    Setting("--augment", str, f"{' or '.join(AUGMENTS)}: SSD's (paper section 2.2), or "
            "horizontal flips only"),
    Setting("--backbone-weights", str, "start the backbone from torchvision, timm or keras "
            "ImageNet weights, or from a classification checkpoint (default: from scratch)",
            "SRC"),
    *RUN_SETTINGS,
)  # fmt: skip


def add_commands(commands) -> None:
    detect = commands.add_parser(
        "detect", help="SSDLite object detection: train, eval (COCO mAP), predict, export",
        description="SSDLite with a MobileNetV2 backbone (V2 paper section 6.2): train it, "
        "measure COCO mAP, draw its detections, export it to ONNX.",
    )  # fmt: skip
    actions = detect.add_subparsers(dest="action", required=True, parser_class=Parser,
                                    title="actions", metavar="ACTION")  # fmt: skip
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
        actions, "train", run_train,
        help="train an SSDLite detector",
        description="Train an SSDLite detector into a run folder: checkpoints (best by val AP, "
        "and last), metrics and the final COCO evaluation. An interrupted run continues with "
        "--resume; torchrun runs it on several GPUs.",
    )  # fmt: skip
    add_training_arguments(parser, TRAIN_SETTINGS, train_defaults(),
                           out_help="the run folder for checkpoints and metrics")  # fmt: skip


def detection_config(**settings):
    from mobilenets.tasks.detection.train import DetectionTrainConfig

    if "data" not in settings:
        raise MobileNetsError(f"--data is required (one of: {DATA_HELP})")
    return DetectionTrainConfig(**settings)


def run_train(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection.train import DetectionTrainConfig, fit_detector

    result = fit_from(args, DetectionTrainConfig, detection_config, fit_detector)
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
        actions, "eval", run_eval,
        help="COCO AP, AP50, AP75, APs, APm, APl on val",
        description="COCO box metrics (pycocotools) of a detector checkpoint on the validation "
        "split of a dataset.",
    )  # fmt: skip
    add_checkpoint_argument(parser)
    parser.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    add_loader_arguments(parser, batch_size=32)
    add_json_file_argument(parser)


def run_eval(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection import inference as detection
    from mobilenets.tasks.detection.evaluate import METRIC_NAMES

    checkpoint = detection.load_detection_checkpoint(args.checkpoint)
    metrics = detection.evaluate_checkpoint(
        checkpoint, args.data, batch_size=args.batch_size, workers=args.workers,
        device=args.device,
    )  # fmt: skip
    report = cost(checkpoint.model)
    row = [checkpoint.model.name, f"{report.params:,}", f"{report.macs / 1e6:.1f}M",
           *(f"{metrics[name]:.3f}" for name in METRIC_NAMES)]  # fmt: skip
    print(format_table(["model", "params", "MACs", *METRIC_NAMES], [row]))
    print(
        "\nCOCO box metrics (pycocotools): AP at IoU 0.50:0.95, 0.50 and 0.75; AP of small,"
        "\nmedium and large objects (-1: none of that size); AR100: recall at 100 detections"
    )
    if args.json:
        record = {"checkpoint": str(checkpoint.path), "data": args.data,
                  "model": checkpoint.model.name, "params": report.params, "macs": report.macs,
                  **metrics}  # fmt: skip
        print()
        save_json(args.json, record)


def add_predict(actions) -> None:
    parser = add_command(
        actions, "predict", run_predict,
        help="draw the detections of an image and save it",
        description="Detect the objects in one image, print them and save the image with its "
        "boxes, class names and scores drawn.",
    )  # fmt: skip
    add_checkpoint_argument(parser)
    parser.add_argument("image", metavar="IMAGE", help="an image file")
    parser.add_argument(
        "--out", metavar="FILE",
        help="the annotated image, .png or .jpg (default: IMAGE_STEM_detections.png in the "
        "current folder)",
    )  # fmt: skip
    parser.add_argument(
        "--score-threshold", type=float, default=0.3, metavar="S",
        help="lowest score drawn and printed, in [0, 1) (default %(default)s)",
    )  # fmt: skip
    add_device_argument(parser, "cpu")
    add_json_switch(parser, "the detections as JSON")


def run_predict(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection import inference as detection

    out = Path(args.out or f"{Path(args.image).stem}_detections.png")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise MobileNetsError(f"--out must end in .png, .jpg or .jpeg, got {str(out)!r}")
    checkpoint = detection.load_detection_checkpoint(args.checkpoint)
    image, found = detection.detect_image(checkpoint, args.image,
                                          score_threshold=args.score_threshold,
                                          device=args.device)  # fmt: skip
    drawn = detection.draw_detections(image, found, checkpoint.classes)
    with output_file(out) as path:
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(path)
    records = [
        {"class": checkpoint.classes[label], "score": round(score, 4),
         "box": [round(value, 1) for value in box]}
        for label, score, box in zip(found["labels"].tolist(), found["scores"].tolist(),
                                     found["boxes"].tolist(), strict=True)
    ]  # fmt: skip
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
)  # fmt: skip


def add_export(actions) -> None:
    parser = add_command(
        actions, "export", run_export,
        help="ONNX with BN folded and the box decoding inside (NMS too with --nms)",
        description="Export a detector to ONNX with BN folded and the box decoding inside: "
        "outputs boxes [N, A, 4] and class scores [N, A, C], checked against PyTorch with "
        "onnxruntime; non-maximum suppression is left to the caller. With --nms the file also "
        "applies the score threshold, class-wise NMS (ONNX NonMaxSuppression) and the top "
        "--max-detections, and outputs boxes [N, K, 4], scores [N, K], classes [N, K] and count "
        "[N], checked against the PyTorch post-processing.",
    )  # fmt: skip
    add_checkpoint_argument(parser)
    parser.add_argument("--out", required=True, metavar="FILE.onnx", help="the file to write")
    parser.add_argument("--opset", type=int, metavar="N", help=OPSET_HELP)
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="a dynamic batch axis (default: batch 1)")  # fmt: skip
    parser.add_argument("--nms", action="store_true",
                        help="put the score threshold, NMS and the top-k in the file")  # fmt: skip
    for flag, kind, default, metavar, text in NMS_SETTINGS:
        parser.add_argument(flag, type=kind, metavar=metavar,
                            help=f"with --nms: {text} (default {default})")  # fmt: skip


def run_export(args: argparse.Namespace) -> None:
    from mobilenets.deploy import onnx_export as export

    given = {flag: getattr(args, flag[2:].replace("-", "_")) for flag, *_ in NMS_SETTINGS}
    if not args.nms:
        stray = [flag for flag, value in given.items() if value is not None]
        if stray:
            raise MobileNetsError(f"{stray[0]} applies with --nms only")
    opset = export.DEFAULT_OPSET if args.opset is None else args.opset
    export.check_options(args.out, opset)
    from mobilenets.tasks.detection import export as detection_export
    from mobilenets.tasks.detection.inference import load_detection_checkpoint

    settings = {flag[2:].replace("-", "_"): value for flag, value in given.items()
                if value is not None}  # fmt: skip
    checkpoint = load_detection_checkpoint(args.checkpoint)
    report = detection_export.export_detector(checkpoint, args.out, opset=opset,
                                              dynamic_batch=args.dynamic_batch, nms=args.nms,
                                              **settings)  # fmt: skip
    header = (
        f"wrote {report.path} ({report.model_name}; opset {report.opset}, input "
        f"{export.format_shape(report.input_shape)}, "
    )
    tail = f"{report.file_bytes / 1e6:.1f} MB, {report.bn_folded} BN folded)"
    if report.nms is None:
        print(
            f"{header}outputs boxes [N, {report.num_boxes}, 4] and scores [N, {report.num_boxes}"
            f", {report.num_classes}], {tail}\nonnxruntime {report.onnxruntime_version} vs "
            f"PyTorch: max abs diff {report.max_abs_diff:.2g}\nNMS is left to the caller: keep "
            "scores above a threshold per class, then torchvision.ops.batched_nms or the runtime's"
        )
        return
    nms, k = report.nms, report.nms.max_detections
    print(
        f"{header}outputs boxes [N, {k}, 4], scores [N, {k}], classes [N, {k}] and count [N], "
        f"{tail}\nNMS in the graph: score > {nms.score_threshold:g}, the {nms.pre_nms_top_k} best "
        f"through class-wise NMS at IoU {nms.nms_iou:g}, the {k} best kept\nonnxruntime "
        f"{report.onnxruntime_version} vs PyTorch's postprocess: same detections, max abs diff "
        f"{report.max_abs_diff:.2g}"
    )
