"""The one decoder of every family's table: rows in, one record per block and per layer out.

[`resolve`][mobilenets.core.spec.resolve] calls
[`decode_table`][mobilenets.core.decode.decode_table] with a config and its family. The decoder
walks the table once, tracking channels, spatial size and output stride, and applies alpha through
the family's width rule, the config's variants of the table (small input, V3's minimalistic and
reduced tail) and atrous convolution (output stride).
"""

from __future__ import annotations

import dataclasses
import math

from mobilenets.core.decode_v4 import fused_ib, mobile_mqa, universal_ib
from mobilenets.core.families import (
    DEPTHWISE_KERNEL,
    DW,
    IR,
    MQA,
    NONLINEARITIES,
    UIB,
    Bneck,
    Conv,
    ConvBN,
    ConvNBN,
    Family,
    FusedIB,
    squeeze_width,
    v3_expanded_width,
    v3_head_width,
    v3_pre_logits_width,
    v3_stem_width,
)
from mobilenets.core.records import BlockSpec, FeatureTap, LayerSpec


def conv_out_size(size: int, stride: int) -> int:
    """Output side of a conv with odd kernel and "same"-style padding: ceil(size / stride).

    Symmetric padding of kernel // 2 and TF "SAME" padding give the same output size; they
    differ only in where the zeros go.
    """
    return -(-size // stride)


class _Builder:
    """Walks a table, tracking channels, spatial size and output stride, emitting LayerSpecs."""

    def __init__(self, config, family: Family) -> None:
        self.config = config
        self.family = family
        self.channels = config.in_chans
        self.table_channels = config.in_chans  # the same channels at alpha 1 (V3's ratios)
        self.size = config.resolution
        self.out_stride = 1
        self.rate = 1  # the atrous rate of 3x3 convs once output_stride is reached
        self.blocks: list[BlockSpec] = []

    def width(self, channels: int) -> int:
        """A row's channels at the config's alpha, by the family's rule."""
        return self.family.width(channels, self.config.alpha)

    def unit_stride(self, stride: int) -> tuple[int, int]:
        """(stride, dilation) of one unit of the table (a conv, a separable block, an inverted
        residual) whose 3x3 conv has ``stride``: TF-slim's mobilenet_base. Once the output stride
        reaches ``config.output_stride``, a unit runs at stride 1 with the current rate, and the
        rate grows by the stride it skipped, for the units after it."""
        if self.config.output_stride is not None and self.out_stride == self.config.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        return stride, 1

    def layer(
        self,
        name,
        kind,
        out_channels,
        kernel,
        stride,
        *,
        depthwise=False,
        act=True,
        nl="RE6",
        dilation=1,
    ):
        groups = self.channels if depthwise else 1
        out_size = conv_out_size(self.size, stride)
        spec = LayerSpec(
            name=name,
            kind=kind,
            in_channels=self.channels,
            out_channels=out_channels,
            kernel=kernel,
            stride=stride,
            groups=groups,
            in_size=self.size,
            out_size=out_size,
            bias=False,
            norm=True,
            act=act,
            dilation=dilation if kernel > 1 else 1,
            activation=NONLINEARITIES[nl],
        )
        self.channels, self.size = out_channels, out_size
        self.out_stride *= stride
        return spec

    def depthwise(self, name: str, stride: int, kernel=DEPTHWISE_KERNEL, nl="RE6") -> LayerSpec:
        """The depthwise conv of a unit whose table stride is ``stride`` (atrous once the output
        stride is reached, see unit_stride)."""
        stride, dilation = self.unit_stride(stride)
        return self.layer(
            name,
            "depthwise",
            self.channels,
            kernel,
            stride,
            depthwise=True,
            nl=nl,
            dilation=dilation,
        )

    def pooled(self, name, kind, out_channels, *, bias, activation) -> LayerSpec:
        """A 1x1 layer on a pooled (1x1) tensor with a bias and no BN: an SE conv, V3's
        pre-logits layer, the classifier. It does not move the walk's channels or size."""
        return LayerSpec(
            name=name,
            kind=kind,
            in_channels=self.channels,
            out_channels=out_channels,
            kernel=1,
            stride=1,
            groups=1,
            in_size=1,
            out_size=1,
            bias=bias,
            norm=False,
            act=activation is not None,
            activation=activation or "relu6",
        )

    def block(self, name, kind, layers, *, residual=False, expansion=1) -> None:
        self.blocks.append(
            BlockSpec(name, kind, tuple(layers), residual, expansion, self.out_stride)
        )

    def conv_block(self, name: str, out_channels: int, row: Conv) -> None:
        kind = "pointwise" if row.k == 1 else "conv"
        stride, dilation = self.unit_stride(row.s)
        layer = self.layer(
            f"{name}.conv", kind, out_channels, row.k, stride, nl=row.nl, dilation=dilation
        )
        self.block(name, "conv", [layer])
        self.table_channels = row.c

    def pre_logits(self, row: ConvNBN | ConvBN) -> None:
        """V3's "conv2d 1x1, NBN" after the pool: a linear layer with bias and h-swish; V4's: no
        bias, BN and ReLU (GELU), 1280 wide at every alpha. Without a classifier
        (num_classes=0) the network ends at the pooled features, as V1 and V2."""
        if self.config.num_classes == 0:
            return
        activation = NONLINEARITIES[row.nl]
        if isinstance(row, ConvBN):
            fc = self.pooled("pre_logits.fc", "linear", row.c, bias=False, activation=activation)
            fc = dataclasses.replace(fc, norm=True)
        else:
            width = v3_pre_logits_width(row, self.config.alpha, self.config.width_rule)
            fc = self.pooled("pre_logits.fc", "linear", width, bias=True, activation=activation)
        self.channels = fc.out_channels
        self.block("pre_logits", "pre_logits", [fc])

    def classifier(self) -> None:
        if self.config.num_classes == 0:
            return
        classes = self.config.num_classes
        fc = self.pooled("classifier", "linear", classes, bias=True, activation=None)
        self.block("classifier", "classifier", [fc])


# --- Variants of a table -------------------------------------------------------------------------


def _small_input_table(table: tuple) -> tuple:
    """The small-input variant: stride 1 in the stem and in the first stride-2 row after it."""
    stem, *rows = table
    first = next(i for i, row in enumerate(rows) if getattr(row, "s", 1) == 2)
    rows[first] = dataclasses.replace(rows[first], s=1)
    return (dataclasses.replace(stem, s=1), *rows)


def _minimalistic_table(table: tuple) -> tuple:
    """V3 minimalistic, as TF-slim and Keras define it: no SE, ReLU everywhere, 3x3 depthwise."""
    rows = []
    for row in table:
        if isinstance(row, Bneck):
            row = dataclasses.replace(row, k=DEPTHWISE_KERNEL, se=False, nl="RE")
        elif isinstance(row, (Conv, ConvNBN)):
            row = dataclasses.replace(row, nl="RE")
        rows.append(row)
    return tuple(rows)


def _reduced_tail_table(table: tuple) -> tuple:
    """V3 section 6.3's reduced tail (torchvision's reduce_divider=2): the last stage's outputs,
    the expansions fed by them, the head conv and the pre-logits layer at half width."""
    rows = list(table)
    blocks = [i for i, row in enumerate(rows) if isinstance(row, Bneck)]
    first = max(i for i in blocks if rows[i].s == 2)
    for i in range(first, len(rows)):
        row = rows[i]
        if isinstance(row, Bneck):
            exp = row.exp if i == first else row.exp // 2
            rows[i] = dataclasses.replace(row, c=row.c // 2, exp=exp)
        else:
            rows[i] = dataclasses.replace(row, c=row.c // 2)
    return tuple(rows)


def _variant_table(config, table: tuple) -> tuple:
    if config.reduced_tail:
        table = _reduced_tail_table(table)
    if config.minimalistic:
        table = _minimalistic_table(table)
    if config.small_input:
        table = _small_input_table(table)
    return table


# --- Row decoders ---------------------------------------------------------------------------------


def _separable(build: _Builder, name: str, row: DW) -> None:
    """V1 Figure 3 (right): 3x3 depthwise at the row's stride, then 1x1 to the row's channels."""
    depthwise = build.depthwise(f"{name}.conv_dw", row.s)
    pointwise = build.layer(f"{name}.conv_pw", "pointwise", build.width(row.c), 1, 1)
    build.block(name, "depthwise_separable", [depthwise, pointwise])


def _inverted_residual(build: _Builder, name: str, row: IR, first: bool) -> None:
    """V2 Table 1: 1x1 expansion (absent when t is 1), 3x3 depthwise, linear 1x1 projection."""
    # The t=1 row stays t=1: the paper's first bottleneck has no expansion layer.
    expansion = row.t
    if row.t != 1 and build.family.expansion is not None:
        expansion = build.config.expansion
    out_channels = build.width(row.c)
    in_channels = build.channels
    layers = []
    if expansion != 1:
        hidden = in_channels * expansion
        layers.append(build.layer(f"{name}.conv_pw", "pointwise", hidden, 1, 1))
    depthwise = build.depthwise(f"{name}.conv_dw", row.s if first else 1)
    layers.append(depthwise)
    layers.append(build.layer(f"{name}.conv_pwl", "pointwise", out_channels, 1, 1, act=False))
    residual = depthwise.stride == 1 and in_channels == out_channels
    build.block(name, "inverted_residual", layers, residual=residual, expansion=expansion)


def _bneck(build: _Builder, name: str, row: Bneck) -> None:
    """V3 Figure 4: V2's inverted residual with the row's kernel and nonlinearity, and
    squeeze-and-excite (pool, 1x1 with ReLU, 1x1 with hard sigmoid, scale) after the depthwise
    conv where the row has SE. The expansion layer is absent when it would keep the width."""
    config = build.config
    in_channels = build.channels
    hidden = v3_expanded_width(
        row, build.table_channels, in_channels, config.alpha, config.width_rule
    )
    out_channels = build.width(row.c)
    layers = []
    if hidden != in_channels:
        layers.append(build.layer(f"{name}.conv_pw", "pointwise", hidden, 1, 1, nl=row.nl))
    depthwise = build.depthwise(f"{name}.conv_dw", row.s, kernel=row.k, nl=row.nl)
    layers.append(depthwise)
    if row.se:
        squeeze = squeeze_width(hidden)
        reduce = build.pooled(
            f"{name}.se.conv_reduce", "squeeze_excite", squeeze, bias=True, activation="relu"
        )
        expand = dataclasses.replace(
            reduce,
            name=f"{name}.se.conv_expand",
            in_channels=squeeze,
            out_channels=hidden,
            activation="hardsigmoid",
        )
        layers += [reduce, expand]
    layers.append(build.layer(f"{name}.conv_pwl", "pointwise", out_channels, 1, 1, act=False))
    residual = depthwise.stride == 1 and in_channels == out_channels
    build.block(
        name, "inverted_residual", layers, residual=residual, expansion=hidden / in_channels
    )
    build.table_channels = row.c


def _head_width(build: _Builder, row: Conv) -> int:
    config, family = build.config, build.family
    if family.width_rules:
        return v3_head_width(
            row, build.table_channels, build.channels, config.alpha, config.width_rule
        )
    return (family.head_width or family.width)(row.c, config.alpha)


def decode_table(config, family: Family) -> list[BlockSpec]:
    """The stem, ``blocks.{i}`` for each repeat of each DW, IR or Bneck row, the optional last
    Conv row as ``head``, V3's pre-logits layer, and the classifier."""
    build = _Builder(config, family)
    stem, *rows = _variant_table(config, family.table)
    if family.width_rules:
        stem_width = v3_stem_width(stem.c, config.alpha, config.width_rule)
    else:
        stem_width = (family.stem_width or family.width)(stem.c, config.alpha)
    build.conv_block("stem", stem_width, stem)
    # the last Conv row is the 1x1 head conv before the pool; V4's earlier ones are blocks
    heads = [i for i, row in enumerate(rows) if isinstance(row, Conv)]
    head = (
        heads[-1]
        if heads and all(isinstance(r, (ConvNBN, ConvBN)) for r in rows[heads[-1] + 1 :])
        else None
    )
    index = 0
    for position, row in enumerate(rows):
        if position == head:
            build.conv_block("head", _head_width(build, row), row)
            continue
        if isinstance(row, (ConvNBN, ConvBN)):
            build.pre_logits(row)
            continue
        for repeat in range(getattr(row, "n", 1)):
            name = f"blocks.{index}"
            if isinstance(row, DW):
                _separable(build, name, row)
            elif isinstance(row, IR):
                _inverted_residual(build, name, row, first=repeat == 0)
            elif isinstance(row, Bneck):
                _bneck(build, name, row)
            elif isinstance(row, Conv):
                build.conv_block(name, build.width(row.c), row)
            elif isinstance(row, FusedIB):
                fused_ib(build, name, row)
            elif isinstance(row, UIB):
                universal_ib(build, name, row, first=repeat == 0)
            elif isinstance(row, MQA):
                mobile_mqa(build, name, row)
            index += 1
    build.classifier()
    return build.blocks


def feature_taps(blocks: list[BlockSpec]) -> tuple[FeatureTap, ...]:
    """C_k: the last block output at output stride 2**k. C_k_expansion: the expansion output of
    the block that leaves level k (the V2 paper's "layer 15" for k=4, which SSDLite taps).
    C_k_bottleneck: the input of the family's 1x1 head conv, where it has one (V2's last inverted
    residual, which DeepLab reads: the paper's "MNet V2*")."""
    taps: dict[str, FeatureTap] = {}
    for index, block in enumerate(blocks):
        if block.kind in ("classifier", "pre_logits"):
            continue
        if block.kind == "inverted_residual" and block.expansion != 1 and block.stride > 1:
            expand = block.layers[0]
            level = block.level - int(math.log2(block.stride))
            name = f"C{level}_expansion"
            module = f"{block.name}.act1"  # after the expansion's BN and nonlinearity
            taps[name] = FeatureTap(
                name, module, index, expand.out_channels, 2**level, expand.out_size
            )
        if block.name == "head" and index > 0:
            body = blocks[index - 1]
            name = f"C{body.level}_bottleneck"
            taps[name] = FeatureTap(
                name, body.name, index - 1, body.out_channels, body.out_stride, body.out_size
            )
        name = f"C{block.level}"
        taps[name] = FeatureTap(
            name, block.name, index, block.out_channels, block.out_stride, block.out_size
        )
    return tuple(sorted(taps.values(), key=lambda tap: (tap.block, "expansion" not in tap.name)))
