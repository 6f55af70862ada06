"""The papers' architecture tables as data, and the registry of backbone families.

V1 Table 1 (Howard et al. 2017), V2 Table 2 (Sandler et al. 2018), V3 Tables 1 and 2 (Howard et
al. 2019, "Searching for MobileNetV3") and the five MobileNetV4 models (Qin et al. 2024, Tables
11-15 as the reference code builds them) appear below as typed rows in the papers' notation. A
[`Family`][mobilenets.core.families.Family] is a table, its channel rule (alpha, V1 section 3.3, is
applied through it and nowhere else) and the named feature taps the task heads read (``HEAD_TAPS``);
[`register_family`][mobilenets.core.families.register_family] adds one, and
``mobilenets.core.spec.resolve`` decodes every family's table the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mobilenets.core.errors import MobileNetsError

# --- Paper rows --------------------------------------------------------------------------------


# The nonlinearities of V3 Tables 1 and 2 (column NL), ReLU6 of V1 and V2, and the GELU of
# MobileNetV4-Hybrid-L.
NONLINEARITIES = {"RE6": "relu6", "RE": "relu", "HS": "hardswish", "GE": "gelu"}


@dataclass(frozen=True)
class Conv:
    """A full convolution with BN and a nonlinearity: the stem (k=3, s=2) or the last 1x1 conv
    before the pool (V2's 1280, V3's 960 and 576)."""

    c: int
    k: int = 3
    s: int = 1
    nl: str = "RE6"


@dataclass(frozen=True)
class Bneck:
    """V3 Tables 1 and 2 row: "bneck, k x k" with exp size, #out, SE, NL and s, one block.

    ``exp`` is the paper's absolute expansion width at alpha 1; how alpha scales it is the
    family's width rule (see ``v3_expanded_width``). The expansion layer is absent when ``exp``
    equals the block's input channels (the first row of both tables).
    """

    k: int
    exp: int
    c: int
    se: bool
    nl: str
    s: int


@dataclass(frozen=True)
class ConvNBN:
    """V3's "conv2d 1x1, NBN" row after the pool: a 1x1 conv with bias and no BN (the pre-logits
    layer, 1280 or 1024 wide). The classifier row after it is added by resolve()."""

    c: int
    nl: str = "HS"


@dataclass(frozen=True)
class ConvBN:
    """V4's 1x1 conv after the pool (1280 wide): no bias, BN and the nonlinearity, where V3's
    ``ConvNBN`` has a bias and no BN. Its width does not scale with alpha."""

    c: int
    nl: str = "RE"


@dataclass(frozen=True)
class FusedIB:
    """V4's fused inverted bottleneck (the "FusedIB" rows): a full k x k conv at stride s to
    ``e`` times the input width with BN and the nonlinearity, then a linear 1x1 projection to c."""

    k: int
    e: float
    c: int
    s: int
    nl: str = "RE"


@dataclass(frozen=True)
class UIB:
    """V4's Universal Inverted Bottleneck row (paper Figure 4), ``n`` blocks: an optional
    depthwise conv of kernel ``start`` before the expansion (BN, no nonlinearity), the 1x1
    expansion to ``e`` times the input width, an optional depthwise conv of kernel ``mid`` after
    it, the linear 1x1 projection to c. 0 means absent. The first block's stride s is on the
    middle depthwise conv where there is one, else on the start one. The four instantiations:
    IB (start 0, mid k), ConvNext-like (start k, mid 0), ExtraDW (both), FFN (neither)."""

    start: int
    mid: int
    e: float
    c: int
    s: int = 1
    n: int = 1
    nl: str = "RE"

    @property
    def instantiation(self) -> str:
        names = {(False, True): "IB", (True, False): "ConvNext", (True, True): "ExtraDW"}
        return names.get((bool(self.start), bool(self.mid)), "FFN")


@dataclass(frozen=True)
class MQA:
    """V4's Mobile MQA row (section 4.1): multi-query attention with ``heads`` query heads of
    ``key_dim`` channels and one shared key and value head of ``key_dim``; where ``kv_stride`` is
    2, keys and values are first reduced by a stride-2 k x k depthwise conv with BN. BN on the
    input, layer scale on the output, a residual around it all. The output has c channels."""

    heads: int
    key_dim: int
    c: int
    kv_stride: int = 1
    k: int = 3
    s: int = 1


@dataclass(frozen=True)
class DW:
    """V1 Table 1 row pair: 3x3 depthwise conv with stride s, then a 1x1 conv to c; n repeats."""

    s: int
    c: int
    n: int = 1


@dataclass(frozen=True)
class IR:
    """V2 Table 2 row: n inverted residual blocks, expansion t, c outputs, first stride s."""

    t: int
    c: int
    n: int
    s: int


# V1 Table 1. The classifier row (avg pool 7x7, FC 1024x1000) is added by resolve().
V1_TABLE = (
    Conv(c=32, k=3, s=2),  # 224x224x3 in, stem
    DW(s=1, c=64),  # 112x112x32 in, C1
    DW(s=2, c=128),  # 112x112x64 in, C2
    DW(s=1, c=128),  # 56x56x128 in, C2
    DW(s=2, c=256),  # 56x56x128 in, C3
    DW(s=1, c=256),  # 28x28x256 in, C3
    DW(s=2, c=512),  # 28x28x256 in, C4
    DW(s=1, c=512, n=5),  # 14x14x512 in, C4: the table's "5x" row
    DW(s=2, c=1024),  # 14x14x512 in, C5
    DW(s=1, c=1024),  # 7x7x1024 in, C5: Table 1 prints s2; every released model uses s1
)

# V2 Table 2. The last row (conv2d 1x1 to k classes after the pool) is added by resolve().
V2_TABLE = (
    Conv(c=32, k=3, s=2),  # 224x224x3 in, stem
    IR(t=1, c=16, n=1, s=1),  # 112x112x32 in, C1
    IR(t=6, c=24, n=2, s=2),  # 112x112x16 in, C2
    IR(t=6, c=32, n=3, s=2),  # 56x56x24 in, C3
    IR(t=6, c=64, n=4, s=2),  # 28x28x32 in, C4
    IR(t=6, c=96, n=3, s=1),  # 14x14x64 in, C4
    IR(t=6, c=160, n=3, s=2),  # 14x14x96 in, C5
    IR(t=6, c=320, n=1, s=1),  # 7x7x160 in, C5
    Conv(c=1280, k=1, s=1),  # 7x7x320 in, C5: the head conv
)

# V3 Table 1: MobileNetV3-Large. SE: squeeze-and-excite; NL: RE = ReLU, HS = h-swish.
V3_LARGE_TABLE = (
    Conv(c=16, k=3, s=2, nl="HS"),  # 224x224x3 in, stem
    Bneck(k=3, exp=16, c=16, se=False, nl="RE", s=1),  # 112x112x16 in, C1
    Bneck(k=3, exp=64, c=24, se=False, nl="RE", s=2),  # 112x112x16 in, C2
    Bneck(k=3, exp=72, c=24, se=False, nl="RE", s=1),  # 56x56x24 in, C2
    Bneck(k=5, exp=72, c=40, se=True, nl="RE", s=2),  # 56x56x24 in, C3
    Bneck(k=5, exp=120, c=40, se=True, nl="RE", s=1),  # 28x28x40 in, C3
    Bneck(k=5, exp=120, c=40, se=True, nl="RE", s=1),  # 28x28x40 in, C3
    Bneck(k=3, exp=240, c=80, se=False, nl="HS", s=2),  # 28x28x40 in, C4
    Bneck(k=3, exp=200, c=80, se=False, nl="HS", s=1),  # 14x14x80 in, C4
    Bneck(k=3, exp=184, c=80, se=False, nl="HS", s=1),  # 14x14x80 in, C4
    Bneck(k=3, exp=184, c=80, se=False, nl="HS", s=1),  # 14x14x80 in, C4
    Bneck(k=3, exp=480, c=112, se=True, nl="HS", s=1),  # 14x14x80 in, C4
    Bneck(k=3, exp=672, c=112, se=True, nl="HS", s=1),  # 14x14x112 in, C4
    Bneck(k=5, exp=672, c=160, se=True, nl="HS", s=2),  # 14x14x112 in, C5
    Bneck(k=5, exp=960, c=160, se=True, nl="HS", s=1),  # 7x7x160 in, C5
    Bneck(k=5, exp=960, c=160, se=True, nl="HS", s=1),  # 7x7x160 in, C5
    Conv(c=960, k=1, s=1, nl="HS"),  # 7x7x160 in, C5: the head conv
    ConvNBN(c=1280, nl="HS"),  # 1x1x960 in, after the 7x7 pool
)

# V3 Table 2: MobileNetV3-Small. The table marks SE on the last 1x1 conv (576); no released
# model (TF-slim, Keras, torchvision, timm) has it, and the weights need it absent.
V3_SMALL_TABLE = (
    Conv(c=16, k=3, s=2, nl="HS"),  # 224x224x3 in, stem
    Bneck(k=3, exp=16, c=16, se=True, nl="RE", s=2),  # 112x112x16 in, C2
    Bneck(k=3, exp=72, c=24, se=False, nl="RE", s=2),  # 56x56x16 in, C3
    Bneck(k=3, exp=88, c=24, se=False, nl="RE", s=1),  # 28x28x24 in, C3
    Bneck(k=5, exp=96, c=40, se=True, nl="HS", s=2),  # 28x28x24 in, C4
    Bneck(k=5, exp=240, c=40, se=True, nl="HS", s=1),  # 14x14x40 in, C4
    Bneck(k=5, exp=240, c=40, se=True, nl="HS", s=1),  # 14x14x40 in, C4
    Bneck(k=5, exp=120, c=48, se=True, nl="HS", s=1),  # 14x14x40 in, C4
    Bneck(k=5, exp=144, c=48, se=True, nl="HS", s=1),  # 14x14x48 in, C4
    Bneck(k=5, exp=288, c=96, se=True, nl="HS", s=2),  # 14x14x48 in, C5
    Bneck(k=5, exp=576, c=96, se=True, nl="HS", s=1),  # 7x7x96 in, C5
    Bneck(k=5, exp=576, c=96, se=True, nl="HS", s=1),  # 7x7x96 in, C5
    Conv(c=576, k=1, s=1, nl="HS"),  # 7x7x96 in, C5: the head conv (no SE, see above)
    ConvNBN(c=1024, nl="HS"),  # 1x1x576 in, after the 7x7 pool
)

# MobileNetV4, as the reference code (TF Model Garden, official/vision/modeling/backbones/
# mobilenet.py) builds it; timm's mobilenetv4_* match it and hold the only public weights. The
# paper's appendix tables (Tables 11-15) list the same rows. Every row's nonlinearity is ReLU
# (GELU for Hybrid-L, see _with_nl); the last Conv row (960) is the head conv, the ConvBN row the
# 1280 layer after the pool.
V4_CONV_SMALL_TABLE = (
    Conv(c=32, k=3, s=2, nl="RE"),  # 224x224x3 in, stem
    Conv(c=32, k=3, s=2, nl="RE"),  # 112x112x32 in, C2
    Conv(c=32, k=1, s=1, nl="RE"),  # 56x56x32 in, C2
    Conv(c=96, k=3, s=2, nl="RE"),  # 56x56x32 in, C3
    Conv(c=64, k=1, s=1, nl="RE"),  # 28x28x96 in, C3
    UIB(start=5, mid=5, e=3, c=96, s=2),  # 28x28x64 in, C4: ExtraDW
    UIB(start=0, mid=3, e=2, c=96, n=4),  # 14x14x96 in, C4: IB
    UIB(start=3, mid=0, e=4, c=96),  # 14x14x96 in, C4: ConvNext
    UIB(start=3, mid=3, e=6, c=128, s=2),  # 14x14x96 in, C5: ExtraDW
    UIB(start=5, mid=5, e=4, c=128),  # 7x7x128 in, C5: ExtraDW
    UIB(start=0, mid=5, e=4, c=128),  # 7x7x128 in, C5: IB
    UIB(start=0, mid=5, e=3, c=128),  # 7x7x128 in, C5: IB
    UIB(start=0, mid=3, e=4, c=128, n=2),  # 7x7x128 in, C5: IB
    Conv(c=960, k=1, s=1, nl="RE"),  # 7x7x128 in, C5: the head conv
    ConvBN(c=1280),  # 1x1x960 in, after the pool
)

V4_CONV_MEDIUM_TABLE = (
    Conv(c=32, k=3, s=2, nl="RE"),  # 256x256x3 in, stem
    FusedIB(k=3, e=4, c=48, s=2),  # 128x128x32 in, C2
    UIB(start=3, mid=5, e=4, c=80, s=2),  # 64x64x48 in, C3: ExtraDW
    UIB(start=3, mid=3, e=2, c=80),  # 32x32x80 in, C3: ExtraDW
    UIB(start=3, mid=5, e=6, c=160, s=2),  # 32x32x80 in, C4: ExtraDW
    UIB(start=3, mid=3, e=4, c=160, n=2),  # 16x16x160 in, C4: ExtraDW
    UIB(start=3, mid=5, e=4, c=160),  # 16x16x160 in, C4: ExtraDW
    UIB(start=3, mid=3, e=4, c=160),  # 16x16x160 in, C4: ExtraDW
    UIB(start=3, mid=0, e=4, c=160),  # 16x16x160 in, C4: ConvNext
    UIB(start=0, mid=0, e=2, c=160),  # 16x16x160 in, C4: FFN
    UIB(start=3, mid=0, e=4, c=160),  # 16x16x160 in, C4: ConvNext
    UIB(start=5, mid=5, e=6, c=256, s=2),  # 16x16x160 in, C5: ExtraDW
    UIB(start=5, mid=5, e=4, c=256),  # 8x8x256 in, C5: ExtraDW
    UIB(start=3, mid=5, e=4, c=256, n=2),  # 8x8x256 in, C5: ExtraDW
    UIB(start=0, mid=0, e=4, c=256),  # 8x8x256 in, C5: FFN
    UIB(start=3, mid=0, e=4, c=256),  # 8x8x256 in, C5: ConvNext
    UIB(start=3, mid=5, e=2, c=256),  # 8x8x256 in, C5: ExtraDW
    UIB(start=5, mid=5, e=4, c=256),  # 8x8x256 in, C5: ExtraDW
    UIB(start=0, mid=0, e=4, c=256, n=2),  # 8x8x256 in, C5: FFN
    UIB(start=5, mid=0, e=2, c=256),  # 8x8x256 in, C5: ConvNext
    Conv(c=960, k=1, s=1, nl="RE"),  # 8x8x256 in, C5: the head conv
    ConvBN(c=1280),  # 1x1x960 in, after the pool
)

V4_CONV_LARGE_TABLE = (
    Conv(c=24, k=3, s=2, nl="RE"),  # 384x384x3 in, stem
    FusedIB(k=3, e=4, c=48, s=2),  # 192x192x24 in, C2
    UIB(start=3, mid=5, e=4, c=96, s=2),  # 96x96x48 in, C3: ExtraDW
    UIB(start=3, mid=3, e=4, c=96),  # 48x48x96 in, C3: ExtraDW
    UIB(start=3, mid=5, e=4, c=192, s=2),  # 48x48x96 in, C4: ExtraDW
    UIB(start=3, mid=3, e=4, c=192, n=3),  # 24x24x192 in, C4: ExtraDW
    UIB(start=3, mid=5, e=4, c=192),  # 24x24x192 in, C4: ExtraDW
    UIB(start=5, mid=3, e=4, c=192, n=5),  # 24x24x192 in, C4: ExtraDW
    UIB(start=3, mid=0, e=4, c=192),  # 24x24x192 in, C4: ConvNext
    UIB(start=5, mid=5, e=4, c=512, s=2, n=4),  # 24x24x192 in, C5: ExtraDW
    UIB(start=5, mid=0, e=4, c=512),  # 12x12x512 in, C5: ConvNext
    UIB(start=5, mid=3, e=4, c=512),  # 12x12x512 in, C5: ExtraDW
    UIB(start=5, mid=0, e=4, c=512, n=2),  # 12x12x512 in, C5: ConvNext
    UIB(start=5, mid=3, e=4, c=512),  # 12x12x512 in, C5: ExtraDW
    UIB(start=5, mid=5, e=4, c=512),  # 12x12x512 in, C5: ExtraDW
    UIB(start=5, mid=0, e=4, c=512, n=3),  # 12x12x512 in, C5: ConvNext
    Conv(c=960, k=1, s=1, nl="RE"),  # 12x12x512 in, C5: the head conv
    ConvBN(c=1280),  # 1x1x960 in, after the pool
)

V4_HYBRID_MEDIUM_TABLE = (
    Conv(c=32, k=3, s=2, nl="RE"),  # 256x256x3 in, stem
    FusedIB(k=3, e=4, c=48, s=2),  # 128x128x32 in, C2
    UIB(start=3, mid=5, e=4, c=80, s=2),  # 64x64x48 in, C3: ExtraDW
    UIB(start=3, mid=3, e=2, c=80),  # 32x32x80 in, C3: ExtraDW
    UIB(start=3, mid=5, e=6, c=160, s=2),  # 32x32x80 in, C4: ExtraDW
    UIB(start=0, mid=0, e=2, c=160),  # 16x16x160 in, C4: FFN
    UIB(start=3, mid=3, e=4, c=160),  # 16x16x160 in, C4: ExtraDW
    UIB(start=3, mid=5, e=4, c=160),  # 16x16x160 in, C4: ExtraDW
    MQA(heads=4, key_dim=64, c=160, kv_stride=2),  # 16x16x160 in, C4
    UIB(start=3, mid=3, e=4, c=160),  # 16x16x160 in, C4: ExtraDW
    MQA(heads=4, key_dim=64, c=160, kv_stride=2),  # 16x16x160 in, C4
    UIB(start=3, mid=0, e=4, c=160),  # 16x16x160 in, C4: ConvNext
    MQA(heads=4, key_dim=64, c=160, kv_stride=2),  # 16x16x160 in, C4
    UIB(start=3, mid=3, e=4, c=160),  # 16x16x160 in, C4: ExtraDW
    MQA(heads=4, key_dim=64, c=160, kv_stride=2),  # 16x16x160 in, C4
    UIB(start=3, mid=0, e=4, c=160),  # 16x16x160 in, C4: ConvNext
    UIB(start=5, mid=5, e=6, c=256, s=2),  # 16x16x160 in, C5: ExtraDW
    UIB(start=5, mid=5, e=4, c=256),  # 8x8x256 in, C5: ExtraDW
    UIB(start=3, mid=5, e=4, c=256, n=2),  # 8x8x256 in, C5: ExtraDW
    UIB(start=0, mid=0, e=2, c=256),  # 8x8x256 in, C5: FFN
    UIB(start=3, mid=5, e=2, c=256),  # 8x8x256 in, C5: ExtraDW
    UIB(start=0, mid=0, e=2, c=256),  # 8x8x256 in, C5: FFN
    UIB(start=0, mid=0, e=4, c=256),  # 8x8x256 in, C5: FFN
    MQA(heads=4, key_dim=64, c=256),  # 8x8x256 in, C5
    UIB(start=3, mid=0, e=4, c=256),  # 8x8x256 in, C5: ConvNext
    MQA(heads=4, key_dim=64, c=256),  # 8x8x256 in, C5
    UIB(start=5, mid=5, e=4, c=256),  # 8x8x256 in, C5: ExtraDW
    MQA(heads=4, key_dim=64, c=256),  # 8x8x256 in, C5
    UIB(start=5, mid=0, e=4, c=256),  # 8x8x256 in, C5: ConvNext
    MQA(heads=4, key_dim=64, c=256),  # 8x8x256 in, C5
    UIB(start=5, mid=0, e=4, c=256),  # 8x8x256 in, C5: ConvNext
    Conv(c=960, k=1, s=1, nl="RE"),  # 8x8x256 in, C5: the head conv
    ConvBN(c=1280),  # 1x1x960 in, after the pool
)


def _with_nl(table: tuple, nl: str) -> tuple:
    """A table with every row's nonlinearity replaced (Hybrid-L's GELU)."""
    return tuple(dataclasses.replace(row, nl=nl) if hasattr(row, "nl") else row for row in table)


V4_HYBRID_LARGE_TABLE = _with_nl(
    (
        Conv(c=24, k=3, s=2),  # 384x384x3 in, stem
        FusedIB(k=3, e=4, c=48, s=2),  # 192x192x24 in, C2
        UIB(start=3, mid=5, e=4, c=96, s=2),  # 96x96x48 in, C3: ExtraDW
        UIB(start=3, mid=3, e=4, c=96),  # 48x48x96 in, C3: ExtraDW
        UIB(start=3, mid=5, e=4, c=192, s=2),  # 48x48x96 in, C4: ExtraDW
        UIB(start=3, mid=3, e=4, c=192, n=3),  # 24x24x192 in, C4: ExtraDW
        UIB(start=3, mid=5, e=4, c=192),  # 24x24x192 in, C4: ExtraDW
        UIB(start=5, mid=3, e=4, c=192, n=2),  # 24x24x192 in, C4: ExtraDW
        MQA(heads=8, key_dim=48, c=192, kv_stride=2),  # 24x24x192 in, C4
        UIB(start=5, mid=3, e=4, c=192),  # 24x24x192 in, C4: ExtraDW
        MQA(heads=8, key_dim=48, c=192, kv_stride=2),  # 24x24x192 in, C4
        UIB(start=5, mid=3, e=4, c=192),  # 24x24x192 in, C4: ExtraDW
        MQA(heads=8, key_dim=48, c=192, kv_stride=2),  # 24x24x192 in, C4
        UIB(start=5, mid=3, e=4, c=192),  # 24x24x192 in, C4: ExtraDW
        MQA(heads=8, key_dim=48, c=192, kv_stride=2),  # 24x24x192 in, C4
        UIB(start=3, mid=0, e=4, c=192),  # 24x24x192 in, C4: ConvNext
        UIB(start=5, mid=5, e=4, c=512, s=2, n=4),  # 24x24x192 in, C5: ExtraDW
        UIB(start=5, mid=0, e=4, c=512),  # 12x12x512 in, C5: ConvNext
        UIB(start=5, mid=3, e=4, c=512),  # 12x12x512 in, C5: ExtraDW
        UIB(start=5, mid=0, e=4, c=512, n=2),  # 12x12x512 in, C5: ConvNext
        UIB(start=5, mid=3, e=4, c=512),  # 12x12x512 in, C5: ExtraDW
        UIB(start=5, mid=5, e=4, c=512),  # 12x12x512 in, C5: ExtraDW
        MQA(heads=8, key_dim=64, c=512),  # 12x12x512 in, C5
        UIB(start=5, mid=0, e=4, c=512),  # 12x12x512 in, C5: ConvNext
        MQA(heads=8, key_dim=64, c=512),  # 12x12x512 in, C5
        UIB(start=5, mid=0, e=4, c=512),  # 12x12x512 in, C5: ConvNext
        MQA(heads=8, key_dim=64, c=512),  # 12x12x512 in, C5
        UIB(start=5, mid=0, e=4, c=512),  # 12x12x512 in, C5: ConvNext
        MQA(heads=8, key_dim=64, c=512),  # 12x12x512 in, C5
        UIB(start=5, mid=0, e=4, c=512),  # 12x12x512 in, C5: ConvNext
        Conv(c=960, k=1, s=1),  # 12x12x512 in, C5: the head conv
        ConvBN(c=1280),  # 1x1x960 in, after the pool
    ),
    "GE",
)

DEFAULT_EXPANSION = 6  # V2 section 4: "we use expansion factor of 6 throughout"
DEPTHWISE_KERNEL = 3  # every depthwise conv of both papers' tables is 3x3


V4_ROWS = (FusedIB, UIB, MQA)  # a table with one of these is a V4 table
V4_BODY = (Conv, FusedIB, UIB, MQA)  # the rows a V4 table's body may hold

# --- Width rules: how alpha sets each family's channels -----------------------------------------


def v1_width(channels: int, alpha: float) -> int:
    """V1 channel rule as TF-slim and Keras apply it: truncate, never below 8."""
    return max(int(channels * alpha), 8)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of divisor, never below 90% of value (TF-slim V2 rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def v2_width(channels: int, alpha: float) -> int:
    """V2 channel rule: alpha-scaled channels rounded to a multiple of 8."""
    return make_divisible(channels * alpha)


def v2_head_width(channels: int, alpha: float) -> int:
    """V2 keeps its last conv at 1280 channels unless alpha > 1 (paper section 6.1); so do the
    TF stacks for V3's pre-logits layer (1280 or 1024)."""
    return make_divisible(channels * max(1.0, alpha))


