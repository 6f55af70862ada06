"""MobileNetV4's rows, decoded: the fused IB, the Universal Inverted Bottleneck and Mobile MQA.

[`decode_table`][mobilenets.core.decode.decode_table] hands each V4 row to the function here with
its walk (channels, spatial size, output stride, atrous rate), as it does V1-V3's rows to theirs.
The BN placement and nonlinearities follow the reference code (TF Model Garden's nn_blocks.py, as
timm's mobilenetv4 builds it): a UIB's start depthwise conv has BN and no nonlinearity, its
expansion and middle depthwise conv have both, its projection BN only; a Mobile MQA has BN on its
input, BN after each stride-2 reduction of keys and values, and no BN or bias on its projections.
"""

from __future__ import annotations

import dataclasses

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import MQA, UIB, FusedIB, make_divisible
from mobilenets.core.records import LayerSpec


def fused_ib(build, name: str, row: FusedIB) -> None:
    """A full k x k conv at the row's stride to e times the input (BN, nonlinearity), then a
    linear 1x1 projection; a residual where stride is 1 and the widths match."""
    in_channels = build.channels
    hidden = make_divisible(in_channels * row.e)
    stride, dilation = build.unit_stride(row.s)
    expand = build.layer(
        f"{name}.conv_exp", "conv", hidden, row.k, stride, nl=row.nl, dilation=dilation
    )
    out_channels = build.width(row.c)
    project = build.layer(f"{name}.conv_pwl", "pointwise", out_channels, 1, 1, act=False)
    residual = stride == 1 and in_channels == out_channels
    build.block(
        name, "fused_ib", [expand, project], residual=residual, expansion=hidden / in_channels
    )


def universal_ib(build, name: str, row: UIB, first: bool) -> None:
    """Paper Figure 4: [start depthwise, BN], 1x1 expansion (BN, nonlinearity), [middle
    depthwise (BN, nonlinearity)], linear 1x1 projection (BN), [layer scale], residual where
    stride is 1 and the widths match. The stride is on the middle depthwise conv where there is
    one, else on the start one."""
    table_stride = row.s if first else 1
    if table_stride > 1 and not (row.start or row.mid):
        raise MobileNetsError(
            f"{name}: a UIB row with stride {row.s} needs a start or middle depthwise conv to "
            f"carry it, got start=0 and mid=0 (an FFN block keeps its input's size)"
        )
    in_channels = build.channels
    hidden = make_divisible(in_channels * row.e)
    stride, dilation = build.unit_stride(table_stride)
    layers = []
    if row.start:
        layers.append(
            build.layer(
                f"{name}.conv_dw_start",
                "depthwise",
                in_channels,
                row.start,
                1 if row.mid else stride,
                depthwise=True,
                act=False,
                dilation=dilation,
            )
        )
    layers.append(build.layer(f"{name}.conv_pw", "pointwise", hidden, 1, 1, nl=row.nl))
    if row.mid:
        layers.append(
            build.layer(
                f"{name}.conv_dw",
                "depthwise",
                hidden,
                row.mid,
                stride,
                depthwise=True,
                nl=row.nl,
                dilation=dilation,
            )
        )
    out_channels = build.width(row.c)
    layers.append(build.layer(f"{name}.conv_pwl", "pointwise", out_channels, 1, 1, act=False))
    layers += _layer_scale(build, name)
    residual = stride == 1 and in_channels == out_channels
    build.block(name, "universal_ib", layers, residual=residual, expansion=hidden / in_channels)


def mobile_mqa(build, name: str, row: MQA) -> None:
    """Section 4.1's Mobile MQA: BN on the input; queries, one key head and one value head by
    1x1 convs (keys and values first reduced by a stride-2 depthwise conv with BN where
    ``kv_stride`` is 2); softmax(q k^T / sqrt(d)) v in every head; a 1x1 output projection;
    layer scale; a residual."""
    config = build.config
    if row.kv_stride > 1 and build.rate > 1:
        raise MobileNetsError(
            f"{config.arch} at output_stride={config.output_stride}: its Mobile MQA block "
            f"{name} reduces keys and values with a stride-{row.kv_stride} conv, which atrous "
            f"convolution cannot dilate; allowed output strides for {config.arch}: 16, or None "
            f"(32)"
        )
    channels, size = build.channels, build.size
    norm = _channelwise(f"{name}.norm", "norm", channels, size)
    projection = dataclasses.replace(norm, kind="pointwise", groups=1, norm=False)
    inner = row.heads * row.key_dim
    layers = [norm, dataclasses.replace(projection, name=f"{name}.query", out_channels=inner)]
    kv_size = -(-size // row.kv_stride)
    for branch in ("key", "value"):
        if row.kv_stride > 1:
            down = dataclasses.replace(
                norm,
                name=f"{name}.{branch}_down",
                kind="depthwise",
                kernel=row.k,
                stride=row.kv_stride,
                out_size=kv_size,
            )
            layers.append(down)
        layers.append(
            dataclasses.replace(
                projection,
                name=f"{name}.{branch}",
                out_channels=row.key_dim,
                in_size=kv_size,
                out_size=kv_size,
            )
        )
    attention = dataclasses.replace(
        projection,
        name=f"{name}.attention",
        kind="attention",
        in_channels=inner,
        out_channels=inner,  # the value dim equals the key dim in every V4 model
        kv_size=kv_size,
        heads=row.heads,
    )
    out_channels = build.width(row.c)
    output = dataclasses.replace(
        projection, name=f"{name}.output", in_channels=inner, out_channels=out_channels
    )
    layers += [attention, output]
    build.channels = out_channels
    layers += _layer_scale(build, name)
    build.block(name, "mobile_mqa", layers, residual=channels == out_channels, expansion=1)


def _layer_scale(build, name: str) -> list[LayerSpec]:
    """The hybrids' per-channel scale of a block's output (before the residual add)."""
    if build.family.layer_scale is None:
        return []
    return [_channelwise(f"{name}.layer_scale", "scale", build.channels, build.size)]


def _channelwise(name: str, kind: str, channels: int, size: int) -> LayerSpec:
    """A layer that acts on each channel alone: a BN on its own ("norm") or a layer scale."""
    return LayerSpec(
        name=name,
        kind=kind,
        in_channels=channels,
        out_channels=channels,
        kernel=1,
        stride=1,
        groups=channels,
        in_size=size,
        out_size=size,
        bias=False,
        norm=kind == "norm",
        act=False,
    )
