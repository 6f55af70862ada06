"""``cost``: a model's exact params, MACs and activation memory layer by layer, beside the papers'
tables (V1 Tables 2 and 4, V2 Tables 3, 6 and 7, V3 Table 3)."""

from __future__ import annotations

import argparse
import json

from mobilenets.cli.arguments import V3_FLAGS, add_json_switch, add_v3_arguments, v3_fields
from mobilenets.cli.common import add_command, format_table
from mobilenets.cli.cost_tables import run_table7, run_table_v3, run_table_v4
from mobilenets.core.cost import CostReport
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.segmentation_cost import (
    MULTISCALE,
    inference_macs,
    v3_table7,
)
from mobilenets.core.segmentation_spec import TABLE7, SegmentationConfig
from mobilenets.core.spec import ModelConfig, format_alpha
from mobilenets.zoo.factory import cost
from mobilenets.zoo.registry import (
    SOURCE_DEEPLAB_PAPER,
    SOURCE_V3_LRASPP_PAPER,
    get_entry,
    is_detector,
    is_segmenter,
    list_models,
    resolve_config,
    resolve_segmentation_config,
)


def add_cost(commands) -> None:
    parser = add_command(
        commands,
        "cost",
        run_cost,
        help="per-layer params, MACs and activation memory of a model",
        description="The analytic cost of a model, layer by layer, from its resolved spec (no "
        "model is built): params, multiply-adds, activation memory, and the papers' breakdowns; "
        "with --table7, the V2 paper's segmentation Table 7 beside our counts; with --table v3, "
        "the V3 paper's Table 3 and TF-slim's V3 rows beside ours; with --table v4, the V4 paper's "
        "Table 6 beside ours.",
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        nargs="?",
        help="a variant (mobilenet_v2_1.0_224), a family (mobilenet_v1, mobilenet_v2, "
        "mobilenet_v3_large, mobilenet_v3_small: alpha 1.0 at 224 unless given), a detector "
        "(ssdlite_mobilenet_v2) or a segmenter (deeplabv3_mobilenet_v2, 513x513 unless given)",
    )
    parser.add_argument(
        "--table7",
        action="store_true",
        help="instead of NAME: the six MobileNet rows of V2 Table 7 (Mobile DeepLabv3), the "
        "paper's params and MAdds beside ours",
    )
    parser.add_argument(
        "--table",
        choices=("v3", "v4"),
        help="instead of NAME: v3, the V3 paper's Table 3 and the TF-slim README's V3 rows "
        "(minimalistic too); v4, the V4 paper's Table 6 (the five models at their native "
        "resolution): the published MACs and params beside ours",
    )
    parser.add_argument(
        "--alpha", type=float, metavar="A", help="width multiplier (default: the name's)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--resolution",
        type=int,
        metavar="N",
        help="input side in pixels, >= 32 (default: the name's)",
    )
    size.add_argument(
        "--rho",
        type=float,
        metavar="R",
        help="resolution multiplier in (0, 1]: an input side of 224*rho",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="classifier outputs, 0 for none (default 1000); a detector's count includes the "
        "background (default 91, COCO)",
    )
    parser.add_argument(
        "--expansion", type=int, metavar="T", help="V2 expansion factor t (default 6)"
    )
    parser.add_argument(
        "--in-chans", type=int, metavar="C", help="input channels (default 3; 1 for grayscale)"
    )
    add_v3_arguments(parser)
    parser.add_argument(
        "--by-kind", action="store_true", help="add V1 Table 2: MACs and weights by layer kind"
    )
    parser.add_argument(
        "--standard",
        action="store_true",
        help="add V1 Table 4: the same network with full convolutions",
    )
    parser.add_argument(
        "--small-input",
        action="store_true",
        default=None,
        help="the variant for 28-32 px images: output stride 8 instead of 32",
    )
    parser.add_argument(
        "--output-stride",
        type=int,
        metavar="OS",
        help="input side over the last feature map's, by atrous convolution: 8, 16 or 32 for a "
        "classifier (default 32), 8 or 16 for a segmenter (default 16)",
    )
    parser.add_argument(
        "--aspp",
        action=argparse.BooleanOptionalAction,
        help="a segmenter with (--aspp) or without (--no-aspp) the three atrous branches "
        "(default: the name's; deeplabv3_mobilenet_v2 has none, deeplabv3_mobilenet_v1 has them)",
    )
    add_json_switch(parser, "one JSON object instead of the tables")


def run_cost(args: argparse.Namespace) -> None:
    if args.table7:
        run_table7(args)
        return
    if args.table == "v3":
        run_table_v3(args)
        return
    if args.table == "v4":
        run_table_v4(args)
        return
    if args.name is None:
        raise MobileNetsError(
            "give a model NAME, or --table7 for V2 Table 7, --table v3 for V3 Table 3 or "
            "--table v4 for V4 Table 6 beside our counts"
        )
    segmenter = is_segmenter(args.name)
    if args.aspp is not None and not segmenter:
        deeplab = list_models("deeplabv3_*", task="segmentation")  # LR-ASPP has no ASPP
        raise MobileNetsError(
            f"--aspp applies to a segmenter ({', '.join(deeplab)}), not to {args.name!r}"
        )
    v3 = v3_fields(args)
    if v3 and (segmenter or is_detector(args.name)):
        given = ", ".join(flag for flag, field in V3_FLAGS.items() if field in v3)
        raise MobileNetsError(f"{given} applies to a classifier name, not to {args.name!r}")
    overrides = dict(
        resolution=args.resolution,
        rho=args.rho,
        alpha=args.alpha,
        num_classes=args.num_classes,
        expansion=args.expansion,
        small_input=args.small_input,
        in_chans=args.in_chans,
        output_stride=args.output_stride,
    )
    config = None
    if segmenter:
        # resolved here rather than inside cost(): its Table 7 row is printed beside the report
        config = resolve_segmentation_config(args.name, aspp=args.aspp, **overrides)
    elif v3:
        config = resolve_config(args.name, **overrides).replace(**v3)
    report = cost(args.name, **overrides) if config is None else cost(config)
    if args.json:
        print(json.dumps(report.to_dict(by_kind=args.by_kind), indent=2))
        return
    print_cost(report, by_kind=args.by_kind, standard=args.standard)
    if is_detector(args.name):
        print_detector_paper(args.name, report)
    if segmenter:
        print_segmenter_paper(config, report)


