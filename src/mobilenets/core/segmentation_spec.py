"""Mobile DeepLabv3 (Sandler et al. 2018, section 6.3, Table 7) as data, resolved into layers.

[`resolve_segmentation`][mobilenets.core.segmentation_spec.resolve_segmentation] turns a
[`SegmentationConfig`][mobilenets.core.segmentation_spec.SegmentationConfig] into a
[`SegmentationSpec`][mobilenets.core.segmentation_spec.SegmentationSpec]: the classification
backbone's own records at the config's output stride (``mobilenets.core.spec.resolve`` with atrous
convolution, no classifier, and for MobileNetV2 no last 1x1 conv), then one record per layer of the
DeepLabv3 head. The nn.Module (``segmenter.py``) and the cost model (``mobilenets.core.cost``) both
read it.

The design is TF DeepLab's (``research/deeplab``, ``model.py``), as the V2 paper used it:

- Backbone: the network up to the block of the tap its family names ``deeplab_features``
  (``families.HEAD_TAPS``): MobileNetV1 to its last separable block (1024 channels, TF
  ``Conv2d_13_pointwise``), MobileNetV2 to its last inverted residual (320 channels, TF
  ``layer_18``, tap ``C5_bottleneck``): the paper's "MNet V2*". V2's 1280-channel conv is not built.
  Output stride 16 or 8 by atrous convolution, the way TF-slim's
  ``mobilenet_base(output_stride=...)`` does it (``spec._Builder.unit_stride``).
- Head: an image-pooling branch (global average pool, 1x1 conv to 256, BN, ReLU, broadcast back to
  the feature map) and a 1x1 branch (256, BN, ReLU); with ``aspp=True`` three full 3x3 atrous
  branches as well (rates 6, 12, 18 at output stride 16; 12, 24, 36 at 8). Concatenated, projected
  by a 1x1 conv to 256 (BN, ReLU), dropout (TF keeps 0.9), a 1x1 classifier with bias, and bilinear
  upsampling of the logits to the input size (not counted: it has no multiply-adds of weights).
- ``aux=True`` adds a training-time head on the stride-8 features, the ``deeplab_stride8`` tap
  (3x3 conv, BN, ReLU, 1x1 to the
  classes) for an auxiliary loss; it is not part of inference and not in the cost.

``head="lraspp"`` puts the V3 paper's Lite R-ASPP (Howard et al. 2019, section 6.4, Figure 10) on
the same backbone and taps in place of the DeepLabv3 head:

- a 1x1 branch on the ``deeplab_features`` map (128 channels, BN, ReLU), gated channel by channel
  by a global branch (global average pool, 1x1 conv to 128 without bias or BN, sigmoid);
- the gated map upsampled bilinearly to the stride-8 ``deeplab_stride8`` map, a 1x1 conv with bias
  to the classes on each (``classifier`` on the gated map, ``low_classifier`` on the stride-8
  features), added, and upsampled to the input size (torchvision's ``LRASPPHead``). The classifier
  runs at stride 8, so its multiply-adds are counted there.

The paper's figures (V2 Table 7 and V3 Table 7) are in
[`TABLE7`][mobilenets.core.segmentation_spec.TABLE7] and
[`V3_TABLE7`][mobilenets.core.segmentation_spec.V3_TABLE7]; the segmentation docs page sets ours
beside them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.spec import (
    MIN_RESOLUTION,
    BlockSpec,
    LayerSpec,
    ModelConfig,
    NetSpec,
    backbone_config_fields,
    conv_out_size,
    format_alpha,
    head_taps,
    prefixed,
    resolve,
)

SEGMENTATION_HEADS = ("deeplabv3", "lraspp")
SEGMENTATION_OUTPUT_STRIDES = (8, 16)
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}  # DeepLabv3 section 3.3: rates double at OS 8
HEAD_CHANNELS = {"deeplabv3": 256, "lraspp": 128}  # LR-ASPP: V3 Table 7's F = 128
PAPER_RESOLUTION = 513  # TF DeepLab's PASCAL crop, the input of Table 7's MAdds
VOC_CLASSES = 21  # PASCAL VOC 2012: background and 20 classes
HEAD_DROPOUT = {"deeplabv3": 0.1, "lraspp": 0.0}  # TF DeepLab: keep_prob 0.9; LR-ASPP has none
# The backbone taps the auxiliary head and the head read (families.HEAD_TAPS): each family names its
# own, on its plain network; atrous convolution keeps the blocks, so they hold at any output stride.
SEGMENTATION_TAPS = ("deeplab_stride8", "deeplab_features")
SEGMENTATION_KINDS = (
    "image_pool",
    "aspp",
    "projection",
    "classifier",
    "aux",
    "lraspp_branch",
    "lraspp_gate",
    "low_classifier",
)


@dataclass(frozen=True)
class Table7Row:
    """A MobileNet row of V2 Table 7: PASCAL VOC 2012 val, 513 px crops."""

    arch: str
    output_stride: int
    aspp: bool
    multiscale: bool  # "MF": six scales 0.5..1.75 and their mirrors
    miou: float
    params_m: float
    madds_b: float


# V2 Table 7, the six MobileNet rows ("MNet V2*" reads the 320-channel layer; ResNet-101 omitted).
TABLE7 = (
    Table7Row("mobilenet_v1", 16, True, False, 75.29, 11.15, 14.25),
    Table7Row("mobilenet_v1", 8, True, True, 78.56, 11.15, 941.9),
    Table7Row("mobilenet_v2", 16, True, False, 75.70, 4.52, 5.8),
    Table7Row("mobilenet_v2", 8, True, True, 78.42, 4.52, 387.0),
    Table7Row("mobilenet_v2", 16, False, False, 75.32, 2.11, 2.75),
    Table7Row("mobilenet_v2", 8, False, True, 77.33, 2.11, 152.6),
)

CITYSCAPES_CLASSES = 19
CITYSCAPES_SIZE = (1024, 2048)  # V3 Table 7's MAdds: a full Cityscapes image, height x width


@dataclass(frozen=True)
class V3Table7Row:
    """A row of V3 Table 7: LR-ASPP on Cityscapes val, 19 classes, MAdds at 1024 x 2048, output
    stride 16, with the reduced tail (the table's RF2) and F head filters."""

    arch: str
    head_channels: int
    params_m: float
    madds_b: float


# V3 Table 7, the two rows of the released design (RF2, LR-ASPP, F = 128).
V3_TABLE7 = (
    V3Table7Row("mobilenet_v3_large", 128, 1.51, 9.74),
    V3Table7Row("mobilenet_v3_small", 128, 0.47, 2.90),
)


@dataclass(frozen=True)
class SegmentationConfig:
    """Everything needed to rebuild a segmenter; stored in its checkpoints.

    ``backbone`` gives the architecture, alpha, expansion, input channels and the numerical parity
    settings (padding, BN eps and momentum, which the head shares). Its resolution, output stride
    and classifier are this config's: the backbone has no classifier (num_classes 0). The model is
    fully convolutional: ``resolution`` is the nominal input side the cost is given at.

    ``head`` picks DeepLabv3 (``aspp``, ``atrous_rates``, ``aux`` and ``dropout`` are its) or
    LR-ASPP; ``head_channels`` (256 and V3 Table 7's F = 128) and ``dropout`` (0.1 and none)
    default to the head's.
    """

    backbone: ModelConfig
    num_classes: int = VOC_CLASSES
    resolution: int = PAPER_RESOLUTION
    output_stride: int = 16
    aspp: bool = False
    atrous_rates: tuple[int, ...] | None = None  # None: ASPP_RATES[output_stride]
    head_channels: int | None = None  # None: HEAD_CHANNELS[head]
    dropout: float | None = None  # None: HEAD_DROPOUT[head]
    aux: bool = False
    head: str = "deeplabv3"  # one of SEGMENTATION_HEADS: DeepLabv3, or V3's LR-ASPP

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, ModelConfig):
            raise MobileNetsError(f"backbone must be a ModelConfig, got {self.backbone!r}")
        if self.head not in SEGMENTATION_HEADS:
            raise MobileNetsError(
                f"head must be one of {', '.join(SEGMENTATION_HEADS)}, got {self.head!r}"
            )
        if self.backbone.small_input:
            raise MobileNetsError(
                f"{self.head_title} sets the backbone's output stride itself; the backbone must "
                f"be a standard MobileNet, got {self.backbone.name}"
            )
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise MobileNetsError(
                f"num_classes must be an integer >= 2 (background counts), got {self.num_classes!r}"
            )
        if not _is_int(self.resolution) or self.resolution < MIN_RESOLUTION:
            raise MobileNetsError(
                f"resolution must be an integer >= {MIN_RESOLUTION} (the paper's figures are at "
                f"{PAPER_RESOLUTION}), got {self.resolution!r}"
            )
        if not _is_int(self.output_stride) or self.output_stride not in SEGMENTATION_OUTPUT_STRIDES:
            raise MobileNetsError(
                f"output_stride must be 8 or 16 (DeepLabv3 trains at 16 and evaluates at 16 or 8), "
                f"got {self.output_stride!r}"
            )
        for name in ("aspp", "aux"):
            if not isinstance(getattr(self, name), bool):
                raise MobileNetsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        rates = self.atrous_rates
        if rates is None:
            rates = ASPP_RATES[self.output_stride]
        if (
            not isinstance(rates, (list, tuple))
            or not rates
            or not all(_is_int(rate) and rate >= 1 for rate in rates)
        ):
            raise MobileNetsError(
                f"atrous_rates must be None or a non-empty sequence of integers >= 1, "
                f"got {self.atrous_rates!r}"
            )
        object.__setattr__(self, "atrous_rates", tuple(rates))
        if self.head == "lraspp" and (self.aspp or self.aux):
            raise MobileNetsError(
                f"aspp and aux belong to the DeepLabv3 head; LR-ASPP has neither, got "
                f"aspp={self.aspp!r}, aux={self.aux!r}"
            )
        if self.head_channels is None:
            object.__setattr__(self, "head_channels", HEAD_CHANNELS[self.head])
        if self.dropout is None:
            object.__setattr__(self, "dropout", HEAD_DROPOUT[self.head])
        if not _is_int(self.head_channels) or self.head_channels < 1:
            raise MobileNetsError(
                f"head_channels must be an integer >= 1, got {self.head_channels!r}"
            )
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise MobileNetsError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.head == "lraspp" and self.dropout != 0:
            raise MobileNetsError(
                f"LR-ASPP has no dropout (V3 Figure 10); dropout must be 0, got {self.dropout!r}"
            )
        backbone = self.backbone.replace(
            resolution=self.resolution, num_classes=0, output_stride=self.output_stride
        )
        # Refuses a backbone without the taps; the segmenter's backbone ends at a block.
        head_taps(backbone, SEGMENTATION_TAPS, self.head_title, block_outputs=True)
        object.__setattr__(self, "backbone", backbone)

    @property
    def head_title(self) -> str:
        """The head's name as the papers write it, for messages."""
        return {"deeplabv3": "DeepLabv3", "lraspp": "LR-ASPP"}[self.head]

    @property
    def arch(self) -> str:
        """``deeplabv3_mobilenet_v2``, ``lraspp_mobilenet_v3_large``."""
        return f"{self.head}_{self.backbone.arch}"

    @property
    def alpha(self) -> float:
        return self.backbone.alpha

    @property
    def name(self) -> str:
        """``deeplabv3_mobilenet_v2_1.0_513_os16``, with ``_aspp`` when the head has ASPP and
        ``_reduced_tail`` for a V3 backbone with the reduced tail
        (``lraspp_mobilenet_v3_large_1.0_513_os16_reduced_tail``)."""
        suffix = "_aspp" if self.aspp else ""
        suffix += "_reduced_tail" if self.backbone.reduced_tail else ""
        return (
            f"{self.arch}_{format_alpha(self.alpha)}_{self.resolution}_os{self.output_stride}"
            f"{suffix}"
        )

    def replace(self, **changes) -> SegmentationConfig:
        if "output_stride" in changes and "atrous_rates" not in changes:
            # Default rates follow the output stride; rates given explicitly are kept.
            if self.atrous_rates == ASPP_RATES[self.output_stride]:
                changes["atrous_rates"] = None
        # The head's defaults follow the head; values given explicitly are kept.
        for key, defaults in (("head_channels", HEAD_CHANNELS), ("dropout", HEAD_DROPOUT)):
            follows = getattr(self, key) == defaults[self.head]
            if "head" in changes and key not in changes and follows:
                changes[key] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SegmentationConfig:
        return cls(**backbone_config_fields(cls, data, "segmentation"))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- Resolved records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentationSpec:
    """A resolved segmenter. ``blocks`` are the inference network in the order forward runs it,
    with module paths as names (``backbone.blocks.16``, ``head.image_pool``, ``head.aspp0``,
    ``head.project``, ``classifier``); ``aux`` is the training-time head (None without it).
    ``backbone`` is the classification backbone's own spec at the output stride."""

    config: SegmentationConfig
    backbone: NetSpec
    blocks: tuple[BlockSpec, ...]
    aux: BlockSpec | None
    # index of the backbone block at output stride 8 (its deeplab_stride8 tap), which the
    # auxiliary head and LR-ASPP's low-level skip read
    aux_block: int

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for block in self.blocks for layer in block.layers)

    @property
    def backbone_blocks(self) -> tuple[BlockSpec, ...]:
        return tuple(block for block in self.blocks if block.name.startswith("backbone."))

    @property
    def head_blocks(self) -> tuple[BlockSpec, ...]:
        return tuple(block for block in self.blocks if not block.name.startswith("backbone."))

    @property
    def feature_size(self) -> int:
        """Side of the feature map the head reads, at the config's resolution."""
        return self.backbone_blocks[-1].out_size

    @property
    def feature_channels(self) -> int:
        return self.backbone_blocks[-1].out_channels


