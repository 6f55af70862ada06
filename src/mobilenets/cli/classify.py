"""``train``, ``eval`` and ``predict``: image classification (its ``export`` and ``quantize`` are
in [`classify_export`][mobilenets.cli.classify_export])."""

from __future__ import annotations

import argparse
import dataclasses
import json

from mobilenets.cli.arguments import (
    CHECKPOINT_HELP,
    PUBLISHED_WEIGHTS,
    add_device_argument,
    add_images_argument,
    add_json_file_argument,
    add_json_switch,
    add_loader_arguments,
    loader_options,
)
from mobilenets.cli.common import (
    COST_HEADERS,
    Command,
    cost_cells,
    eval_record,
    format_table,
    save_json,
)
from mobilenets.cli.training import (
    EMA_SETTING,
    LR_DECAY_SETTING,
    NESTEROV_SETTING,
    OPTIMIZER_SETTINGS,
    RUN_SETTINGS,
    SCHEDULE_SETTING,
    WARMUP_SETTING,
    Setting,
    default_text,
    field_defaults,
    fit_from,
    run_files,
    train_command,
)
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import V3_WIDTH_RULES, families
from mobilenets.data.classification import SPEC_HELP
from mobilenets.engine.checkpoint import Checkpoint, load_checkpoint, pretrained_checkpoint
from mobilenets.engine.evaluate import TTA_MODES, TTA_PASSES
from mobilenets.tasks.classification import train as training
from mobilenets.tasks.classification.evaluate import evaluate, evaluate_imagenet
from mobilenets.tasks.classification.inference import predict
from mobilenets.zoo.factory import cost
from mobilenets.zoo.pretrained import PUBLISHERS

TRAIN_SETTINGS = (
    Setting(
        "--model",
        str,
        f"a registered variant, or a family ({', '.join(families())}) sized by --alpha and "
        "--resolution",
        "NAME",
    ),
    Setting("--data", str, SPEC_HELP, "SPEC"),
    Setting(
        "--preset", str, f"the recipe the other settings override: {', '.join(training.PRESETS)}"
    ),
    Setting(
        "--weights",
        str,
        f"start from these weights (fine-tuning): {PUBLISHED_WEIGHTS}, "
        "or a checkpoint such as a run's best.safetensors; the classifier is new where the "
        "class count differs (default: from scratch)",
        "SRC",
    ),
    *OPTIMIZER_SETTINGS,
    NESTEROV_SETTING,
    Setting("--weight-decay", float, "L2 on conv and linear weights", "WD"),
    SCHEDULE_SETTING,
    LR_DECAY_SETTING,
    WARMUP_SETTING,
    Setting("--label-smoothing", float, "label smoothing in [0, 1)", "S"),
    EMA_SETTING,
    Setting("--augment", str, f"one of {', '.join(training.AUGMENTS)}"),
    Setting("--random-erasing", float, "random erasing probability", "P"),
    Setting(
        "--device-data",
        str,
        f"one of {', '.join(training.DEVICE_DATA)}: 'on' keeps an "
        "in-memory dataset (fashion-mnist, cifar10, cifar100, synthetic) on the training "
        "device and augments whole batches there, much faster on a GPU, and decodes an "
        "ImageFolder's JPEGs there (--augment basic, no --random-erasing); 'off' augments "
        "image by image in the data loader; 'auto' is on with a CUDA device where it can be. "
        "Same recipe, different random draws: a run repeats exactly only with the same "
        "choice",
        "MODE",
    ),
    Setting("--alpha", float, "width multiplier (default: the model's)", "A"),
    Setting(
        "--resolution",
        int,
        "input side in pixels (default: the model's, or the images' own for small images)",
        "N",
    ),
    Setting(
        "--small-input",
        argparse.BooleanOptionalAction,
        "the output-stride-8 variant (default: on for images of at most 64 px)",
    ),
    Setting("--dropout", float, "classifier dropout (default: the architecture's)", "P"),
    Setting(
        "--width-rule",
        str,
        f"V3: how --alpha sets the widths, {' or '.join(V3_WIDTH_RULES)} (default tf)",
        "RULE",
    ),
    Setting("--minimalistic", "store_true", "V3: no SE, ReLU everywhere, 3x3 depthwise convs"),
    Setting(
        "--reduced-tail",
        "store_true",
        "V3: the last stage, head conv and pre-logits layer at half width",
    ),
    Setting(
        "--skip-bad-images",
        "store_true",
        "skip unreadable image files (counted and reported) instead of stopping",
    ),
    *RUN_SETTINGS,
)


