"""The ``mobilenets`` command line: argument parsing and printing only.

Every command calls a library function; errors a user can cause (``MobileNetsError``) become one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path

from mobilenets.core.cost import CostReport
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import write_json
from mobilenets.core.spec import format_alpha
from mobilenets.core.version import __version__
from mobilenets.data.classification import SPEC_HELP
from mobilenets.engine.checkpoint import Checkpoint, load_checkpoint, pretrained_checkpoint
from mobilenets.engine.evaluate import TTA_MODES, TTA_PASSES
from mobilenets.engine.settings import AMPS, OPTIMIZERS, PLACEMENT, SCHEDULES
from mobilenets.tasks.classification import train as training
from mobilenets.tasks.classification.inference import (
    evaluate_checkpoint,
    evaluate_imagenet,
    predict,
)
from mobilenets.zoo.convert import SOURCES
from mobilenets.zoo.factory import cost
from mobilenets.zoo.pretrained import list_weights
from mobilenets.zoo.registry import get_entry, is_detector, list_models

FAMILIES = {"v1": "mobilenet_v1", "v2": "mobilenet_v2"}
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
NUMBER = re.compile(r"^(-|[-+]?[\d,.]+[%MKx]?)$")  # a cell to right-align


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake prints one line instead of the usage block; the parsed
    arguments remember the (sub)parser that read them, whose flags name errors (see
    [`as_flags`][mobilenets.cli.as_flags])."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(parser=self)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _millions(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value / 1e6:.{digits}f}"


def _published(value: float | None, spec: str = "g") -> str:
    return "-" if value is None else format(value, spec)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table; columns whose cells look numeric are right-aligned."""
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def numeric(i: int) -> bool:
        return all(NUMBER.match(row[i]) for row in rows)

    right = [numeric(i) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            cell.rjust(w) if r else cell.ljust(w)
            for cell, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- zoo ----------------------------------------------------------------------------------------


def zoo_rows(family: str | None = None) -> list[dict]:
    """One record per registered variant: our exact cost beside the published figures."""
    pattern = f"{FAMILIES[family]}_*" if family else "*"
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        report = cost(name)
        reference = entry.reference
        rows.append(
            {
                "name": name,
                "arch": entry.arch,
                "alpha": entry.alpha,
                "resolution": entry.resolution,
                "params": report.params,
                "macs": report.macs,
                "reference": None if reference is None else vars(reference),
                "paper": [vars(row) for row in entry.paper],
            }
        )
    return rows


def print_zoo(rows: list[dict]) -> None:
    headers = ["name", "alpha", "res", "params M", "MACs M", "ref params M", "ref MACs M",
               "top-1", "top-5", "source"]  # fmt: skip
    table = []
    for row in rows:
        ref = row["reference"] or {}
        table.append(
            [row["name"], format_alpha(row["alpha"]), str(row["resolution"]),
             _millions(row["params"]), _millions(row["macs"], 1),
             _published(ref.get("params_m"), ".2f"), _published(ref.get("macs_m")),
             _published(ref.get("top1"), ".1f"), _published(ref.get("top5"), ".1f"),
             ref.get("source", "no published checkpoint")]
        )  # fmt: skip
    print(format_table(headers, table))
    print(
        "\nparams and MACs are exact counts for 1000 classes (params: conv and linear weights,"
        "\nclassifier bias, BN scale and shift; MACs: convs and classifier). The ref columns"
        "\nare the published checkpoint's figures: TF-slim counts 1001 classes, and its V2"
        "\nparams leave out BN. top-1/top-5: ImageNet, single crop, as published."
    )


def plot_zoo(rows: list[dict], path: str) -> None:
    """Published top-1 against MACs (log scale), one line per family and alpha (V1 Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        if row["reference"] and row["reference"]["top1"] is not None:
            lines.setdefault((row["arch"], row["alpha"]), []).append(row)
    if not lines:
        raise MobileNetsError("no variant in this selection has a published top-1 to plot")
    figure, axes = plt.subplots(figsize=(8, 5.5))
    for (arch, alpha), points in sorted(lines.items()):
        points.sort(key=lambda row: row["macs"])
        macs = [row["macs"] / 1e6 for row in points]
        top1 = [row["reference"]["top1"] for row in points]
        marker = "o" if arch == "mobilenet_v1" else "s"
        style = "--" if arch == "mobilenet_v1" else "-"
        axes.plot(macs, top1, style, marker=marker, label=f"{arch} {format_alpha(alpha)}")
        for row, x, y in zip(points, macs, top1, strict=True):
            axes.annotate(str(row["resolution"]), (x, y), fontsize=6, xytext=(3, -8),
                          textcoords="offset points")  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("multiply-adds (millions, log scale)")
    axes.set_ylabel("ImageNet top-1 (%), as published")
    axes.set_title("MobileNets: accuracy against mult-adds (labels: input resolution)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=120)
    except OSError as error:
        raise MobileNetsError(f"cannot write plot {path!r}: {error}") from error
    finally:
        plt.close(figure)


def run_zoo(args: argparse.Namespace) -> None:
    if args.plot is not None and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise MobileNetsError(
            f"--plot takes a file ending in {', '.join(PLOT_SUFFIXES)}, got {args.plot!r}"
        )
    rows = zoo_rows(args.family)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_zoo(rows)
    if args.plot is not None:
        plot_zoo(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)


# --- cost ---------------------------------------------------------------------------------------


def _shape(shape: tuple[int, int, int]) -> str:
    channels, height, width = shape
    return f"{channels}" if height == width == 1 else f"{channels}x{height}x{width}"


def print_cost(report: CostReport, *, by_kind: bool, standard: bool) -> None:
    print(
        f"{report.name}: alpha {format_alpha(report.alpha)}, {report.resolution}x"
        f"{report.resolution} input, {report.num_classes} classes"
        + (
            "\nsmall-input variant: stride-1 stem and first stride-2 stage (output stride 8)"
            if report.name.endswith("_small")
            else ""
        )
        + "\n"
    )
    rows = [
        [layer.name, layer.kind, _shape(layer.in_shape), _shape(layer.out_shape),
         f"{layer.params:,}", f"{layer.macs:,}", f"{layer.activation_bytes / 1000:.1f}"]
        for layer in report.layers
    ]  # fmt: skip
    headers = ["layer", "kind", "input", "output", "params", "MACs", "act KB"]
    print(format_table(headers, rows))
    print(
        f"\ntotal: {report.params:,} params, {report.macs:,} MACs ({report.macs / 1e6:.1f}M)"
        f"\nbody (conv weights only, no BN, no classifier): {report.body_params:,} params, "
        f"{report.body_macs:,} MACs"
        f"\nBN running statistics (buffers, not params): {report.bn_buffers:,}"
        f"\npeak activation (V2 Table 3, 16-bit): {report.peak_activation_bytes:,} bytes "
        f"({report.peak_activation_bytes / 1000:.0f}K), output of {report.peak_activation_tensor}"
    )
    if by_kind:
        rows = [
            [row.label, f"{row.macs:,}", f"{row.macs_percent:.2f}%", f"{row.weights:,}",
             f"{row.weights_percent:.2f}%"]
            for row in report.by_kind()
        ]  # fmt: skip
        print("\nby layer kind (V1 Table 2: weights without bias or BN):")
        print(format_table(["type", "MACs", "MACs %", "weights", "weights %"], rows))
    if standard:
        print(
            "\nwith full convolutions instead of depthwise separable ones (V1 Table 4):"
            f"\n  params {report.standard_params:,} ({report.standard_params / 1e6:.1f}M, "
            f"{report.standard_params / report.params:.1f}x)"
            f"\n  MACs   {report.standard_macs:,} ({report.standard_macs / 1e6:.0f}M, "
            f"{report.standard_macs / report.macs:.1f}x)"
        )


def run_cost(args: argparse.Namespace) -> None:
    report = cost(
        args.name,
        resolution=args.resolution,
        rho=args.rho,
        alpha=args.alpha,
        num_classes=args.num_classes,
        expansion=args.expansion,
        small_input=args.small_input,
        in_chans=args.in_chans,
    )
    if args.json:
        print(json.dumps(report.to_dict(by_kind=args.by_kind), indent=2))
    else:
        print_cost(report, by_kind=args.by_kind, standard=args.standard)
        print_detector_paper(args.name, report)


def print_detector_paper(name: str, report: CostReport) -> None:
    """For a detector: our totals beside the paper's (V2 Table 6 counts at 320x320)."""
    if not is_detector(name):
        return
    (paper,) = get_entry(name).paper
    print(
        f"\npaper ({paper.source}): {paper.params_m}M params, {paper.macs_m / 1000:.1f}B MAdds"
        f"\nours / paper: params {report.params / (paper.params_m * 1e6):.3f}, "
        f"MACs {report.macs / (paper.macs_m * 1e6):.3f}"
    )


# --- train, eval, predict ------------------------------------------------------------------------

# Flags of `train` and `detect train` that map one to one onto their configs' fields: (flag,
# type, help). The optimizer's come first in both, the run's last.
OPTIMIZER_FLAGS = (
    ("--epochs", int, "passes over the training set"),
    ("--batch-size", int, "images per step and process"),
    ("--lr", float, "peak learning rate"),
    ("--optimizer", str, f"one of {', '.join(OPTIMIZERS)}"),
    ("--momentum", float, "SGD / RMSProp momentum"),
)
RUN_FLAGS = (
    ("--amp", str, f"mixed precision: {', '.join(AMPS)}"),
    ("--seed", int, "seed of initialisation, data order and augmentation"),
    ("--workers", int, "data loader processes"),
    ("--state-every", int, "steps between mid-epoch saves of the run's state"),
    ("--state-minutes", float, "minutes between mid-epoch saves of the run's state"),
    ("--device", str, "auto, cpu or cuda[:N]"),
)
TRAIN_FLAGS = (
    *OPTIMIZER_FLAGS,
    ("--weight-decay", float, "L2 on conv and linear weights"),
    ("--schedule", str, f"one of {', '.join(SCHEDULES)}"),
    ("--lr-decay", float, "per-epoch factor of the exponential schedule"),
    ("--warmup-epochs", float, "linear warmup length"),
    ("--label-smoothing", float, "label smoothing in [0, 1)"),
    ("--ema-decay", float, "weight EMA decay (0: off)"),
    ("--augment", str, f"one of {', '.join(training.AUGMENTS)}"),
    ("--random-erasing", float, "random erasing probability"),
    ("--alpha", float, "width multiplier"),
    ("--resolution", int, "input side in pixels"),
    ("--dropout", float, "classifier dropout"),
    *RUN_FLAGS,
)


def add_train_parser(commands) -> None:
    parser = commands.add_parser("train", help="train a MobileNet on a dataset")
    parser.add_argument("--model", default=None, help="a variant or family (mobilenet_v2)")
    parser.add_argument("--data", default=None, help=SPEC_HELP)
    parser.add_argument("--preset", default="modern", help=f"recipe: {', '.join(training.PRESETS)}")
    parser.add_argument(
        "--weights", default=None, metavar="SRC",
        help="start from these weights (fine-tuning): keras, torchvision, timm (or SOURCE:TAG) "
        "or a weights file, such as a run's best.safetensors; the classifier is new where the "
        "class count differs",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="run folder for checkpoints and plots")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    for flag, kind, text in TRAIN_FLAGS:
        parser.add_argument(flag, type=kind, help=text)
    for flag, text in (
        ("--small-input", "the output-stride-8 variant (default: on for images <= 64 px)"),
        ("--channels-last", "channels_last memory format (default on)"),
        ("--nesterov", "nesterov momentum for SGD"),
    ):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="skip unreadable image files (counted and reported) instead of stopping",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_train)


