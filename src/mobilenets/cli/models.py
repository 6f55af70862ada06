"""``zoo``, ``weights`` and ``convert``: the named models and the published weights they load
(what they cost, ``cost``, is in [`cost`][mobilenets.cli.cost])."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilenets.cli.arguments import add_json_switch
from mobilenets.cli.chart import add_chart_arguments, check_chart_arguments, run_chart
from mobilenets.cli.common import add_command, format_table, millions, published
from mobilenets.cli.cost import add_cost
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mobilenets.core.spec import format_alpha
from mobilenets.engine.checkpoint import convert_to_checkpoint
from mobilenets.zoo.convert import SOURCES
from mobilenets.zoo.keymaps import is_v4
from mobilenets.zoo.pretrained import PUBLISHERS, list_weights
from mobilenets.zoo.table import plot_zoo, registered_families, zoo_rows

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def add_commands(commands) -> None:
    add_zoo(commands)
    add_cost(commands)
    add_weights(commands)
    add_convert(commands)


# --- zoo ----------------------------------------------------------------------------------------


def add_zoo(commands) -> None:
    parser = add_command(
        commands,
        "zoo",
        run_zoo,
        help="the named variants with their exact cost and published figures",
        description="Every registered classifier (each family at each width and resolution "
        "published) with our exact params and MACs beside the published checkpoint's "
        "figures and ImageNet accuracy; with --chart, the family chart: their latency "
        "measured on this CPU against their published top-1.",
    )
    parser.add_argument(
        "--family",
        nargs="+",
        choices=registered_families(),
        metavar="FAMILY",
        help=f"only these families' variants: {', '.join(registered_families())} (default: all)",
    )
    add_json_switch(parser, "the rows (or the chart) as JSON instead of a table")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw published top-1 against MACs (V1 Figure 4) into FILE, which ends in "
        f"{', '.join(PLOT_SUFFIXES)}",
    )
    add_chart_arguments(parser)


def run_zoo(args: argparse.Namespace) -> None:
    check_chart_arguments(args)
    if args.chart is not None:
        if args.plot is not None:
            raise MobileNetsError("--plot and --chart draw different pictures: give one")
        run_chart(args)
        return
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


def print_zoo(rows: list[dict]) -> None:
    headers = [
        "name",
        "alpha",
        "res",
        "params M",
        "MACs M",
        "ref params M",
        "ref MACs M",
        "top-1",
        "top-5",
        "source",
    ]
    table = []
    for row in rows:
        # V4 has no figures of a released checkpoint: its native rows show the paper's Table 6
        ref = row["reference"] or next(iter(row["paper"]), None) or {}
        table.append(
            [
                row["name"],
                format_alpha(row["alpha"]),
                str(row["resolution"]),
                millions(row["params"]),
                millions(row["macs"], 1),
                published(ref.get("params_m"), ".2f"),
                published(ref.get("macs_m")),
                published(ref.get("top1"), ".1f"),
                published(ref.get("top5"), ".1f"),
                # every V4 size registered has timm weights (zoo/published_v4.py), no figures
                ref.get(
                    "source", "timm weights" if is_v4(row["arch"]) else "no published checkpoint"
                ),
            ]
        )
    print(format_table(headers, table))
    print(
        "\nparams and MACs are exact counts for 1000 classes (params: conv and linear weights,"
        "\nclassifier bias, BN scale and shift; MACs: convs and classifier). The ref columns"
        "\nare the published checkpoint's figures: TF-slim counts 1001 classes, and its V2"
        "\nparams leave out BN. top-1/top-5: ImageNet, single crop, as published."
    )


# --- weights and convert ------------------------------------------------------------------------


def add_weights(commands) -> None:
    parser = add_command(
        commands,
        "weights",
        run_weights,
        help="the published weights we can load",
        description="The published weights that load into our models: torchvision's, timm's "
        "and Keras's for ImageNet, and ours, with their preprocessing, padding, BN epsilon and "
        "published accuracy.",
    )
    parser.add_argument(
        "--source", choices=PUBLISHERS, help="only this publisher: %(choices)s (default: all)"
    )
    add_json_switch(parser, "the weights records as JSON instead of a table")


def run_weights(args: argparse.Namespace) -> None:
    records = list_weights(args.source)
    if args.json:
        print(json.dumps([record.to_dict() for record in records], indent=1))
        return
    rows = [
        [
            r.model_name,
            r.source,
            r.tag,
            published(r.top1, ".1f"),
            published(r.top5, ".1f"),
            f"{r.preprocessing.resize or '-'}/{r.preprocessing.resolution} "
            f"{r.preprocessing.interpolation}",
            inputs_text(r.preprocessing),
            r.padding,
            f"{r.bn_eps:g}",
        ]
        for r in records
    ]
    headers = [
        "model",
        "source",
        "tag",
        "top-1",
        "top-5",
        "resize/crop",
        "inputs",
        "padding",
        "bn_eps",
    ]
    print(format_table(headers, rows))
    print(
        "\nuse: create_model(NAME, weights=SOURCE), or mobilenets predict IMAGE --model NAME "
        "--weights SOURCE.\ntorchvision and timm weights load at any resolution; Keras has one "
        "file per resolution."
    )


def inputs_text(preprocessing: Preprocessing) -> str:
    """How pixels in [0, 1] are normalized: to [-1, 1], with ImageNet's mean and std, or other."""
    mean, std = preprocessing.mean, preprocessing.std
    if set(mean) == set(std) == {0.5}:
        return "[-1, 1]"
    if (mean, std) == (IMAGENET_MEAN, IMAGENET_STD):
        return "ImageNet mean/std"
    return f"mean {'/'.join(f'{m:g}' for m in mean)}, std {'/'.join(f'{s:g}' for s in std)}"


def add_convert(commands) -> None:
    parser = add_command(
        commands,
        "convert",
        run_convert,
        help="convert torchvision, timm or Keras weights into a .safetensors checkpoint",
        description="Convert a weights file of torchvision, timm or Keras into a checkpoint of "
        "ours: every tensor mapped by the spec and shape-checked, the source's padding and BN "
        "epsilon recorded.",
    )
    parser.add_argument(
        "source_file", metavar="SRC", help="the file to convert: .pth or .safetensors, or Keras .h5"
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=SOURCES,
        help="the ecosystem SRC comes from: %(choices)s",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help="the variant of the weights, e.g. mobilenet_v2_1.0_224, mobilenet_v3_large_1.0_224",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE.safetensors", help="the checkpoint to write"
    )
    parser.add_argument(
        "--tf-port",
        action="store_true",
        help="SRC is a timm port of TensorFlow weights (tf_mobilenetv3_*): read it with TF "
        "'SAME' padding and BN epsilon 1e-3",
    )


def run_convert(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise MobileNetsError(f"--out must be a .safetensors file, got {args.out!r}")
    config, report = convert_to_checkpoint(
        args.source_file, args.source, args.model, out, tf_port=args.tf_port
    )
    print(f"{report.summary()}\nwrote {out} (padding {config.padding}, bn_eps {config.bn_eps:g})")
