"""The records a resolved network is made of: one per layer and per block, the named feature
taps, and the whole network (``NetSpec``), as [`resolve`][mobilenets.core.spec.resolve] writes
them and the builder, the cost model and the task heads read them."""

from __future__ import annotations

import math
from dataclasses import dataclass

# squeeze_excite: the two 1x1 convs of a V3 SE module, on the pooled (1x1) tensor. V4's Mobile MQA
# adds three kinds without a weight tensor: "norm", a BN on its own (before the attention);
# "attention", the two matrix products of multi-query attention (queries times keys, weights
# times values); "scale", the per-channel layer scale on a hybrid block's output.
LAYER_KINDS = (
    "conv",
    "depthwise",
    "pointwise",
    "squeeze_excite",
    "linear",
    "norm",
    "attention",
    "scale",
)
# what follows a layer whose ``act`` is True: V1/V2's ReLU6, V3's ReLU and h-swish, and the hard
# sigmoid gate of V3's SE (relu6(x + 3) / 6); the sigmoid of LR-ASPP's gate (V3 Figure 10); the
# GELU of V4-Hybrid-L
ACTIVATIONS = ("relu6", "relu", "hardswish", "hardsigmoid", "sigmoid", "gelu")


@dataclass(frozen=True)
class LayerSpec:
    """One convolution or linear layer, with its BN and activation.

    ``name`` is the module path, so ``f"{name}.weight"`` is the checkpoint key. Sizes are the
    side of the square feature map at the config's nominal resolution (1 for the classifier).
    """

    name: str
    kind: str  # one of LAYER_KINDS
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_size: int
    out_size: int
    bias: bool
    norm: bool  # followed by BatchNorm (affine)
    act: bool  # followed by its activation; False for V2's linear bottleneck and the classifier
    dilation: int = 1  # atrous rate (output_stride); the size and the MACs do not change
    activation: str = "relu6"  # one of ACTIVATIONS, when act
    # "attention" only: the side of the key/value map (the query map's side, or less where a
    # stride-2 conv reduced the keys and values). in_channels are the queries' (heads x key
    # dim), out_channels the values' (heads x value dim) over all heads.
    kv_size: int = 0
    heads: int = 1  # "attention" only: the query heads (one key and value head serves them all)

    @property
    def weights(self) -> int:
        """Elements of the weight tensor alone (what V1 Table 2 counts); a layer scale's one
        factor per channel."""
        if self.kind in ("norm", "attention"):
            return 0
        return self.out_channels * (self.in_channels // self.groups) * self.kernel * self.kernel

    @property
    def params(self) -> int:
        """Trainable parameters: weight, bias, and the BN scale and shift."""
        return self.weights + self.bias * self.out_channels + self.norm * 2 * self.out_channels

    @property
    def macs(self) -> int:
        """Multiply-adds: one per weight per output position (bias, BN and ReLU not counted).
        Attention: each query position against each key position, once for the logits (key dim)
        and once for the weighted values (value dim), in every head. A layer scale's products
        are elementwise, not counted (as BN's)."""
        if self.kind == "attention":
            pairs = self.out_size**2 * self.kv_size**2
            return pairs * (self.in_channels + self.out_channels)
        if self.kind == "scale":
            return 0
        return self.weights * self.out_size * self.out_size

    @property
    def out_elements(self) -> int:
        return self.out_channels * self.out_size * self.out_size


BLOCK_KINDS = (
    "conv",
    "depthwise_separable",
    "inverted_residual",
    "fused_ib",  # V4
    "universal_ib",  # V4
    "mobile_mqa",  # V4-Hybrid
    "pre_logits",
    "classifier",
)


@dataclass(frozen=True)
class BlockSpec:
    """One block: the stem, a V1 separable block, a V2 inverted residual or V3 bneck, a V4 fused
    IB, UIB or Mobile MQA, the head, V3's and V4's pre-logits layer, or the classifier."""

    name: str  # module path: "stem", "blocks.3", "head", "classifier"
    kind: str  # one of BLOCK_KINDS
    layers: tuple[LayerSpec, ...]
    residual: bool  # V2: stride 1 and equal channels in and out (section 3.3)
    expansion: float  # expanded over input width (V2's t, V3's exp / in); 1 without expansion
    out_stride: int  # output stride of this block's output relative to the input image

    @property
    def in_channels(self) -> int:
        return self.layers[0].in_channels

    @property
    def out_channels(self) -> int:
        return self.layers[-1].out_channels

    @property
    def stride(self) -> int:
        """The block's stride (a Mobile MQA's stride-2 reduction of keys and values is not one:
        its output keeps the input's size)."""
        if self.kind == "mobile_mqa":
            return 1
        return math.prod(layer.stride for layer in self.layers)

    @property
    def in_size(self) -> int:
        return self.layers[0].in_size

    @property
    def out_size(self) -> int:
        return self.layers[-1].out_size

    @property
    def level(self) -> int:
        """Feature level k of the output (output stride 2**k), the C_k of detection papers."""
        return int(math.log2(self.out_stride))


@dataclass(frozen=True)
class FeatureTap:
    """A named intermediate output: where it is, and its channels and stride."""

    name: str  # "C1".."C5", or "C4_expansion" for the expansion inside the next stage's first block
    module: str  # module path that produces it, e.g. "blocks.12" or "blocks.13.act1"
    block: int  # index into NetSpec.blocks
    channels: int
    stride: int
    size: int  # spatial side at the nominal resolution