def resume_placement(given: dict) -> dict:
    """Of the settings given with --resume, those it may change (where the run executes); any
    other is an error, as the saved run keeps its own."""
    other = sorted(flag_name(name) for name in given if name not in PLACEMENT)
    if other:
        allowed = ", ".join(flag_name(name) for name in PLACEMENT)
        raise MobileNetsError(f"--resume continues the saved run with its own settings; drop "
                              f"{', '.join(other)} (it may change only {allowed})")  # fmt: skip
    return given


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def run_train(args: argparse.Namespace) -> None:
    fields = {flag.lstrip("-").replace("-", "_") for flag, _, _ in TRAIN_FLAGS}
    fields |= {"model", "data", "small_input", "channels_last", "nesterov", "compile"}
    fields |= {"skip_bad_images", "weights"}
    overrides = {name: getattr(args, name) for name in fields}
    placement = None
    if args.resume:
        placement = resume_placement({k: v for k, v in overrides.items() if v is not None})
        config = None  # the saved run's own
    else:
        config = training.train_config(args.preset, **overrides)
    result = training.fit(config, args.out, resume=args.resume, placement=placement,
                          progress=not args.no_progress)  # fmt: skip
    if not result.main_process:
        return
    out = result.out
    print(
        f"\nbest val top-1 {100 * result.best:.2f}%, final {100 * result.final.top1:.2f}% "
        f"after {result.epochs} epochs"
        f"\ncheckpoint: {out / 'best.safetensors'} (last: {out / 'last.safetensors'})"
        f"\nplots: {out / 'curves.png'}, {out / 'confusion.png'}"
        f"\nmetrics: {out / 'metrics.jsonl'}, {out / 'eval.json'}"
    )


