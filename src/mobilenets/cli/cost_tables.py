"""``cost --table7``, ``cost --table v3`` and ``cost --table v4``: the papers' published tables (V2
Table 7, V3 Table 3 and TF-slim's V3 rows, V4 Table 6) beside our exact counts, as text or JSON."""

from __future__ import annotations

import argparse
import json

from mobilenets.cli.arguments import V3_FLAGS
from mobilenets.cli.common import format_table
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.published_v3 import V3Comparison, v3_table
from mobilenets.core.published_v4 import QUOTED, SOURCE_V4_PAPER, V4Comparison, v4_table
from mobilenets.core.segmentation_cost import MULTISCALE, Table7Comparison, table7

# --- table 7 ------------------------------------------------------------------------------------

TABLE7_HEADERS = [
    "backbone",
    "OS",
    "ASPP",
    "MF",
    "mIoU",
    "paper params M",
    "ours",
    "diff",
    "paper MAdds B",
    "ours",
    "diff",
    "ours TF s2b",
    "diff",
]


def check_table_only(args: argparse.Namespace, table: str, what: str) -> None:
    """A table of published configurations takes none of the flags that size a model."""
    given = [
        flag
        for flag, value in (
            ("NAME", args.name),
            ("--alpha", args.alpha),
            ("--resolution", args.resolution),
            ("--rho", args.rho),
            ("--num-classes", args.num_classes),
            ("--expansion", args.expansion),
            ("--in-chans", args.in_chans),
            ("--by-kind", args.by_kind or None),
            ("--standard", args.standard or None),
            ("--small-input", args.small_input),
            ("--output-stride", args.output_stride),
            ("--aspp", args.aspp),
            *((flag, getattr(args, field)) for flag, field in V3_FLAGS.items()),
            # the other table
            ("--table", args.table) if table == "--table7" else ("--table7", args.table7 or None),
        )
        if value is not None
    ]
    if given:
        raise MobileNetsError(
            f"{table} prints {what}; it takes no {', '.join(given)} (--json only)"
        )


def run_table7(args: argparse.Namespace) -> None:
    check_table_only(args, "--table7", "the paper's six configurations as published")
    print_published(
        args,
        table7(),
        record=table7_record,
        title="V2 Table 7 (Mobile DeepLabv3, PASCAL VOC 2012 val, 513x513 inputs, 21 classes): "
        "the paper's figures\nbeside our exact counts",
        headers=TABLE7_HEADERS,
        cells=table7_cells,
        notes=f"MF: multi-scale and mirrored inputs, {2 * len(MULTISCALE)} inferences at scales "
        f"{', '.join(f'{s:g}' for s in MULTISCALE)}, MAdds summed."
        "\nours: one multiply-add per weight per output position (a dilated conv costs what an "
        "undilated one does).\nTF s2b: dilated convs counted as TensorFlow's space_to_batch "
        "computes them, on a padded grid\n(see mobilenets.core.segmentation_cost). diff: ours "
        "over the paper's, minus 1.",
    )


def print_published(args, rows, *, record, title, headers, cells, notes) -> None:
    """A published table beside ours: ``record`` of each row as JSON with --json, else the
    title, one line per row of ``cells`` under ``headers``, and the notes."""
    if args.json:
        print(json.dumps([record(row) for row in rows], indent=2))
        return
    print(f"{title}\n")
    print(format_table(headers, [cells(row) for row in rows]))
    print(f"\n{notes}")


def table7_cells(row: Table7Comparison) -> list[str]:
    """One printed row of ``mobilenets cost --table7``: the paper's figures as published, ours in
    millions of params and billions of MAdds, and each relative difference in percent."""
    paper = row.paper
    return [
        paper.arch,
        str(paper.output_stride),
        "yes" if paper.aspp else "no",
        "yes" if paper.multiscale else "no",
        f"{paper.miou:.2f}",
        f"{paper.params_m:g}",
        f"{row.params / 1e6:.3f}",
        f"{100 * row.params_error:+.2f}%",
        f"{paper.madds_b:g}",
        f"{row.macs / 1e9:.2f}",
        f"{100 * row.macs_error:+.1f}%",
        f"{row.space_to_batch_macs / 1e9:.2f}",
        f"{100 * row.space_to_batch_error:+.1f}%",
    ]