# V3 was released by two stacks that apply alpha differently; at alpha 1 they agree, at 0.75 they
# are different networks (torchvision's mobilenet_v3_large(width_mult=0.75) has 3,377,576
# parameters, TF-slim's, Keras's and timm's large 0.75 3,993,528):
# - "tf" (TF-slim, Keras, timm): a block's expansion is its input's scaled channels times the
#   table's ratio exp / input; the stem stays 16 and the pre-logits layer stays 1280 (1024)
#   unless alpha > 1; the head conv is the table's 960 (576) times alpha.
# - "torchvision": every width of the table times alpha (expansion, stem, pre-logits), and the
#   head conv six times the last block's output.
V3_WIDTH_RULES = ("tf", "torchvision")


def v3_stem_width(channels: int, alpha: float, rule: str) -> int:
    if rule == "torchvision":
        return make_divisible(channels * alpha)
    return make_divisible(channels * max(1.0, alpha))


def v3_expanded_width(row: Bneck, in_channels: int, in_scaled: int, alpha: float, rule: str) -> int:
    """The expansion of a bneck row whose unscaled input has ``in_channels``, now ``in_scaled``."""
    if rule == "torchvision":
        return make_divisible(row.exp * alpha)
    return make_divisible(in_scaled * row.exp / in_channels)