def add_eval_parser(commands) -> None:
    parser = commands.add_parser("eval", help="top-1, top-5, per-class accuracy of a checkpoint")
    add_model_arguments(parser)
    parser.add_argument(
        "--data", required=True,
        help=f"{SPEC_HELP}; for ImageNet weights, a validation folder with "
        "one WordNet-id folder per class (n01440764/...)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    add_tta_argument(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.set_defaults(run=run_eval)


def add_tta_argument(parser) -> None:
    parser.add_argument(
        "--tta", choices=TTA_MODES, default="none",
        help="test-time augmentation: flip scores each image by the mean of its and its mirror "
        "image's probabilities (twice the cost; default %(default)s)",
    )  # fmt: skip


def add_model_arguments(parser) -> None:
    """--checkpoint, or --model with --weights: what eval and predict run."""
    parser.add_argument("--checkpoint", help="a .safetensors file or run folder")
    parser.add_argument("--model", help="a registered name, e.g. mobilenet_v2_1.0_224")
    parser.add_argument(
        "--weights", help="published ImageNet weights for --model: keras, torchvision, timm "
        "(or SOURCE:TAG, e.g. torchvision:IMAGENET1K_V2)",
    )  # fmt: skip


def checkpoint_from(args: argparse.Namespace) -> Checkpoint:
    if args.checkpoint and (args.model or args.weights):
        raise MobileNetsError("give --checkpoint, or --model with --weights, not both")
    if args.checkpoint:
        return load_checkpoint(args.checkpoint)
    if not (args.model and args.weights):
        raise MobileNetsError(
            "give --checkpoint CKPT, or --model NAME --weights keras|torchvision|timm"
        )
    return pretrained_checkpoint(args.model, args.weights)


def run_eval(args: argparse.Namespace) -> None:
    checkpoint = checkpoint_from(args)
    if checkpoint.class_ids is not None:
        run_imagenet_eval(args, checkpoint)
        return
    result = evaluate_checkpoint(
        checkpoint, args.data, batch_size=args.batch_size, workers=args.workers,
        device=args.device, tta=args.tta,
    )  # fmt: skip
    report = cost(checkpoint.model)
    summary = [[
        checkpoint.model.name + tta_label(args.tta), f"{report.params:,}",
        tta_passes_label(args.tta) + f"{report.macs / 1e6:.1f}M",
        f"{100 * result.top1:.2f}", f"{100 * result.top5:.2f}", f"{result.count:,}",
    ]]  # fmt: skip
    print(format_table(["model", "params", "MACs", "top-1 %", "top-5 %", "images"], summary))
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
            "checkpoint": str(checkpoint.path), "data": args.data, "model": checkpoint.model.name,
            "params": report.params, "macs": report.macs, "tta": args.tta,
            "passes": TTA_PASSES[args.tta],
            **result.to_dict(list(checkpoint.classes)),
        }  # fmt: skip
        write_json(Path(args.json), record)
        print(f"\nwrote {args.json}")


