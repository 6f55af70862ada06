"""The one function that resolves a family's table into layers, and the config it reads.

The tables are data in ``families.py`` (V1 Table 1, V2 Table 2, V3 Tables 1 and 2, and any family
registered there, each with the feature taps the task heads read); ``decode.py`` walks them.
[`resolve`][mobilenets.core.spec.resolve] turns a [`ModelConfig`][mobilenets.core.spec.ModelConfig]
(architecture, alpha, resolution, ...) into a [`NetSpec`][mobilenets.core.spec.NetSpec]: one record
per block and per layer, with channels, kernel, stride, groups and spatial sizes. The nn.Module
builder (``models.py``) and the analytic cost model (``cost.py``) both read that record; nothing
discovers a shape by running a forward pass.

alpha (the width multiplier, V1 section 3.3) and rho (the resolution multiplier, section 3.4) are
applied here and nowhere else: alpha through each architecture's channel-rounding rule, rho only
by choosing the input resolution, so it changes MACs and never parameters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mobilenets.core.decode import conv_out_size as conv_out_size
from mobilenets.core.decode import decode_table, feature_taps
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import HEAD_TAPS, families, get_family

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
    # V3 only. How alpha sets the widths: "tf" (TF-slim, Keras, timm) or "torchvision"; None: the
    # family's first ("tf"). See families.V3_WIDTH_RULES; at alpha 1 both give the same network.
    width_rule: str | None = None
    # V3 only: TF-slim's and Keras's minimalistic variant (no SE, ReLU everywhere, 3x3 depthwise).
    minimalistic: bool = False
    # V3 only: the last stage, head conv and pre-logits at half width (paper section 6.3, the
    # detection and segmentation backbones; torchvision's reduced_tail).
    reduced_tail: bool = False

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
        self._check_v3_fields(family)
        if self.output_stride is not None and self.small_input:
            raise MobileNetsError(
                f"output_stride applies to the standard network; small_input=True already "
                f"stops at output stride 8 (got output_stride={self.output_stride!r})"
            )

    def _check_v3_fields(self, family) -> None:
        v3 = [arch for arch in families() if get_family(arch).width_rules]
        for flag in ("minimalistic", "reduced_tail"):
            value = getattr(self, flag)
            if not isinstance(value, bool):
                raise MobileNetsError(f"{flag} must be True or False, got {value!r}")
            if value and not family.width_rules:
                raise MobileNetsError(
                    f"{flag} applies to {', '.join(v3)} only, got {flag}=True for {self.arch}"
                )
        if not family.width_rules:
            if self.width_rule is not None:
                raise MobileNetsError(
                    f"width_rule applies to {', '.join(v3)} only, got "
                    f"width_rule={self.width_rule!r} for {self.arch}"
                )
            return
        if self.width_rule is None:
            object.__setattr__(self, "width_rule", family.width_rules[0])
        if self.width_rule not in family.width_rules:
            raise MobileNetsError(
                f"width_rule must be one of {', '.join(family.width_rules)} for {self.arch}, "
                f"got {self.width_rule!r}"
            )

    @property
    def name(self) -> str:
        """The TF-slim style name of this width and resolution, e.g. ``mobilenet_v2_1.0_224``,
        ``mobilenet_v3_large_minimalistic_1.0_224``. torchvision's V3 widths, where they differ
        from TF's (alpha other than 1), add ``_tv``."""
        arch = f"{self.arch}_minimalistic" if self.minimalistic else self.arch
        suffix = "_small" if self.small_input else ""
        if self.output_stride is not None:
            suffix += f"_os{self.output_stride}"
        if self.reduced_tail:
            suffix += "_reduced_tail"
        if self.width_rule == "torchvision" and self.alpha != 1:
            suffix += "_tv"
        return f"{arch}_{format_alpha(self.alpha)}_{self.resolution}{suffix}"

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
        return tuple(
            block for block in self.blocks if block.kind not in ("pre_logits", "classifier")
        )

    @property
    def pre_logits(self) -> BlockSpec | None:
        """V3's 1x1 layer with bias between the pool and the classifier; None for V1 and V2
        and without a classifier."""
        return next((block for block in self.blocks if block.kind == "pre_logits"), None)

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


def resolve(config: ModelConfig) -> NetSpec:
    """Resolve a config into one record per block and layer. Pure: same config, same spec."""
    blocks = decode_table(config, get_family(config.arch))
    return NetSpec(config=config, blocks=tuple(blocks), taps=feature_taps(blocks))


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