def v3_head_width(row: Conv, in_channels: int, in_scaled: int, alpha: float, rule: str) -> int:
    """The 1x1 head conv (960 or 576 at alpha 1) after the last block."""
    if rule == "torchvision":
        return in_scaled * row.c // in_channels
    return make_divisible(row.c * alpha)


def v3_pre_logits_width(row: ConvNBN, alpha: float, rule: str) -> int:
    if rule == "torchvision":
        return make_divisible(row.c * alpha)
    return v2_head_width(row.c, alpha)


def squeeze_width(expanded: int) -> int:
    """The SE bottleneck: a quarter of the expansion, to a multiple of 8 (V3 section 5.3)."""
    return make_divisible(expanded / 4)


# --- Families: a table, a channel rule, and the taps the task heads read ----------------------

# The feature maps the task heads take from a backbone, each a named tap of the plain network
# (no atrous convolution, no small-input variant). A family names the tap that plays each role;
# the heads read only these, so a family that names them works in every task.
HEAD_TAPS = {
    "ssdlite_stride16": "SSDLite's first feature map, at output stride 16",
    "ssdlite_stride32": "SSDLite's second feature map, at output stride 32, before the extras",
    "deeplab_stride8": "the stride-8 features DeepLab's auxiliary head reads",
    "deeplab_features": "the features DeepLab's head reads; the segmenter's backbone ends there",
}