def tta_label(tta: str) -> str:
    return "" if tta == "none" else f" + {tta} TTA"


def tta_passes_label(tta: str) -> str:
    """The MACs of an image are the model's times its forward passes: "2 x " with flip TTA."""
    passes = TTA_PASSES[tta]
    return "" if passes == 1 else f"{passes} x "


def run_imagenet_eval(args: argparse.Namespace, checkpoint: Checkpoint) -> None:
    """ImageNet weights on a validation folder, printed as the blog's table (name, params,
    top-1, top-5) beside the figures the weights were published with."""
    result = evaluate_imagenet(
        checkpoint, args.data, batch_size=args.batch_size, workers=args.workers,
        device=args.device, tta=args.tta,
    )  # fmt: skip
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
        record_dict = {
            "model": checkpoint.model.name, "weights": record.to_dict() if record else None,
            "checkpoint": str(checkpoint.path), "data": args.data, "params": report.params,
            "macs": report.macs, "tta": args.tta, "passes": TTA_PASSES[args.tta],
            "top1": result.top1, "top5": result.top5,
            "count": result.count, "published": published,
        }  # fmt: skip
        write_json(Path(args.json), record_dict)
        print(f"\nwrote {args.json}")


def add_predict_parser(commands) -> None:
    parser = commands.add_parser("predict", help="class probabilities for image files")
    parser.add_argument("images", nargs="+", help="image files")
    add_model_arguments(parser)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    add_tta_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_predict)


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


# --- convert and weights ---------------------------------------------------------------------


def add_convert_parser(commands) -> None:
    parser = commands.add_parser(
        "convert", help="convert torchvision, timm or Keras weights into a .safetensors file"
    )
    parser.add_argument("source_file", metavar="SRC", help=".pth/.safetensors or Keras .h5")
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES)
    parser.add_argument("--model", required=True, help="the variant, e.g. mobilenet_v2_1.0_224")
    parser.add_argument("--out", required=True, help="FILE.safetensors to write")
    parser.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> None:
    from mobilenets.engine.checkpoint import convert_to_checkpoint

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise MobileNetsError(f"--out must be a .safetensors file, got {args.out!r}")
    config, report = convert_to_checkpoint(args.source_file, args.source, args.model, out)
    print(f"{report.summary()}\nwrote {out} (padding {config.padding}, bn_eps {config.bn_eps:g})")


def add_weights_parser(commands) -> None:
    parser = commands.add_parser("weights", help="the published ImageNet weights we can load")
    parser.add_argument("--source", choices=SOURCES, help="only this ecosystem")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run_weights)


def run_weights(args: argparse.Namespace) -> None:
    records = list_weights(args.source)
    if args.json:
        print(json.dumps([record.to_dict() for record in records], indent=1))
        return
    rows = [
        [r.model_name, r.source, r.tag, _published(r.top1, ".1f"), _published(r.top5, ".1f"),
         f"{r.preprocessing.resize}/{r.preprocessing.resolution} {r.preprocessing.interpolation}",
         "[-1, 1]" if r.preprocessing.mean == (0.5, 0.5, 0.5) else "ImageNet mean/std",
         r.padding, f"{r.bn_eps:g}"]
        for r in records
    ]  # fmt: skip
    headers = ["model", "source", "tag", "top-1", "top-5", "resize/crop", "inputs", "padding",
               "bn_eps"]  # fmt: skip
    print(format_table(headers, rows))
    print(
        "\nuse: create_model(NAME, weights=SOURCE), or mobilenets predict IMAGE --model NAME "
        "--weights SOURCE.\ntorchvision and timm weights load at any resolution; Keras has one "
        "file per resolution."
    )


# --- export ------------------------------------------------------------------------------------


