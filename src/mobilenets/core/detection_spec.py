"""SSDLite (Sandler et al. 2018, section 6.2) on any backbone family, as data, resolved into layers.

[`resolve_detection`][mobilenets.core.detection_spec.resolve_detection] turns a
[`DetectionConfig`][mobilenets.core.detection_spec.DetectionConfig] into a
[`DetectionSpec`][mobilenets.core.detection_spec.DetectionSpec]: the classification backbone's own
records (``mobilenets.core.spec.resolve`` with no classifier), then one record per layer of the
extra feature layers and of the prediction heads, and one record per feature map with its size,
channels and default-box shapes. The nn.Module (``model.py``), the cost model
(``mobilenets.core.cost``) and the default boxes (``anchors.py``) all read it; sizes come from
``conv_out_size``, never from a forward pass.

The design is TF object detection API's ``ssdlite_mobilenet_v2_coco``. Maps 0 and 1 are the backbone
taps its family names for the roles ``ssdlite_stride16`` and ``ssdlite_stride32``
(``families.HEAD_TAPS``); nothing here knows a family. For MobileNetV2:

- Map 0: the expansion output (after BN and ReLU6) of the first block of the 160-channel stage,
  the block that takes output stride 16 to 32: the paper's "layer 15" (TF
  ``layer_15/expansion_output``), 576 channels at stride 16, 19x19 at 300 px. It is the
  backbone tap ``C4_expansion``.
- Map 1: the backbone's last 1x1 conv (1280 channels, stride 32, 10x10 at 300 px), tap ``C5``.
  (MobileNetV1 gives ``C4`` and ``C5``, TF's ``ssd_mobilenet_v1`` layout.)
- Maps 2-5: four extra layers of depth d = 512, 256, 256, 128, each a 1x1 conv to d/2, then a
  3x3 stride-2 depthwise separable conv to d (TF: ``use_depthwise``), BN and ReLU6 after each
  conv: 5x5, 3x3, 2x2, 1x1 at 300 px.
- Heads (the "Lite" of SSDLite): for each map, a box head and a class head, each a 3x3
  depthwise conv with BN and ReLU6, then a 1x1 conv with bias and no activation to
  ``anchors * 4`` or ``anchors * num_classes`` channels (TF ``convolutional_box_predictor``
  with ``use_depthwise: true``, ``num_layers_before_predictor: 0``).
- Default boxes: see ``anchors.py``: scales 0.2 to 0.95, ratios 1, 2, 1/2, 3, 1/3 plus the
  extra ratio-1 box, three boxes on map 0.

alpha is applied here to the extra layers as TF's feature-map generator does,
``max(int(d * alpha), 16)``; the backbone applies its own rule (``spec.v2_width``, which keeps
the last conv at 1280 where TF's detection backbone scales it too).

Against the paper (V2 Table 6: 4.3M params, 0.8B MAdds): with 91 classes the detector has
4,500,543 params (4,449,791 without BN scale and shift), +4.7%, and 804.4M MACs at 320x320,
the paper's input size (section 6.2), +0.5%; at TF's 300x300 it is 749.5M, -6.3%. The paper
does not say what it counted; 81 classes (COCO's 80 categories and background) without BN gives
4,286,261 params and 788.8M MACs at 320, which round to both printed figures.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from mobilenets.core.anchors import BoxShape, box_shapes, default_boxes
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import DEPTHWISE_KERNEL
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

EXTRA_DEPTHS = (512, 256, 256, 128)  # TF ssd_mobilenet_v2 feature_map_layout layer_depth
EXTRA_MIN_DEPTH = 16  # TF's min_depth for the extra layers
SSD_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1 / 3)  # TF's config writes 0.3333 for 1/3
LOWEST_ASPECT_RATIOS = (1.0, 2.0, 0.5)  # TF reduce_boxes_in_lowest_layer
DEFAULT_ASPECT_RATIOS = (LOWEST_ASPECT_RATIOS, *(SSD_ASPECT_RATIOS,) * 5)
MIN_SCALE, MAX_SCALE, LOWEST_SCALE = 0.2, 0.95, 0.1
PAPER_RESOLUTION = 320  # V2 section 6.2: "The input resolution of both models is 320 x 320"
TF_RESOLUTION = 300  # TF's ssdlite_mobilenet_v2_coco.config
COCO_CLASSES = 91  # 90 COCO category ids and background (class 0)
DETECTION_KINDS = ("extra_layer", "box_head", "class_head")
BOX_CODE_SIZE = 4  # offsets per default box, in the order boxes.py encodes them
# The backbone taps of maps 0 and 1 (families.HEAD_TAPS): each family names its own.
DETECTION_TAPS = ("ssdlite_stride16", "ssdlite_stride32")


@dataclass(frozen=True)
class DetectionConfig:
    """Everything needed to rebuild a detector; stored in its checkpoints.

    ``backbone`` gives the architecture, alpha, expansion, input channels and the numerical
    parity settings (padding, BN eps and momentum, which the extra layers and heads share). Its
    resolution and classifier are this config's: ``resolution`` replaces the backbone's, and the
    backbone has no classifier (num_classes 0).
    """

    backbone: ModelConfig
    num_classes: int = COCO_CLASSES  # background included, as class 0
    resolution: int = PAPER_RESOLUTION  # TF's config trains at 300
    extra_depths: tuple[int, ...] = EXTRA_DEPTHS
    aspect_ratios: tuple[tuple[float, ...], ...] = DEFAULT_ASPECT_RATIOS  # one tuple per map
    min_scale: float = MIN_SCALE
    max_scale: float = MAX_SCALE
    lowest_scale: float | None = LOWEST_SCALE  # None: map 0 gets the same rule as the others

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, ModelConfig):
            raise MobileNetsError(f"backbone must be a ModelConfig, got {self.backbone!r}")
        if self.backbone.small_input or self.backbone.output_stride not in (None, 32):
            raise MobileNetsError(
                f"SSDLite reads the backbone's taps at output stride 16 and 32; the backbone must "
                f"be a standard {self.backbone.arch} (no small_input, no output_stride), got "
                f"{self.backbone.name}"
            )
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise MobileNetsError(
                f"num_classes must be an integer >= 2 (background is class 0, so one object "
                f"class needs 2), got {self.num_classes!r}"
            )
        if not _is_int(self.resolution) or self.resolution < MIN_RESOLUTION:
            raise MobileNetsError(
                f"resolution must be an integer >= {MIN_RESOLUTION} (SSDLite is trained at "
                f"{TF_RESOLUTION} by TF and evaluated at {PAPER_RESOLUTION} in the paper), "
                f"got {self.resolution!r}"
            )
        depths = tuple(self.extra_depths) if isinstance(self.extra_depths, (list, tuple)) else ()
        if not depths or not all(_is_int(d) and d >= 2 for d in depths):
            raise MobileNetsError(
                f"extra_depths must be a non-empty sequence of integers >= 2, "
                f"got {self.extra_depths!r}"
            )
        object.__setattr__(self, "extra_depths", depths)
        num_maps = 2 + len(depths)
        ratios = self.aspect_ratios
        if (
            not isinstance(ratios, (list, tuple))
            or len(ratios) != num_maps
            or not all(isinstance(r, (list, tuple)) and r for r in ratios)
            or not all(_is_number(x) and x > 0 for r in ratios for x in r)
        ):
            raise MobileNetsError(
                f"aspect_ratios must hold one non-empty tuple of positive ratios per feature "
                f"map ({num_maps} maps: 2 backbone maps and {len(depths)} extra layers), "
                f"got {ratios!r}"
            )
        object.__setattr__(self, "aspect_ratios", tuple(tuple(r) for r in ratios))
        if not all(_is_number(s) for s in (self.min_scale, self.max_scale)) or not (
            0 < self.min_scale <= self.max_scale <= 1
        ):
            raise MobileNetsError(
                f"scales must satisfy 0 < min_scale <= max_scale <= 1, got "
                f"min_scale={self.min_scale!r}, max_scale={self.max_scale!r}"
            )
        if self.lowest_scale is not None and not (
            _is_number(self.lowest_scale) and 0 < self.lowest_scale <= 1
        ):
            raise MobileNetsError(
                f"lowest_scale must be None or a number in (0, 1], got {self.lowest_scale!r}"
            )
        backbone = self.backbone.replace(resolution=self.resolution, num_classes=0)
        head_taps(backbone, DETECTION_TAPS, "SSDLite")  # refuses a backbone without them
        object.__setattr__(self, "backbone", backbone)

    @property
    def arch(self) -> str:
        return f"ssdlite_{self.backbone.arch}"

    @property
    def alpha(self) -> float:
        return self.backbone.alpha

    @property
    def name(self) -> str:
        """``ssdlite_mobilenet_v2_1.0_300``: the TF-slim style name with the detector prefix, and
        ``_reduced_tail`` for a V3 backbone with the reduced tail (V3 section 6.2)."""
        suffix = "_reduced_tail" if self.backbone.reduced_tail else ""
        return f"{self.arch}_{format_alpha(self.alpha)}_{self.resolution}{suffix}"

    def replace(self, **changes) -> DetectionConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DetectionConfig:
        return cls(**backbone_config_fields(cls, data, "detection"))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def extra_width(depth: float, alpha: float) -> int:
    """Channels of an extra layer: TF's depth_fn, ``max(int(depth * alpha), 16)``."""
    return max(int(depth * alpha), EXTRA_MIN_DEPTH)