def _layer(
    name, kind, in_channels, out_channels, kernel, in_size, *, dilation=1, classifier=False
) -> LayerSpec:
    """A stride-1 conv of the head: BN and ReLU, or bias and linear for the classifier."""
    return LayerSpec(
        name=name,
        kind=kind,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel=kernel,
        stride=1,
        groups=1,
        in_size=in_size,
        out_size=conv_out_size(in_size, 1),
        bias=classifier,
        norm=not classifier,
        act=not classifier,
        dilation=dilation,
    )


def resolve_segmentation(config: SegmentationConfig) -> SegmentationSpec:
    """Resolve a segmentation config into one record per block and layer. Pure."""
    backbone = resolve(config.backbone)
    stride8, last = head_taps(
        config.backbone, SEGMENTATION_TAPS, config.head_title, block_outputs=True
    )
    # The backbone up to the block of its deeplab_features tap: V1 to its last separable block;
    # V2 to its last inverted residual, without the 1x1 conv to 1280 (the paper's MNet V2*); V3
    # to its head conv (960, or 480 with the reduced tail).
    features = list(backbone.feature_blocks[: last.block + 1])
    channels, size, stride = features[-1].out_channels, features[-1].out_size, config.output_stride
    width = config.head_channels
    blocks = [prefixed(block, "backbone") for block in features]

    def block(name, kind, *layers):
        blocks.append(BlockSpec(name, kind, tuple(layers), False, 1, stride))

    if config.head == "lraspp":
        low = backbone.blocks[stride8.block]
        # V3 Figure 10: the 1x1 branch (BN, ReLU) and the gate, a 1x1 conv on the pooled map,
        # without bias or BN, then a sigmoid; the gated map is upsampled to the stride-8 map,
        # where both 1x1 classifiers (with bias) run and are added.
        branch = dataclasses.replace(
            _layer("head.branch.conv", "pointwise", channels, width, 1, size), activation="relu"
        )
        block("head.branch", "lraspp_branch", branch)
        gate = dataclasses.replace(
            _layer("head.gate.conv", "pointwise", channels, width, 1, 1),
            norm=False,
            activation="sigmoid",
        )
        block("head.gate", "lraspp_gate", gate)
        classes, low_size = config.num_classes, low.out_size
        low_classifier = _layer(
            "low_classifier", "pointwise", low.out_channels, classes, 1, low_size, classifier=True
        )
        blocks.append(BlockSpec("low_classifier", "low_classifier", (low_classifier,), False, 1, 8))
        classifier = _layer("classifier", "pointwise", width, classes, 1, low_size, classifier=True)
        blocks.append(BlockSpec("classifier", "classifier", (classifier,), False, 1, 8))
        return SegmentationSpec(config, backbone, tuple(blocks), None, stride8.block)

    # The image-pooling branch runs on the pooled 1x1 map: its conv costs channels * width.
    pool = _layer("head.image_pool.conv", "pointwise", channels, width, 1, 1)
    block("head.image_pool", "image_pool", pool)
    block("head.aspp0", "aspp", _layer("head.aspp0.conv", "pointwise", channels, width, 1, size))
    rates = config.atrous_rates if config.aspp else ()
    for index, rate in enumerate(rates, start=1):
        atrous = _layer(f"head.aspp{index}.conv", "conv", channels, width, 3, size, dilation=rate)
        block(f"head.aspp{index}", "aspp", atrous)
    branches = 2 + len(rates)
    project = _layer("head.project.conv", "pointwise", branches * width, width, 1, size)
    block("head.project", "projection", project)
    classes = config.num_classes
    block(
        "classifier",
        "classifier",
        _layer("classifier", "pointwise", width, classes, 1, size, classifier=True),
    )

    # The auxiliary head reads the deeplab_stride8 tap's block (an index of the plain network's,
    # the same at any output stride).
    aux_block = stride8.block
    aux = None
    if config.aux:
        source = backbone.blocks[aux_block]
        aux_channels, aux_size = source.out_channels, source.out_size
        aux = BlockSpec(
            "aux",
            "aux",
            (
                _layer("aux.conv", "conv", aux_channels, aux_channels, 3, aux_size),
                _layer(
                    "aux.classifier",
                    "pointwise",
                    aux_channels,
                    config.num_classes,
                    1,
                    aux_size,
                    classifier=True,
                ),
            ),
            False,
            1,
            source.out_stride,
        )
    return SegmentationSpec(config, backbone, tuple(blocks), aux, aux_block)