def add_export_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="export a checkpoint or a registered model to ONNX or ExecuTorch, BN folded, checked",
    )
    parser.add_argument(
        "model", metavar="CKPT_OR_NAME",
        help="a .safetensors checkpoint or run folder, or a registered name (mobilenet_v2_1.0_224)",
    )  # fmt: skip
    parser.add_argument(
        "--format", required=True, choices=("onnx", "pte"),
        help="onnx, or pte: ExecuTorch with the XNNPACK delegate (needs mobilenets[mobile])",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="FILE", help="the .onnx or .pte to write")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 18 to 23 (default 18)")
    parser.add_argument(
        "--resolution", type=int, metavar="N", help="input side (default: the model's own)"
    )
    parser.add_argument(
        "--dynamic-batch", action="store_true", help="a dynamic batch axis (default: batch 1)"
    )
    parser.add_argument(
        "--weights", metavar="SRC",
        help="published ImageNet weights for a registered name: keras, torchvision, "
        "timm (or SOURCE:TAG); without it the weights are random",
    )  # fmt: skip
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from mobilenets.deploy import onnx_export as export

    if args.format == "pte":
        run_export_pte(args)
        return
    opset = export.DEFAULT_OPSET if args.opset is None else args.opset
    export.check_options(args.out, opset)  # before loading or downloading anything
    source = export.export_source(args.model, weights=args.weights, resolution=args.resolution)
    report = export.export_onnx(
        source.model, args.out, resolution=source.resolution, opset=opset,
        dynamic_batch=args.dynamic_batch, metadata=source.metadata,
    )  # fmt: skip
    print(
        f"wrote {report.path} ({report.model_name} with {source.weights}; opset {report.opset}, "
        f"input {export.format_shape(report.input_shape)}, {report.file_bytes / 1e6:.1f} MB, "
        f"{report.bn_folded} BN folded)"
    )
    for shape, difference in report.max_abs_diff.items():
        print(
            f"onnxruntime {report.onnxruntime_version} vs PyTorch: max abs diff "
            f"{difference:.2g} at {export.format_shape(shape)}"
        )


def run_export_pte(args: argparse.Namespace) -> None:
    from mobilenets.deploy import executorch_export as mobile
    from mobilenets.deploy import onnx_export as export

    if args.opset is not None or args.dynamic_batch:
        option = "--opset" if args.opset is not None else "--dynamic-batch"
        raise MobileNetsError(f"{option} applies to --format onnx only, not to --format pte")
    mobile.check_pte_options(args.out)  # before loading or downloading anything
    mobile.require_executorch("--format pte")
    source = export.export_source(args.model, weights=args.weights, resolution=args.resolution)
    report = mobile.export_executorch(
        source.model, args.out, resolution=source.resolution, metadata=source.metadata
    )
    outside = ", ".join(report.outside_delegate) or "none"
    print(
        f"wrote {report.path} ({report.model_name} with {source.weights}; ExecuTorch "
        f"{report.executorch_version}, input {export.format_shape(report.input_shape)}, "
        f"{report.file_bytes / 1e6:.1f} MB, {report.bn_folded} BN folded, "
        f"{report.partitions} XNNPACK partition{'' if report.partitions == 1 else 's'}, "
        f"ops outside it: {outside})"
    )
    print(
        f"ExecuTorch {report.executorch_version} vs PyTorch: max abs diff "
        f"{report.max_abs_diff:.2g} at {export.format_shape(report.input_shape)}"
    )


# --- quantize ----------------------------------------------------------------------------------


# quantize.py's defaults and choices, repeated so that the other commands need not import
# onnxruntime (test_quantize checks that they agree)
QUANTIZE_CALIBRATE = ("minmax", "entropy", "percentile")
QUANTIZE_ACTIVATIONS = ("u8", "s8")
QUANTIZE_METHODS = ("ptq", "qat")