# --- train --------------------------------------------------------------------------------------


def train_defaults() -> dict[str, str]:
    """Each setting's default as help text: the default preset's value, then another preset's
    where it differs."""
    base = field_defaults(training.TrainConfig)
    preset = base["preset"]
    texts = {}
    for name, value in {**base, **training.PRESETS[preset]}.items():
        if value is None or value == "":
            continue
        text = [default_text(value)]
        for other, settings in training.PRESETS.items():
            other_value = settings.get(name, base[name])
            if other != preset and other_value != value:
                text.append(f"{default_text(other_value)} with --preset {other}")
        texts[name] = "; ".join(text)
    return texts


def run_train(args: argparse.Namespace) -> None:
    result = fit_from(args, training.TrainConfig, training.train_config, training.fit)
    if result is None:
        return
    out = result.out
    print(
        f"\nbest val top-1 {100 * result.best:.2f}%, final {100 * result.final.top1:.2f}% "
        f"after {result.epochs} epochs\n"
        + run_files(out, f"plots: {out / 'curves.png'}, {out / 'confusion.png'}")
    )


TRAIN = train_command(
    run_train,
    help="train a MobileNet classifier on a dataset",
    description="Train a MobileNet on a dataset into a run folder: checkpoints (best and "
    "last), metrics, curves and the confusion matrix. An interrupted run continues with "
    "--resume; torchrun runs it on several GPUs.",
    settings=TRAIN_SETTINGS,
    defaults=train_defaults(),
)


# --- eval and predict ---------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, or --model with --weights: the model eval and predict run."""
    parser.add_argument("--checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)
    parser.add_argument(
        "--model", metavar="NAME", help="a registered variant, e.g. mobilenet_v2_1.0_224"
    )
    parser.add_argument(
        "--weights",
        metavar="SRC",
        help=f"published weights for --model: {PUBLISHED_WEIGHTS}",
    )


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation, none or flip (default %(default)s): flip scores each image "
        "by the mean of its and its mirror image's probabilities, at twice the cost",
    )


def checkpoint_from(args: argparse.Namespace) -> Checkpoint:
    if args.checkpoint and (args.model or args.weights):
        raise MobileNetsError("give --checkpoint, or --model with --weights, not both")
    if args.checkpoint:
        return load_checkpoint(args.checkpoint)
    if not (args.model and args.weights):
        raise MobileNetsError(
            f"give --checkpoint CKPT, or --model NAME --weights {'|'.join(PUBLISHERS)}"
        )
    return pretrained_checkpoint(args.model, args.weights)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help=f"{SPEC_HELP}; for ImageNet weights, a validation folder with one WordNet-id "
        "folder per class (n01440764/...)",
    )
    add_loader_arguments(parser, batch_size=256)
    add_tta_argument(parser)
    add_json_file_argument(parser)


def tta_label(tta: str) -> str:
    return "" if tta == "none" else f" + {tta} TTA"


def tta_passes_label(tta: str) -> str:
    """The MACs of an image are the model's times its forward passes: "2 x " with flip TTA."""
    passes = TTA_PASSES[tta]
    return "" if passes == 1 else f"{passes} x "