@dataclass(frozen=True)
class Family:
    """A backbone family: its table, how alpha sets its channels, and its head taps.

    ``table`` starts with the stem (a ``Conv`` row), then ``DW``, ``IR`` or ``Bneck`` rows, or V4's
    ``Conv``, ``FusedIB``, ``UIB`` and ``MQA`` rows, and may end with one ``Conv`` row, the 1x1
    "head" conv before the pool, and one ``ConvNBN`` (V3) or ``ConvBN`` (V4) row, the pre-logits
    layer after it. ``stem_width`` sets the stem's channels where the family's rule differs from
    ``width`` (V4 keeps the stem below alpha 1); ``resolution`` is the native input side;
    ``layer_scale`` the initial value of the per-channel output scale of V4-Hybrid's blocks.
    ``width_rules`` names the stacks' width conventions a family of ``Bneck`` rows accepts (the
    first is the default, see ``V3_WIDTH_RULES``). ``taps`` maps each role of
    [`HEAD_TAPS`][mobilenets.core.families.HEAD_TAPS] that the family fills to one of its tap names
    (see [`NetSpec.taps`][mobilenets.core.spec.NetSpec]); a head refuses a family without its roles,
    naming the backbone and the tap.
    """

    arch: str
    table: tuple
    width: Callable[[int, float], int]  # channels of a row for alpha
    head_width: Callable[[int, float], int] | None = None  # the head conv's; None: width
    taps: Mapping[str, str] = field(default_factory=dict)
    dropout: float = 0.2  # the classifier's, as released
    expansion: int | None = None  # the default t of IR rows (t=1 rows stay 1); None: fixed t
    width_rules: tuple[str, ...] = ()  # for Bneck rows: V3_WIDTH_RULES; the first is the default
    stem_width: Callable[[int, float], int] | None = None  # None: width
    resolution: int = 224
    layer_scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise MobileNetsError(f"a family's arch is a non-empty string, got {self.arch!r}")
        table = tuple(self.table) if isinstance(self.table, (list, tuple)) else ()
        if not table or not isinstance(table[0], Conv):
            raise MobileNetsError(
                f"family {self.arch}: the table starts with the stem, a Conv row, got "
                f"{self.table!r}"
            )
        rows = list(table[1:])
        tail = [rows.pop()] if rows and isinstance(rows[-1], (ConvNBN, ConvBN)) else []
        tail[:0] = [rows.pop()] if rows and isinstance(rows[-1], Conv) else []
        body = (DW, IR, Bneck) if not any(isinstance(row, V4_ROWS) for row in rows) else V4_BODY
        if not rows or not all(isinstance(row, body) for row in rows):
            raise MobileNetsError(
                f"family {self.arch}: after the stem, a table holds DW, IR or Bneck rows (or "
                f"V4's Conv, FusedIB, UIB and MQA rows), then at most one Conv row (the head) "
                f"and one ConvNBN or ConvBN row (pre-logits), got {rows + tail!r}"
            )
        has_bneck = any(isinstance(row, Bneck) for row in rows)
        if has_bneck != bool(self.width_rules) or not set(self.width_rules) <= set(V3_WIDTH_RULES):
            raise MobileNetsError(
                f"family {self.arch}: a table of Bneck rows names its width rules (some of "
                f"{', '.join(V3_WIDTH_RULES)}), any other names none; got {self.width_rules!r}"
            )
        nonlinearities = {row.nl for row in table if hasattr(row, "nl")}
        if not nonlinearities <= set(NONLINEARITIES):
            raise MobileNetsError(
                f"family {self.arch}: NL is one of {', '.join(NONLINEARITIES)}, got "
                f"{sorted(nonlinearities - set(NONLINEARITIES))}"
            )
        unknown = sorted(set(self.taps) - set(HEAD_TAPS))
        if unknown:
            raise MobileNetsError(
                f"family {self.arch}: unknown head tap roles {unknown}; allowed: "
                f"{', '.join(HEAD_TAPS)}"
            )
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "width_rules", tuple(self.width_rules))
        object.__setattr__(self, "taps", MappingProxyType(dict(self.taps)))


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family: its arch name then builds, costs and serves in every task."""
    if not isinstance(family, Family):
        raise MobileNetsError(f"register_family takes a Family, got {family!r}")
    if family.arch in _FAMILIES:
        raise MobileNetsError(f"family {family.arch!r} is already registered")
    _FAMILIES[family.arch] = family
    return family


def unregister_family(arch: str) -> None:
    """Remove a family that register_family added (tests register toy ones)."""
    if arch not in _FAMILIES:
        raise MobileNetsError(
            f"no family {arch!r} is registered; registered: {', '.join(_FAMILIES)}"
        )
    del _FAMILIES[arch]


def families() -> tuple[str, ...]:
    """The registered families' arch names, in registration order."""
    return tuple(_FAMILIES)