def table7_record(row: Table7Comparison) -> dict:
    return {
        "paper": vars(row.paper),
        "config": row.config.name,
        "params": row.params,
        "macs": row.macs,
        "space_to_batch_macs": row.space_to_batch_macs,
        "params_error": row.params_error,
        "macs_error": row.macs_error,
        "space_to_batch_error": row.space_to_batch_error,
    }


# --- V3 Table 3 -----------------------------------------------------------------------------------

TABLE_V3_HEADERS = [
    "source",
    "model",
    "paper MAdds M",
    "ours",
    "diff",
    "+SE/h-swish",
    "paper params M",
    "ours",
    "what gives the published figure",
]


def run_table_v3(args: argparse.Namespace) -> None:
    check_table_only(args, "--table v3", "V3 Table 3 and TF-slim's V3 rows as published")
    print_published(
        args,
        v3_table(),
        record=table_v3_record,
        title="MobileNetV3 (224x224, 1000 classes): V3 Table 3 and the TF-slim README's rows as "
        "published, beside our exact counts",
        headers=TABLE_V3_HEADERS,
        cells=table_v3_cells,
        notes="ours: one multiply-add per weight per output position of every conv and linear "
        "layer, the SE convs included.\n+SE/h-swish: ours plus the SE scale (one multiply per "
        "gated element) and one multiply per h-swish output.\ndiff: ours over the published "
        "figure, minus 1. No one convention gives every row: see docs/cost.md.",
    )


def table_v3_cells(row: V3Comparison) -> list[str]:
    published = row.published
    return [
        published.source,
        published.config.name,
        f"{published.macs_m}",
        f"{row.macs / 1e6:.2f}",
        f"{100 * row.macs_error:+.1f}%",
        f"{(row.macs + row.elementwise) / 1e6:.2f}",
        f"{published.params_m:.1f}",
        f"{row.params / 1e6:.3f}",
        published.note,
    ]


def table_v3_record(row: V3Comparison) -> dict:
    return {
        "published": vars(row.published),
        "config": row.published.config.name,
        "params": row.params,
        "macs": row.macs,
        "elementwise_multiplies": row.elementwise,
        "params_error": row.params_error,
        "macs_error": row.macs_error,
    }


# --- V4 Table 6 -----------------------------------------------------------------------------------

TABLE_V4_HEADERS = [
    "model",
    "paper params M",
    "ours",
    "diff",
    "paper MACs G",
    "ours",
    "diff",
    "of which attention",
    "why they differ",
]


def run_table_v4(args: argparse.Namespace) -> None:
    check_table_only(args, "--table v4", "V4 Table 6 as published")
    print_published(
        args,
        v4_table(),
        record=table_v4_record,
        title=f"MobileNetV4 at each model's native resolution, 1000 classes: {SOURCE_V4_PAPER} as "
        "published, beside our exact counts",
        headers=TABLE_V4_HEADERS,
        cells=table_v4_cells,
        notes="ours: one multiply-add per weight per output position of every conv and linear "
        "layer, plus Mobile MQA's q.k and attn.v matmuls\n(the attention column); our params "
        "equal timm's mobilenetv4_* for every model.\ndiff: ours over the published figure, "
        f"minus 1. *: {QUOTED}.\nSee docs/models.md, MobileNetV4, for the paper's appendix "
        "against its code.",
    )


def table_v4_cells(row: V4Comparison) -> list[str]:
    published = row.published
    return [
        published.config.name,
        f"{published.params_m:.1f}",
        f"{row.params / 1e6:.3f}",
        f"{100 * row.params_error:+.1f}%",
        f"{published.macs_g:.1f}",
        f"{row.macs / 1e9:.3f}",
        f"{100 * row.macs_error:+.1f}%",
        f"{row.attention_macs / 1e9:.3f}",
        published.note,
    ]


def table_v4_record(row: V4Comparison) -> dict:
    return {
        "published": vars(row.published),
        "source": SOURCE_V4_PAPER,
        "config": row.published.config.name,
        "params": row.params,
        "macs": row.macs,
        "attention_macs": row.attention_macs,
        "params_error": row.params_error,
        "macs_error": row.macs_error,
    }
