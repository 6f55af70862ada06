"""The one function that resolves a family's table into layers, and the config it reads.

The tables are data in ``families.py`` (V1 Table 1, V2 Table 2, and any family registered there,
each with the feature taps the task heads read). [`resolve`][mobilenets.core.spec.resolve] turns a
[`ModelConfig`][mobilenets.core.spec.ModelConfig] (architecture, alpha, resolution, ...) into a
[`NetSpec`][mobilenets.core.spec.NetSpec]: one record per block and per layer, with channels,
kernel, stride, groups and spatial sizes. The nn.Module builder (``models.py``) and the analytic
cost model (``cost.py``) both read that record; nothing discovers a shape by running a forward pass.

alpha (the width multiplier, V1 section 3.3) and rho (the resolution multiplier, section 3.4) are
applied here and nowhere else: alpha through each architecture's channel-rounding rule, rho only
by choosing the input resolution, so it changes MACs and never parameters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import (
    DEPTHWISE_KERNEL,
    DW,
    HEAD_TAPS,
    IR,
    Conv,
    Family,
    families,
    get_family,
)

# the records resolve writes, named here too: this module is where a spec's types are looked up
from mobilenets.core.records import LAYER_KINDS as LAYER_KINDS
from mobilenets.core.records import BlockSpec as BlockSpec
from mobilenets.core.records import FeatureTap as FeatureTap
from mobilenets.core.records import LayerSpec as LayerSpec

PADDINGS = ("symmetric", "same")
# Five stride-2 stages take 32 pixels to 1x1. Smaller inputs would still run (sizes round up),
# but the last stages would read mostly padding.
MIN_RESOLUTION = 32
# The small-input variant (ModelConfig.small_input) keeps three stride-2 stages: 8 pixels to 1x1.
MIN_SMALL_RESOLUTION = 8
DEFAULT_RESOLUTION = 224
# Output strides that atrous convolution can hold the network at (DeepLab's 8 and 16; 32 is the
# classification network as is). See _Builder.unit_stride.
OUTPUT_STRIDES = (8, 16, 32)


# --- Resolution rules ---------------------------------------------------------------------------


def resolution_from_rho(rho: float) -> int:
    """The input side for a resolution multiplier: 224 * rho, to the nearest multiple of 32."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho <= 1:
        raise MobileNetsError(f"rho must be a number in (0, 1], got {rho!r}")
    # Halves round up (224 * 0.5 = 112 gives 128), unlike Python's round-half-to-even.
    resolution = math.floor(DEFAULT_RESOLUTION * rho / 32 + 0.5) * 32
    if resolution < MIN_RESOLUTION:
        raise MobileNetsError(
            f"rho={rho} gives resolution {resolution}, below the minimum {MIN_RESOLUTION}"
        )
    return resolution


def pick_resolution(resolution: int | None = None, rho: float | None = None) -> int:
    """The input resolution from either argument (224 when neither is given)."""
    if resolution is not None and rho is not None:
        raise MobileNetsError(
            f"give resolution or rho, not both (got resolution={resolution!r}, rho={rho!r})"
        )
    if rho is not None:
        return resolution_from_rho(rho)
    return DEFAULT_RESOLUTION if resolution is None else resolution


def format_alpha(alpha: float) -> str:
    """alpha as TF-slim names spell it: 1.0, 0.75, 0.5, 0.35."""
    text = f"{alpha:g}"
    return text if "." in text else f"{text}.0"