def get_family(arch: str) -> Family:
    family = _FAMILIES.get(arch) if isinstance(arch, str) else None
    if family is None:
        raise MobileNetsError(f"arch must be one of {', '.join(_FAMILIES)}, got {arch!r}")
    return family


# Classifier dropout as released: TF-slim V1 keeps 0.999 of units; torchvision and TF-slim V2
# drop 0.2. SSDLite on V1 reads Conv2d_11_pointwise and Conv2d_13_pointwise, as TF's
# ssd_mobilenet_v1 feature extractor does; on V2 the "layer 15" expansion and the 1280 conv.
# DeepLab reads V1 to its last separable block and V2 to its last inverted residual (MNet V2*).
register_family(
    Family(
        "mobilenet_v1",
        V1_TABLE,
        v1_width,
        taps={
            "ssdlite_stride16": "C4",
            "ssdlite_stride32": "C5",
            "deeplab_stride8": "C3",
            "deeplab_features": "C5",
        },
        dropout=0.001,
    )
)
register_family(
    Family(
        "mobilenet_v2",
        V2_TABLE,
        v2_width,
        head_width=v2_head_width,
        taps={
            "ssdlite_stride16": "C4_expansion",
            "ssdlite_stride32": "C5",
            "deeplab_stride8": "C3",
            "deeplab_features": "C5_bottleneck",
        },
        dropout=0.2,
        expansion=DEFAULT_EXPANSION,
    )
)