def add_quantize_parser(commands) -> None:
    parser = commands.add_parser(
        "quantize",
        help="int8 ONNX (onnxruntime QDQ) by post-training quantization or quantization-aware "
        "fine-tuning",
    )
    parser.add_argument(
        "checkpoint", metavar="CKPT", help="a .safetensors checkpoint or run folder"
    )
    parser.add_argument("--data", required=True, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument(
        "--method", required=True, choices=QUANTIZE_METHODS,
        help="ptq: post-training static quantization; qat: fine-tune through simulated int8 "
        "first, then quantize the same way",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="FILE.onnx", help="the int8 file to write")
    parser.add_argument(
        "--calibration-images", type=int, default=512,
        metavar="N", help="training images that set the activation ranges (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--calibrate", choices=QUANTIZE_CALIBRATE, default="minmax",
        help="how ranges are set from them (default minmax)",
    )  # fmt: skip
    parser.add_argument(
        "--activations", choices=QUANTIZE_ACTIVATIONS, default="u8",
        help="activation type; weights are s8 per channel (default u8: fast on x86)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=64, metavar="B",
        help="calibration, evaluation and QAT batch size (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--qat-epochs", type=float, default=1.0, metavar="E",
        help="QAT: passes over the training split, fractions allowed (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--qat-lr", type=float, default=1e-3, metavar="LR",
        help="QAT: SGD learning rate, cosine to zero (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="QAT: data order (default 0)")
    parser.set_defaults(run=run_quantize)


def run_quantize(args: argparse.Namespace) -> None:
    from mobilenets.deploy import quantize
    from mobilenets.deploy.qat import QatConfig

    quantize.check_options(args.out, args.calibrate, args.activations)
    qat = None
    if args.method == "qat":
        qat = QatConfig(
            epochs=args.qat_epochs, lr=args.qat_lr, batch_size=args.batch_size, seed=args.seed
        )
    checkpoint = load_checkpoint(args.checkpoint)
    result = quantize.quantize_checkpoint(
        checkpoint, args.data, args.out, calibration_images=args.calibration_images,
        method=args.calibrate, activation_type=args.activations, batch_size=args.batch_size,
        qat=qat, progress=True,
    )  # fmt: skip
    report = result.report
    drop = 100 * (result.int8_top1 - result.fp32_top1)
    print(
        f"fp32 top-1 {100 * result.fp32_top1:.2f}%, int8 top-1 {100 * result.int8_top1:.2f}% "
        f"({drop:+.2f} points) on {result.count:,} validation images; int8 file "
        f"{report.int8_bytes / 1e6:.1f} MB (fp32 {report.fp32_bytes / 1e6:.1f} MB)"
    )
    print(f"wrote {report.path}")


# --- bench -------------------------------------------------------------------------------------


def add_bench_parser(commands) -> None:
    parser = commands.add_parser(
        "bench", help="CPU latency: PyTorch eager fp32 against onnxruntime fp32 / int8, ExecuTorch"
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="MODEL_OR_FILE",
        help="a registered name (random weights), a checkpoint or run folder, an .onnx file or "
        "a .pte file (ExecuTorch, at the batch it was exported with)",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 32], metavar="B",
        help="batch sizes (default 1 32)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, metavar="N", help="threads of both runtimes (default: torch's)"
    )
    parser.add_argument("--warmup", type=int, default=5, metavar="W", help="untimed runs (5)")
    parser.add_argument("--iterations", type=int, default=30, metavar="K", help="timed runs (30)")
    parser.add_argument(
        "--resolution", type=int, metavar="R", help="input side (default: the model's own)"
    )
    parser.add_argument(
        "--int8", action="store_true",
        help="also an int8 file of each model, calibrated on random inputs (speed only)",
    )  # fmt: skip
    parser.add_argument(
        "--pte", action="store_true",
        help="also ExecuTorch (XNNPACK delegate) fp32: one .pte per batch size (needs "
        "mobilenets[mobile]; each export takes a while)",
    )  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="write the records as a JSON list")
    parser.add_argument("--markdown", metavar="FILE", help="write the table in markdown")
    parser.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    from mobilenets.deploy import bench

    records = bench.run_benchmarks(
        args.inputs, batches=args.batch, threads=args.threads, warmup=args.warmup,
        iterations=args.iterations, resolution=args.resolution, int8=args.int8, pte=args.pte,
        progress=(lambda line: print(line, file=sys.stderr)) if sys.stderr.isatty() else None,
    )  # fmt: skip
    head = (
        f"{bench.environment(args.threads)}; median and p90 of {args.iterations} runs after "
        f"{args.warmup} warm-up"
    )
    print(head)
    print(format_table(bench.HEADERS, bench.table_rows(records)))
    print("\n" + "\n".join(bench.notes(records)))
    markdown = "\n\n".join([head, bench.markdown_table(records), *bench.notes(records)])
    for path, write in (
        (args.json, lambda: write_json(Path(args.json), [r.to_dict() for r in records])),
        (args.markdown, lambda: Path(args.markdown).write_text(markdown + "\n")),
    ):
        if path:
            try:
                write()
            except OSError as error:
                raise MobileNetsError(f"cannot write {path!r}: {error}") from error
            print(f"wrote {path}")


# --- detect ------------------------------------------------------------------------------------

# Flags of `detect train` that map one to one onto DetectionTrainConfig fields.
DETECT_TRAIN_FLAGS = (
    ("--alpha", float, "backbone width multiplier"),
    ("--resolution", int, "square input side in pixels (default: the detector's, 320)"),
    *OPTIMIZER_FLAGS,
    ("--weight-decay", float, "L2 on conv weights"),
    ("--schedule", str, f"one of {', '.join(SCHEDULES)}"),
    ("--warmup-epochs", float, "linear warmup length"),
    ("--ema-decay", float, "weight EMA decay (0: off)"),
    ("--loss", str, "softmax (SSD, 3:1 hard negative mining) or focal"),
    ("--match-iou", float, "IoU at which a default box matches an object (SSD: 0.5)"),
    ("--augment", str, "ssd (SSD paper section 2.2) or flip (flips only)"),
    ("--backbone-weights", str, "torchvision, timm, keras or a classification .safetensors"),
    *RUN_FLAGS,
)


def add_detect_parser(commands) -> None:
    from mobilenets.data.detection import DATA_HELP

    detect = commands.add_parser(
        "detect", help="SSDLite object detection: train, eval (COCO mAP), predict, export"
    )
    actions = detect.add_subparsers(dest="action", required=True, parser_class=_Parser)

    train = actions.add_parser("train", help="train an SSDLite detector")
    train.add_argument("--data", help=DATA_HELP)
    train.add_argument("--model", help="a detector (default ssdlite_mobilenet_v2)")
    train.add_argument("--out", required=True, help="run folder for checkpoints and metrics")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    for flag, kind, text in DETECT_TRAIN_FLAGS:
        train.add_argument(flag, type=kind, help=text)
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       help="channels_last memory format (default on)")  # fmt: skip
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(run=run_detect_train)

    evaluate = actions.add_parser("eval", help="COCO AP, AP50, AP75, APs, APm, APl on val")
    evaluate.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file or run folder")
    evaluate.add_argument("--data", required=True, help=DATA_HELP)
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--workers", type=int, default=0)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", metavar="FILE", help="also write the results here")
    evaluate.set_defaults(run=run_detect_eval)

    predict = actions.add_parser("predict", help="draw the detections of an image and save it")
    predict.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file or run folder")
    predict.add_argument("image", help="an image file")
    predict.add_argument(
        "--out",
        metavar="FILE",
        help="the annotated image (default: IMAGE_STEM_detections.png here)",
    )
    predict.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="lowest score drawn and printed (default %(default)s)",
    )
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--json", action="store_true", help="print the detections as JSON")
    predict.set_defaults(run=run_detect_predict)

    export = actions.add_parser(
        "export", help="ONNX with BN folded and the box decoding inside (NMS outside)"
    )
    export.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file or run folder")
    export.add_argument("--out", required=True, metavar="FILE.onnx", help="the file to write")
    export.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 18 to 23 (default 18)")
    export.add_argument("--dynamic-batch", action="store_true",
                        help="a dynamic batch axis (default: batch 1)")  # fmt: skip
    export.set_defaults(run=run_detect_export)