# --- Resolved records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureMap:
    """One map the heads read: where it comes from, its shape, and its default boxes."""

    index: int
    source: str  # module path that produces it: "backbone.blocks.13.act1", "extras.0"
    tap: str | None  # the backbone FeatureTap name for maps 0 and 1, else None
    channels: int
    size: int  # side of the square map at the config's resolution
    stride: int  # nominal output stride (the sizes round up, so size * stride >= resolution)
    shapes: tuple[BoxShape, ...]  # (scale, aspect ratio) of each anchor type, in output order

    @property
    def num_anchors(self) -> int:
        """Default boxes per location."""
        return len(self.shapes)

    @property
    def num_boxes(self) -> int:
        return self.size * self.size * self.num_anchors


@dataclass(frozen=True)
class DetectionSpec:
    """A resolved detector. ``blocks`` are in the order forward runs them, with module paths as
    names (``backbone.blocks.13``, ``extras.0``, ``box_heads.0``, ``class_heads.0``); ``backbone``
    is the classification backbone's own spec, with names relative to the backbone."""

    config: DetectionConfig
    backbone: NetSpec
    blocks: tuple[BlockSpec, ...]
    maps: tuple[FeatureMap, ...]

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for block in self.blocks for layer in block.layers)

    def blocks_of(self, kind: str) -> tuple[BlockSpec, ...]:
        if kind not in DETECTION_KINDS:
            raise MobileNetsError(f"kind must be one of {', '.join(DETECTION_KINDS)}, got {kind!r}")
        return tuple(block for block in self.blocks if block.kind == kind)

    @property
    def extras(self) -> tuple[BlockSpec, ...]:
        return self.blocks_of("extra_layer")

    @property
    def box_heads(self) -> tuple[BlockSpec, ...]:
        return self.blocks_of("box_head")

    @property
    def class_heads(self) -> tuple[BlockSpec, ...]:
        return self.blocks_of("class_head")

    @property
    def num_boxes(self) -> int:
        """A: default boxes over all maps, the second dimension of the outputs."""
        return sum(feature_map.num_boxes for feature_map in self.maps)

    def default_boxes(self, *, clip: bool = False, dtype=torch.float32) -> torch.Tensor:
        """``[A, 4]`` (cx, cy, w, h) in [0, 1], in the order of the heads' outputs."""
        return default_boxes(
            [m.size for m in self.maps], [m.shapes for m in self.maps], clip=clip, dtype=dtype
        )