# V3 section 6.2: SSDLite's first layer is the expansion of the 13th bottleneck of Large (the 9th
# of Small), the first block that leaves output stride 16, and its second the last layer of the
# backbone (the head conv), as in torchvision's ssdlite320_mobilenet_v3_large. DeepLab reads C3
# and the head conv, as torchvision's deeplabv3_mobilenet_v3_large.
V3_TAPS = {
    "ssdlite_stride16": "C4_expansion",
    "ssdlite_stride32": "C5",
    "deeplab_stride8": "C3",
    "deeplab_features": "C5",
}
for _arch, _v3_table in (
    ("mobilenet_v3_large", V3_LARGE_TABLE),
    ("mobilenet_v3_small", V3_SMALL_TABLE),
):
    register_family(
        Family(
            _arch,
            _v3_table,
            v2_width,
            taps=V3_TAPS,
            dropout=0.2,
            width_rules=V3_WIDTH_RULES,
        )
    )


def v4_stem_width(channels: int, alpha: float) -> int:
    """V4's stem, as timm builds the width multipliers (and TF-slim V3's): unscaled below
    alpha 1, scaled above."""
    return make_divisible(channels * max(1.0, alpha))


# The task heads read V4 as V3: SSDLite the last block at output stride 16 and the 960 head conv,
# DeepLab the stride-8 features and the head conv (a V4 block has no expansion output to tap on
# its own: its stride is on a depthwise conv between two 1x1 convs, or on a start one).
V4_TAPS = {
    "ssdlite_stride16": "C4",
    "ssdlite_stride32": "C5",
    "deeplab_stride8": "C3",
    "deeplab_features": "C5",
}
# (arch, table, native resolution, layer scale): the five models of the paper's Table 6.
V4_MODELS = (
    ("mobilenet_v4_conv_small", V4_CONV_SMALL_TABLE, 224, None),
    ("mobilenet_v4_conv_medium", V4_CONV_MEDIUM_TABLE, 256, None),
    ("mobilenet_v4_conv_large", V4_CONV_LARGE_TABLE, 384, None),
    ("mobilenet_v4_hybrid_medium", V4_HYBRID_MEDIUM_TABLE, 256, 1e-5),
    ("mobilenet_v4_hybrid_large", V4_HYBRID_LARGE_TABLE, 384, 1e-5),
)
for _arch, _v4_table, _resolution, _layer_scale in V4_MODELS:
    register_family(
        Family(
            _arch,
            _v4_table,
            v2_width,
            stem_width=v4_stem_width,
            taps=V4_TAPS,
            dropout=0.2,
            resolution=_resolution,
            layer_scale=_layer_scale,
        )
    )