def run_detect_train(args: argparse.Namespace) -> None:
    from mobilenets.data.detection import DATA_HELP
    from mobilenets.tasks.detection.train import DetectionTrainConfig, fit_detector

    fields = {flag.lstrip("-").replace("-", "_") for flag, _, _ in DETECT_TRAIN_FLAGS}
    fields |= {"data", "model", "channels_last"}
    overrides = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    placement = None
    if args.resume:
        placement = resume_placement(overrides)
        config = None
    else:
        if "data" not in overrides:
            raise MobileNetsError(f"--data is required (one of: {DATA_HELP})")
        config = DetectionTrainConfig(**overrides)
    result = fit_detector(config, args.out, resume=args.resume, placement=placement,
                                    progress=not args.no_progress)  # fmt: skip
    if not result.main_process:
        return
    final, out = result.final, result.out
    print(
        f"\nval AP {final['AP']:.3f}, AP50 {final['AP50']:.3f}, AP75 {final['AP75']:.3f} after "
        f"{result.epochs} epochs (best AP {result.best:.3f})"
        f"\ncheckpoint: {out / 'best.safetensors'} (last: {out / 'last.safetensors'})"
        f"\nmetrics: {out / 'metrics.jsonl'}, {out / 'eval.json'}"
    )


def run_detect_eval(args: argparse.Namespace) -> None:
    from mobilenets.tasks.detection import inference as detection
    from mobilenets.tasks.detection.evaluate import METRIC_NAMES

    checkpoint = detection.load_detection_checkpoint(args.checkpoint)
    metrics = detection.evaluate_checkpoint(
        checkpoint, args.data, batch_size=args.batch_size, workers=args.workers,
        device=args.device,
    )  # fmt: skip
    report = cost(checkpoint.model)
    names = METRIC_NAMES
    headers = ["model", "params", "MACs", *names]
    row = [checkpoint.model.name, f"{report.params:,}", f"{report.macs / 1e6:.1f}M",
           *(f"{metrics[name]:.3f}" for name in names)]  # fmt: skip
    print(format_table(headers, [row]))
    print(
        "\nCOCO box metrics (pycocotools): AP at IoU 0.50:0.95, 0.50 and 0.75; AP of small,"
        "\nmedium and large objects (-1: none of that size); AR100: recall at 100 detections"
    )
    if args.json:
        record = {"checkpoint": str(checkpoint.path), "data": args.data,
                  "model": checkpoint.model.name, "params": report.params, "macs": report.macs,
                  **metrics}  # fmt: skip
        write_json(Path(args.json), record)
        print(f"\nwrote {args.json}")


def run_detect_predict(args: argparse.Namespace) -> None:
    from PIL import Image

    from mobilenets.tasks.detection import inference as detection

    out = Path(args.out or f"{Path(args.image).stem}_detections.png")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise MobileNetsError(f"--out must end in .png, .jpg or .jpeg, got {str(out)!r}")
    checkpoint = detection.load_detection_checkpoint(args.checkpoint)
    image, found = detection.detect_image(checkpoint, args.image,
                                          score_threshold=args.score_threshold,
                                          device=args.device)  # fmt: skip
    drawn = detection.draw_detections(image, found, checkpoint.classes)
    try:
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out)
    except OSError as error:
        raise MobileNetsError(f"cannot write {str(out)!r}: {error}") from error
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