def run_eval(args: argparse.Namespace) -> None:
    checkpoint = checkpoint_from(args)
    if checkpoint.class_ids is not None:
        run_imagenet_eval(args, checkpoint)
        return
    result = evaluate(
        checkpoint,
        args.data,
        **loader_options(args),
        tta=args.tta,
    )
    report = cost(checkpoint.model)
    summary = [
        [
            *cost_cells(
                checkpoint.model.name + tta_label(args.tta), report, tta_passes_label(args.tta)
            ),
            f"{100 * result.top1:.2f}",
            f"{100 * result.top5:.2f}",
            f"{result.count:,}",
        ]
    ]
    print(format_table([*COST_HEADERS, "top-1 %", "top-5 %", "images"], summary))
    rows = [
        [name, f"{100 * accuracy:.2f}", f"{int(total):,}"]
        for name, accuracy, total in zip(
            checkpoint.classes, result.per_class, result.confusion.sum(1).tolist(), strict=True
        )
    ]
    print()
    print(format_table(["class", "top-1 %", "images"], rows))
    if args.json:
        record = {
            **eval_record(checkpoint, args.data, checkpoint.model.name, report),
            "tta": args.tta,
            "passes": TTA_PASSES[args.tta],
            **result.to_dict(list(checkpoint.classes)),
        }
        print()
        save_json(args.json, record)


def run_imagenet_eval(args: argparse.Namespace, checkpoint: Checkpoint) -> None:
    """ImageNet weights on a validation folder, printed as the blog's table (name, params,
    top-1, top-5) beside the figures the weights were published with."""
    result = evaluate_imagenet(
        checkpoint,
        args.data,
        **loader_options(args),
        tta=args.tta,
    )
    report = cost(checkpoint.model)
    published = checkpoint.metrics or {}
    record = getattr(checkpoint.model, "weights_record", None)
    label = checkpoint.model.name + (f" ({record.source})" if record else "") + tta_label(args.tta)

    def fraction(percent: float | None) -> str:
        return "-" if percent is None else f"{percent / 100:.3f}"

    print("| Model | Params | Top-1 | Top-5 | Published top-1 | Published top-5 | Images |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {label} | {report.params / 1e6:.2f}M | {result.top1:.3f} | {result.top5:.3f} "
        f"| {fraction(published.get('top1'))} | {fraction(published.get('top5'))} "
        f"| {result.count:,} |"
    )
    if args.json:
        values = {
            "model": checkpoint.model.name,
            "weights": record.to_dict() if record else None,
            "checkpoint": str(checkpoint.path),
            "data": args.data,
            "params": report.params,
            "macs": report.macs,
            "tta": args.tta,
            "passes": TTA_PASSES[args.tta],
            "top1": result.top1,
            "top5": result.top5,
            "count": result.count,
            "published": published,
        }
        print()
        save_json(args.json, values)


EVAL = Command(
    "eval",
    help="top-1, top-5 and per-class accuracy of a checkpoint",
    description="Evaluate a checkpoint on the validation split of a dataset (top-1, top-5, "
    "per class), or published ImageNet weights on an ImageNet validation folder beside the "
    "accuracy they were published with.",
    add_arguments=add_eval_arguments,
    run=run_eval,
)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    add_images_argument(parser)
    add_model_arguments(parser)
    parser.add_argument(
        "--topk",
        type=int,
        default=5,
        metavar="K",
        help="classes shown per image (default %(default)s)",
    )
    add_device_argument(parser, "cpu")
    add_tta_argument(parser)
    add_json_switch(parser, "the predictions as JSON")


def run_predict(args: argparse.Namespace) -> None:
    checkpoint = checkpoint_from(args)
    predictions = predict(checkpoint, args.images, args.topk, args.device, args.tta)
    if args.json:
        print(json.dumps([dataclasses.asdict(prediction) for prediction in predictions]))
        return
    for prediction in predictions:
        print(prediction.path)
        for name, probability in zip(prediction.classes, prediction.probabilities, strict=True):
            print(f"  {probability:7.2%}  {name}")


PREDICT = Command(
    "predict",
    help="the top classes of image files, with their probabilities",
    description="The most probable classes of each image, by a checkpoint or by published "
    "weights, each image preprocessed as the model was evaluated.",
    add_arguments=add_predict_arguments,
    run=run_predict,
)