def _conv(
    name, kind, in_channels, out_channels, kernel, stride, in_size, *, groups=1, head=False
) -> LayerSpec:
    """A conv with BN and ReLU6, or, for a head's last 1x1 (head=True), with bias and linear."""
    return LayerSpec(
        name=name,
        kind=kind,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel=kernel,
        stride=stride,
        groups=groups,
        in_size=in_size,
        out_size=conv_out_size(in_size, stride),
        bias=head,
        norm=not head,
        act=not head,
    )


def _extra_layer(name: str, depth: int, channels: int, size: int, alpha: float, out_stride: int):
    """1x1 to d/2, then the 3x3 stride-2 depthwise separable conv to d (TF use_depthwise)."""
    reduced, out = extra_width(depth / 2, alpha), extra_width(depth, alpha)
    reduce = _conv(f"{name}.conv_reduce", "pointwise", channels, reduced, 1, 1, size)
    depthwise = _conv(
        f"{name}.conv_dw", "depthwise", reduced, reduced, DEPTHWISE_KERNEL, 2, size, groups=reduced
    )
    pointwise = _conv(f"{name}.conv_pw", "pointwise", reduced, out, 1, 1, depthwise.out_size)
    return BlockSpec(name, "extra_layer", (reduce, depthwise, pointwise), False, 1, out_stride)