def run_detect_export(args: argparse.Namespace) -> None:
    from mobilenets.deploy import onnx_export as export
    from mobilenets.tasks.detection import export as detection_export
    from mobilenets.tasks.detection.inference import load_detection_checkpoint

    opset = export.DEFAULT_OPSET if args.opset is None else args.opset
    export.check_options(args.out, opset)
    checkpoint = load_detection_checkpoint(args.checkpoint)
    report = detection_export.export_detector(checkpoint, args.out, opset=opset,
                                              dynamic_batch=args.dynamic_batch)  # fmt: skip
    print(
        f"wrote {report.path} ({report.model_name}; opset {report.opset}, input "
        f"{export.format_shape(report.input_shape)}, outputs boxes [N, {report.num_boxes}, 4] "
        f"and scores [N, {report.num_boxes}, {report.num_classes}], {report.file_bytes / 1e6:.1f}"
        f" MB, {report.bn_folded} BN folded)\nonnxruntime {report.onnxruntime_version} vs "
        f"PyTorch: max abs diff {report.max_abs_diff:.2g}\nNMS is left to the caller: keep "
        "scores above a threshold per class, then torchvision.ops.batched_nms or the runtime's"
    )


# --- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mobilenets", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mobilenets {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    zoo = commands.add_parser(
        "zoo", help="the named variants with their cost and published figures"
    )
    zoo.add_argument("--family", choices=sorted(FAMILIES), help="only v1 or only v2")
    zoo.add_argument("--json", action="store_true", help="print JSON instead of a table")
    zoo.add_argument("--plot", metavar="FILE.png", help="draw published top-1 against MACs")
    zoo.set_defaults(run=run_zoo)

    costs = commands.add_parser("cost", help="per-layer params, MACs and activation memory")
    costs.add_argument(
        "name",
        help="a variant (mobilenet_v2_1.0_224), family (mobilenet_v1) or detector "
        "(ssdlite_mobilenet_v2)",
    )
    costs.add_argument("--alpha", type=float, help="width multiplier (overrides the name's)")
    size = costs.add_mutually_exclusive_group()
    size.add_argument("--resolution", type=int, help="input side in pixels (>= 32)")
    size.add_argument("--rho", type=float, help="resolution multiplier in (0, 1]: 224*rho")
    costs.add_argument(
        "--num-classes", type=int, help="classifier outputs (0: none); detectors: with background"
    )
    costs.add_argument("--expansion", type=int, help="V2 expansion factor t (default 6)")
    costs.add_argument("--in-chans", type=int, help="input channels (default 3; 1 for gray)")
    costs.add_argument("--by-kind", action="store_true", help="V1 Table 2 breakdown")
    costs.add_argument(
        "--standard", action="store_true", help="V1 Table 4 full-conv counterfactual"
    )
    costs.add_argument(
        "--small-input",
        action="store_true",
        default=None,
        help="the variant for 28-32 px images: output stride 8 instead of 32",
    )
    costs.add_argument("--json", action="store_true", help="print one JSON object")
    costs.set_defaults(run=run_cost)

    add_train_parser(commands)
    add_eval_parser(commands)
    add_predict_parser(commands)
    add_convert_parser(commands)
    add_weights_parser(commands)
    add_export_parser(commands)
    add_quantize_parser(commands)
    add_bench_parser(commands)
    add_detect_parser(commands)
    return parser


class _StreamHandler(logging.Handler):
    """Writes each record's message, as the library logs it, to the stream ``sys.stdout`` or
    ``sys.stderr`` is at the time (so that a caller's redirection is followed); warnings go to
    stderr."""

    def __init__(self, stream_name: str) -> None:
        super().__init__()
        self.stream_name = stream_name

    def emit(self, record: logging.LogRecord) -> None:
        name = "stderr" if record.levelno >= logging.WARNING else self.stream_name
        stream = getattr(sys, name)
        stream.write(record.getMessage() + "\n")
        stream.flush()


@contextlib.contextmanager
def log_handlers():
    """The library's messages as the command's output while it runs: ``mobilenets`` on stdout,
    the progress lines of ``mobilenets.progress`` on stderr. The loggers are as they were
    afterwards (a program that calls main keeps its own logging set-up)."""
    saved = []
    for name, stream in (("mobilenets", "stdout"), ("mobilenets.progress", "stderr")):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        handler = _StreamHandler(stream)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.handlers = [h for h in logger.handlers if not isinstance(h, _StreamHandler)]
            logger.setLevel(level)
            logger.propagate = propagate


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with log_handlers():
            args.run(args)
    except MobileNetsError as error:
        message = as_flags(one_line(error), args.parser)
        print(f"mobilenets {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilenets {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in the command's words: a parameter it names (``data='x'``,
    ``resume=True``) becomes the flag that sets it (``--data 'x'``, ``--resume``)."""
    for action in parser._actions:
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if not flags or action.dest in ("help", "version"):
            continue
        flag = flags[0]
        if action.nargs == 0:  # a switch: name=True is the flag itself
            message = re.sub(rf"\b{action.dest}=True\b", flag, message)
        message = re.sub(rf"(?<![\w-]){action.dest}=", f"{flag} ", message)
    return message


def one_line(error: Exception) -> str:
    """The message of an error, on one line. An error raised in a DataLoader worker arrives
    wrapped with the worker's traceback; its last line holds the original message."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(error):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith("mobilenets.") else last
    return " ".join(line.strip() for line in lines)