def shape_text(shape: tuple[int, int, int]) -> str:
    channels, height, width = shape
    return f"{channels}" if height == width == 1 else f"{channels}x{height}x{width}"


def print_cost(report: CostReport, *, by_kind: bool, standard: bool) -> None:
    small = report.name.endswith("_small")
    print(
        f"{report.name}: alpha {format_alpha(report.alpha)}, {report.resolution}x"
        f"{report.resolution} input, {report.num_classes} classes"
        + (
            "\nsmall-input variant: stride-1 stem and first stride-2 stage (output stride 8)"
            if small
            else ""
        )
        + "\n"
    )
    rows = [
        [
            layer.name,
            layer.kind,
            shape_text(layer.in_shape),
            shape_text(layer.out_shape),
            f"{layer.params:,}",
            f"{layer.macs:,}",
            f"{layer.activation_bytes / 1000:.1f}",
        ]
        for layer in report.layers
    ]
    print(format_table(["layer", "kind", "input", "output", "params", "MACs", "act KB"], rows))
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
            [
                row.label,
                f"{row.macs:,}",
                f"{row.macs_percent:.2f}%",
                f"{row.weights:,}",
                f"{row.weights_percent:.2f}%",
            ]
            for row in report.by_kind()
        ]
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


def print_detector_paper(name: str, report: CostReport) -> None:
    """A detector's totals beside the paper's (V2 Table 6 counts at 320x320)."""
    (paper,) = get_entry(name).paper
    print(
        f"\npaper ({paper.source}): {paper.params_m}M params, {paper.macs_m / 1000:.1f}B MAdds"
        f"\nours / paper: params {report.params / (paper.params_m * 1e6):.3f}, "
        f"MACs {report.macs / (paper.macs_m * 1e6):.3f}"
    )


def print_segmenter_paper(config: SegmentationConfig, report: CostReport) -> None:
    """A segmenter's totals beside the V2 Table 7 row of the same backbone, output stride and
    ASPP. The paper's output stride 8 rows are multi-scale ("MF": six scales, each with its
    mirror), so their MAdds are set beside ours summed over the same twelve inferences."""
    arch, stride, aspp = config.backbone.arch, config.output_stride, config.aspp
    if config.head == "lraspp":
        print_lraspp_paper(config)
        return
    key = (arch, stride, aspp)
    rows = [row for row in TABLE7 if (row.arch, row.output_stride, row.aspp) == key]
    if not rows:
        print(
            f"\nV2 Table 7 has no row for {arch} at output stride {stride} "
            f"{'with' if aspp else 'without'} ASPP"
        )
        return
    (row,) = rows
    print(
        f"\npaper ({SOURCE_DEEPLAB_PAPER}, OS {stride}{', MF' if row.multiscale else ''}): "
        f"{row.params_m:g}M params, {row.madds_b:g}B MAdds, {row.miou:g}% mIoU"
    )
    macs = report.macs
    if row.multiscale:
        macs = inference_macs(config, multiscale=True)
        print(
            f"MF: the MAdds of {2 * len(MULTISCALE)} inferences (scales "
            f"{', '.join(f'{s:g}' for s in MULTISCALE)}, each with its mirror); ours summed "
            f"over the same: {macs / 1e9:.2f}B"
        )
    tf_macs = inference_macs(config, multiscale=row.multiscale, space_to_batch=True)
    print(
        f"ours / paper: params {report.params / (row.params_m * 1e6):.3f}, MACs "
        f"{macs / (row.madds_b * 1e9):.3f}, MACs with dilated convs counted as TF's "
        f"space_to_batch runs them {tf_macs / (row.madds_b * 1e9):.3f} ({tf_macs / 1e9:.2f}B)"
    )
    paper_config = SegmentationConfig(ModelConfig(arch=arch), output_stride=stride, aspp=aspp)
    if config != paper_config:
        print(
            f"(the paper's row is {paper_config.name} with {paper_config.num_classes} classes, "
            f"this is {config.name} with {config.num_classes}: different networks)"
        )


def print_lraspp_paper(config: SegmentationConfig) -> None:
    """An LR-ASPP beside V3 Table 7's row of its backbone, which counts 19 classes at 1024x2048
    with the reduced tail: ours for that network, which may not be this one."""
    rows = [row for row in v3_table7() if row.paper.arch == config.backbone.arch]
    if not rows:
        print(f"\nV3 Table 7 has no LR-ASPP row for {config.backbone.arch}")
        return
    (row,) = rows
    print(
        f"\npaper ({SOURCE_V3_LRASPP_PAPER}): {row.paper.params_m:g}M params, "
        f"{row.paper.madds_b:g}B MAdds"
        f"\nours for {row.config.name} with {row.config.num_classes} classes at 1024x2048: "
        f"{row.params:,} params ({row.params_without_bn:,} without BN), "
        f"{row.macs / 1e9:.2f}B MACs"
    )