# --- The configuration a model is built from ---------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: stored in every checkpoint (nanoGPT's model_args).

    ``padding`` and ``bn_eps``/``bn_momentum`` are numerical-parity settings: PyTorch-trained
    weights use symmetric padding and eps 1e-5; weights imported from TF/Keras need TF "SAME"
    padding (bottom/right only at stride 2) and eps 1e-3.
    """

    arch: str
    alpha: float = 1.0
    resolution: int = DEFAULT_RESOLUTION
    num_classes: int = 1000
    in_chans: int = 3
    dropout: float | None = None  # None: the architecture's released default
    expansion: int | None = None  # V2 only; None: 6, the paper's t
    padding: str = "symmetric"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    # For 28-32 px inputs (Fashion-MNIST, CIFAR): a stride-1 stem and a stride-1 first
    # stride-2 row, so the net downsamples 8x instead of 32x (32x32 in, 4x4 at the end). Same
    # parameters as the standard net, about 16x its MACs at the same resolution.
    small_input: bool = False
    # Atrous convolution (DeepLab): None runs every stride as the table says. 8 or 16 stops the
    # striding there, as TF-slim's mobilenet_base(output_stride=...) does: the stride-2 layer that
    # would pass it runs at stride 1, and every later 3x3 conv is dilated by the strides skipped.
    # Same parameters, more MACs; the segmentation backbones use it.
    output_stride: int | None = None

    def __post_init__(self) -> None:
        family = get_family(self.arch)
        if not _is_number(self.alpha) or not self.alpha > 0 or not math.isfinite(self.alpha):
            raise MobileNetsError(f"alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.small_input, bool):
            raise MobileNetsError(f"small_input must be True or False, got {self.small_input!r}")
        minimum = MIN_SMALL_RESOLUTION if self.small_input else MIN_RESOLUTION
        if not _is_int(self.resolution) or self.resolution < minimum:
            hint = "" if self.small_input else " (small_input=True allows down to 8)"
            raise MobileNetsError(
                f"resolution must be an integer >= {minimum}, got {self.resolution!r}{hint}"
            )
        if not _is_int(self.num_classes) or self.num_classes < 0:
            raise MobileNetsError(
                f"num_classes must be an integer >= 0 (0 gives pooled features), "
                f"got {self.num_classes!r}"
            )
        if not _is_int(self.in_chans) or self.in_chans < 1:
            raise MobileNetsError(f"in_chans must be an integer >= 1, got {self.in_chans!r}")
        if self.dropout is None:
            object.__setattr__(self, "dropout", family.dropout)
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise MobileNetsError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if family.expansion is None and self.expansion is not None:
            expanding = [arch for arch in families() if get_family(arch).expansion is not None]
            raise MobileNetsError(
                f"expansion applies to {', '.join(expanding)} only, got "
                f"expansion={self.expansion!r} for {self.arch}"
            )
        if family.expansion is not None:
            if self.expansion is None:
                object.__setattr__(self, "expansion", family.expansion)
            if not _is_int(self.expansion) or self.expansion < 1:
                raise MobileNetsError(f"expansion must be an integer >= 1, got {self.expansion!r}")
        if self.padding not in PADDINGS:
            raise MobileNetsError(
                f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}"
            )
        if not _is_number(self.bn_eps) or not self.bn_eps > 0:
            raise MobileNetsError(f"bn_eps must be a positive number, got {self.bn_eps!r}")
        if not _is_number(self.bn_momentum) or not 0 <= self.bn_momentum <= 1:
            raise MobileNetsError(
                f"bn_momentum must be a number in [0, 1], got {self.bn_momentum!r}"
            )
        if self.output_stride is not None and (
            not _is_int(self.output_stride) or self.output_stride not in OUTPUT_STRIDES
        ):
            raise MobileNetsError(
                f"output_stride must be None or one of {', '.join(map(str, OUTPUT_STRIDES))}, "
                f"got {self.output_stride!r}"
            )
        if self.output_stride is not None and self.small_input:
            raise MobileNetsError(
                f"output_stride applies to the standard network; small_input=True already "
                f"stops at output stride 8 (got output_stride={self.output_stride!r})"
            )

    @property
    def name(self) -> str:
        """The TF-slim style name of this width and resolution, e.g. ``mobilenet_v2_1.0_224``."""
        suffix = "_small" if self.small_input else ""
        if self.output_stride is not None:
            suffix += f"_os{self.output_stride}"
        return f"{self.arch}_{format_alpha(self.alpha)}_{self.resolution}{suffix}"

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict) or "arch" not in data:
            raise MobileNetsError(f"a model config is a dict with at least 'arch', got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MobileNetsError(
                f"unknown model config keys {unknown}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**data)


def backbone_config_fields(config_type: type, data, what: str) -> dict:
    """The fields of a detection or segmentation config from its ``to_dict``: every key known to
    ``config_type`` and the ``backbone`` read as a ModelConfig; anything else is refused, naming
    ``what`` config it is and the allowed keys."""
    if not isinstance(data, dict) or not isinstance(data.get("backbone"), dict):
        raise MobileNetsError(
            f"a {what} config is a dict with a 'backbone' model config, got {data!r}"
        )
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MobileNetsError(
            f"unknown {what} config keys {unknown}; allowed: {', '.join(sorted(known))}"
        )
    return {**data, "backbone": ModelConfig.from_dict(data["backbone"])}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class NetSpec:
    """A resolved network: the single source every consumer reads."""

    config: ModelConfig
    blocks: tuple[BlockSpec, ...]
    taps: tuple[FeatureTap, ...]

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for block in self.blocks for layer in block.layers)

    @property
    def feature_blocks(self) -> tuple[BlockSpec, ...]:
        """Every block before the pool: what forward_features runs."""
        return tuple(block for block in self.blocks if block.kind != "classifier")

    @property
    def num_features(self) -> int:
        """Channels of the final feature map, which the pool hands to the classifier."""
        return self.feature_blocks[-1].out_channels

    def tap(self, name: str) -> FeatureTap:
        for tap in self.taps:
            if tap.name == name:
                return tap
        raise MobileNetsError(
            f"unknown feature tap {name!r}; {self.config.arch} has "
            f"{', '.join(t.name for t in self.taps)}"
        )


# --- Resolution ---------------------------------------------------------------------------------


def prefixed(block: BlockSpec, prefix: str) -> BlockSpec:
    """``block`` with ``prefix.`` before its name and its layers' names: a backbone's blocks
    inside a detector or segmenter (``backbone.blocks.3``)."""
    layers = tuple(
        dataclasses.replace(layer, name=f"{prefix}.{layer.name}") for layer in block.layers
    )
    return dataclasses.replace(block, name=f"{prefix}.{block.name}", layers=layers)


def conv_out_size(size: int, stride: int) -> int:
    """Output side of a conv with odd kernel and "same"-style padding: ceil(size / stride).

    Symmetric padding of kernel // 2 and TF "SAME" padding give the same output size; they
    differ only in where the zeros go.
    """
    return -(-size // stride)


class _Builder:
    """Walks a table, tracking channels, spatial size and output stride, emitting LayerSpecs."""

    def __init__(self, config: ModelConfig, family: Family) -> None:
        self.config = config
        self.family = family
        self.channels = config.in_chans
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
        self, name, kind, out_channels, kernel, stride, *, depthwise=False, act=True, dilation=1
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
        )
        self.channels, self.size = out_channels, out_size
        self.out_stride *= stride
        return spec

    def depthwise(self, name: str, stride: int) -> LayerSpec:
        """The 3x3 depthwise conv of a unit whose table stride is ``stride`` (atrous once the
        output stride is reached, see unit_stride)."""
        stride, dilation = self.unit_stride(stride)
        return self.layer(
            name,
            "depthwise",
            self.channels,
            DEPTHWISE_KERNEL,
            stride,
            depthwise=True,
            dilation=dilation,
        )

    def block(self, name, kind, layers, *, residual=False, expansion=1) -> None:
        self.blocks.append(
            BlockSpec(name, kind, tuple(layers), residual, expansion, self.out_stride)
        )

    def conv_block(self, name: str, out_channels: int, kernel: int, stride: int) -> None:
        kind = "pointwise" if kernel == 1 else "conv"
        stride, dilation = self.unit_stride(stride)
        layer = self.layer(f"{name}.conv", kind, out_channels, kernel, stride, dilation=dilation)
        self.block(name, "conv", [layer])

    def classifier(self) -> None:
        if self.config.num_classes == 0:
            return
        fc = LayerSpec(
            name="classifier",
            kind="linear",
            in_channels=self.channels,
            out_channels=self.config.num_classes,
            kernel=1,
            stride=1,
            groups=1,
            in_size=1,
            out_size=1,
            bias=True,
            norm=False,
            act=False,
        )
        self.block("classifier", "classifier", [fc])


def _small_input_table(table: tuple, small_input: bool) -> tuple:
    """The small-input variant: stride 1 in the stem and in the first stride-2 row after it."""
    if not small_input:
        return table
    stem, *rows = table
    first = next(i for i, row in enumerate(rows) if row.s == 2)
    rows[first] = dataclasses.replace(rows[first], s=1)
    return (dataclasses.replace(stem, s=1), *rows)


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


def _resolve_table(config: ModelConfig, family: Family) -> list[BlockSpec]:
    """The one decoder of every family's table: the stem, ``blocks.{i}`` for each repeat of each
    DW or IR row, the optional last Conv row as ``head``, and the classifier."""
    build = _Builder(config, family)
    stem, *rows = _small_input_table(family.table, config.small_input)
    build.conv_block("stem", build.width(stem.c), stem.k, stem.s)
    index = 0
    for row in rows:
        if isinstance(row, Conv):  # the table's last row: the 1x1 conv before the pool
            head_width = family.head_width or family.width
            build.conv_block("head", head_width(row.c, config.alpha), row.k, row.s)
            continue
        for repeat in range(row.n):
            if isinstance(row, DW):
                _separable(build, f"blocks.{index}", row)
            else:
                _inverted_residual(build, f"blocks.{index}", row, first=repeat == 0)
            index += 1
    build.classifier()
    return build.blocks


def _taps(blocks: list[BlockSpec]) -> tuple[FeatureTap, ...]:
    """C_k: the last block output at output stride 2**k. C_k_expansion: the expansion output of
    the block that leaves level k (the V2 paper's "layer 15" for k=4, which SSDLite taps).
    C_k_bottleneck: the input of the family's 1x1 head conv, where it has one (V2's last inverted
    residual, which DeepLab reads: the paper's "MNet V2*")."""
    taps: dict[str, FeatureTap] = {}
    for index, block in enumerate(blocks):
        if block.kind == "classifier":
            continue
        if block.kind == "inverted_residual" and block.expansion != 1 and block.stride > 1:
            expand = block.layers[0]
            level = block.level - int(math.log2(block.stride))
            name = f"C{level}_expansion"
            module = f"{block.name}.act1"  # after the expansion's BN and ReLU6
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


def resolve(config: ModelConfig) -> NetSpec:
    """Resolve a config into one record per block and layer. Pure: same config, same spec."""
    blocks = _resolve_table(config, get_family(config.arch))
    return NetSpec(config=config, blocks=tuple(blocks), taps=_taps(blocks))


def head_taps(
    config: ModelConfig, roles: tuple[str, ...], head: str, *, block_outputs: bool = False
) -> tuple[FeatureTap, ...]:
    """The taps a task head reads (roles of [`HEAD_TAPS`][mobilenets.core.families.HEAD_TAPS]), on
    the plain network of ``config`` (no atrous convolution: the block indices are the same at any
    output stride). A backbone without one is refused, naming the backbone, the role and the tap;
    with ``block_outputs``, so is a tap inside a block (an expansion output)."""
    family = get_family(config.arch)
    plain = resolve(config.replace(output_stride=None, num_classes=0))
    taps = []
    for role in roles:
        name = family.taps.get(role)
        if name is None:
            raise MobileNetsError(
                f"{head} reads the backbone tap {role!r} ({HEAD_TAPS[role]}); "
                f"{config.name} names none (its family {config.arch} names "
                f"{', '.join(family.taps) or 'no head taps'})"
            )
        found = [tap for tap in plain.taps if tap.name == name]
        if not found:
            raise MobileNetsError(
                f"{head} reads the backbone tap {name!r} ({role}: {HEAD_TAPS[role]}); "
                f"{config.name} has no {name!r}, only {', '.join(t.name for t in plain.taps)}"
            )
        if block_outputs and found[0].module != plain.blocks[found[0].block].name:
            raise MobileNetsError(
                f"{head} reads whole blocks' outputs; the tap {name!r} ({role}) of {config.name} "
                f"is {found[0].module}, inside a block"
            )
        taps.append(found[0])
    return tuple(taps)