def _head(name: str, kind: str, feature_map: FeatureMap, outputs_per_anchor: int) -> BlockSpec:
    """SSDLite head: the SSD head's 3x3 conv made depthwise separable (V2 section 6.2)."""
    channels, size = feature_map.channels, feature_map.size
    depthwise = _conv(
        f"{name}.conv_dw",
        "depthwise",
        channels,
        channels,
        DEPTHWISE_KERNEL,
        1,
        size,
        groups=channels,
    )
    out = feature_map.num_anchors * outputs_per_anchor
    pointwise = _conv(f"{name}.conv_pw", "pointwise", channels, out, 1, 1, size, head=True)
    return BlockSpec(name, kind, (depthwise, pointwise), False, 1, feature_map.stride)


def resolve_detection(config: DetectionConfig) -> DetectionSpec:
    """Resolve a detection config into one record per block, layer and feature map. Pure."""
    backbone = resolve(config.backbone)
    features = backbone.feature_blocks
    # Maps 0 and 1: the taps the backbone's family names for them (V2: the "layer 15"
    # expansion at output stride 16 and the 1x1 conv to 1280).
    first, second = (
        backbone.tap(tap.name) for tap in head_taps(config.backbone, DETECTION_TAPS, "SSDLite")
    )
    shapes = box_shapes(
        config.aspect_ratios, config.min_scale, config.max_scale, config.lowest_scale
    )
    maps = [
        FeatureMap(
            0,
            f"backbone.{first.module}",
            first.name,
            first.channels,
            first.size,
            first.stride,
            shapes[0],
        ),
        FeatureMap(
            1,
            f"backbone.{second.module}",
            second.name,
            second.channels,
            second.size,
            second.stride,
            shapes[1],
        ),
    ]
    blocks = [prefixed(block, "backbone") for block in features]
    channels, size, stride = second.channels, second.size, second.stride
    for index, depth in enumerate(config.extra_depths):
        stride *= 2
        block = _extra_layer(f"extras.{index}", depth, channels, size, config.alpha, stride)
        blocks.append(block)
        channels, size = block.out_channels, block.out_size
        maps.append(
            FeatureMap(index + 2, block.name, None, channels, size, stride, shapes[index + 2])
        )
    for feature_map in maps:
        k = feature_map.index
        blocks.append(_head(f"box_heads.{k}", "box_head", feature_map, BOX_CODE_SIZE))
        blocks.append(_head(f"class_heads.{k}", "class_head", feature_map, config.num_classes))
    return DetectionSpec(config, backbone, tuple(blocks), tuple(maps))
