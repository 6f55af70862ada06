"""The blocks MobileNetV1, V2 and V3 are built of, each from its records in a resolved NetSpec.

One block class per paper figure, with named parts that read as the figure and become the
checkpoint keys (``blocks.3.conv_dw.weight``, ``blocks.3.bn1.running_var``):

- [`ConvBNAct`][mobilenets.core.models.ConvBNAct]: a full conv, BN, ReLU6 (the stem, and V2's last
  1x1 "head" conv).
- [`DepthwiseSeparable`][mobilenets.core.models.DepthwiseSeparable]: V1 Figure 3 (right): 3x3
  depthwise, BN, ReLU6, 1x1, BN, ReLU6.
- [`InvertedResidual`][mobilenets.core.models.InvertedResidual]: V2 Table 1 / Figure 3b: 1x1
  expansion with ReLU6, 3x3 depthwise with ReLU6, 1x1 linear projection, and a residual when stride
  is 1 and channels match. V3's bneck (V3 Figure 4) is the same block with the row's kernel and
  nonlinearity and a [`SqueezeExcite`][mobilenets.core.models.SqueezeExcite] after the depthwise.
- [`PreLogits`][mobilenets.core.models.PreLogits]: V3's 1x1 layer with bias and h-swish after the
  pool.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.core.spec import BlockSpec, LayerSpec, ModelConfig


class Conv2dSame(nn.Conv2d):
    """A conv with TensorFlow "SAME" padding: total padding max((ceil(n/s)-1)*s + k - n, 0),
    the odd pixel going to the bottom/right. At stride 2 on an even input that pads only the
    bottom/right, which symmetric padding cannot express; weights trained in TF/Keras need it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def make_conv(layer: LayerSpec, padding: str) -> nn.Conv2d:
    """The conv for one LayerSpec. Stride-1 convs with odd kernels pad the same either way, dilated
    ones too (dilation * (k - 1) / 2 each side keeps the size: atrous layers run at stride 1)."""
    same = padding == "same" and layer.stride > 1
    conv_class = Conv2dSame if same else nn.Conv2d
    return conv_class(
        layer.in_channels,
        layer.out_channels,
        layer.kernel,
        stride=layer.stride,
        padding=0 if same else layer.dilation * (layer.kernel // 2),
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias,
    )


def make_bn(layer: LayerSpec, config: ModelConfig) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(layer.out_channels, eps=config.bn_eps, momentum=config.bn_momentum)


# The modules of LayerSpec.activation. h-swish is x * ReLU6(x + 3) / 6 and the hard sigmoid
# ReLU6(x + 3) / 6 (V3 section 5.2), torch's Hardswish and Hardsigmoid exactly.
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu6": nn.ReLU6,
    "relu": nn.ReLU,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "gelu": nn.GELU,  # exact (erf), as V4-Hybrid-L's reference code
}


def make_act(layer: LayerSpec) -> nn.Module:
    if layer.activation == "gelu":
        return nn.GELU()
    return ACTIVATION_MODULES[layer.activation](inplace=layer.activation != "hardsigmoid")


class SqueezeExcite(nn.Module):
    """V3 section 5.3: global pool, 1x1 to a quarter of the width with ReLU, 1x1 back with a
    hard sigmoid, and the input scaled by the result, channel by channel."""

    def __init__(self, reduce: LayerSpec, expand: LayerSpec) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(reduce.in_channels, reduce.out_channels, 1, bias=True)
        self.act1 = make_act(reduce)
        self.conv_expand = nn.Conv2d(expand.in_channels, expand.out_channels, 1, bias=True)
        self.gate = make_act(expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True)))
        return x * self.gate(self.conv_expand(scale))


class ConvBNAct(nn.Module):
    """Full conv, BN and the layer's nonlinearity: the stem (3x3 s2) and the head (V2's 1x1 to
    1280, V3's to 960). ``activation`` is another class for the heads that use one (DeepLab's
    ReLU)."""

    def __init__(
        self, spec: BlockSpec, config: ModelConfig, activation: type[nn.Module] | None = None
    ) -> None:
        super().__init__()
        (layer,) = spec.layers
        self.conv = make_conv(layer, config.padding)
        self.bn = make_bn(layer, config)
        self.act = make_act(layer) if activation is None else activation(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """V1 Figure 3 (right): 3x3 depthwise, BN, ReLU6, then 1x1 pointwise, BN, ReLU6."""

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        depthwise, pointwise = spec.layers
        self.conv_dw = make_conv(depthwise, config.padding)
        self.bn1 = make_bn(depthwise, config)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_pw = make_conv(pointwise, config.padding)
        self.bn2 = make_bn(pointwise, config)
        self.act2 = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self.act2(self.bn2(self.conv_pw(x)))


class InvertedResidual(nn.Module):
    """V2 Table 1: expand 1x1 + ReLU6, depthwise 3x3 + ReLU6, project 1x1 (linear), residual.

    With expansion t == 1 (the first bottleneck) the expansion layer is absent: ``conv_pw``,
    ``bn1`` and ``act1`` are None, and the checkpoint has no keys for them. V3's bneck (Figure 4)
    takes its kernel and nonlinearity from the spec and adds ``se`` after the depthwise conv
    (None where the row has no SE).
    """

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        layers = {layer.name.rsplit(".", 1)[-1]: layer for layer in spec.layers}
        self.conv_pw = self.bn1 = self.act1 = self.se = None
        if "conv_pw" in layers:
            self.conv_pw = make_conv(layers["conv_pw"], config.padding)
            self.bn1 = make_bn(layers["conv_pw"], config)
            self.act1 = make_act(layers["conv_pw"])
        depthwise = layers["conv_dw"]
        self.conv_dw = make_conv(depthwise, config.padding)
        self.bn2 = make_bn(depthwise, config)
        self.act2 = make_act(depthwise)
        if "conv_reduce" in layers:
            self.se = SqueezeExcite(layers["conv_reduce"], layers["conv_expand"])
        self.conv_pwl = make_conv(layers["conv_pwl"], config.padding)
        self.bn3 = make_bn(layers["conv_pwl"], config)
        self.use_residual = spec.residual

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The expansion output (the tensor SSDLite taps); the input itself when t == 1."""
        if self.conv_pw is None:
            return x
        return self.act1(self.bn1(self.conv_pw(x)))

    def project(self, expanded: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.bn2(self.conv_dw(expanded)))
        if self.se is not None:
            x = self.se(x)
        x = self.bn3(self.conv_pwl(x))
        return x + shortcut if self.use_residual else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.expand(x), x)


class PreLogits(nn.Module):
    """V3's "conv2d 1x1, NBN" after the pool: a linear layer with bias, then h-swish."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        (layer,) = spec.layers
        self.fc = nn.Linear(layer.in_channels, layer.out_channels)
        self.act = make_act(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


BLOCK_CLASSES = {
    "conv": ConvBNAct,
    "depthwise_separable": DepthwiseSeparable,
    "inverted_residual": InvertedResidual,
}


def init_weights(modules: Iterable[nn.Module]) -> None:
    """He init (fan out) for convs, BN as identity, N(0, 0.01) for linear layers; zero biases.
    Then a block with its own rule (``OWN_INIT`` set and a ``reset_parameters``, V4's Mobile
    MQA) applies it."""
    modules = list(modules)
    for module in modules:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in modules:
        if getattr(module, "OWN_INIT", False):
            module.reset_parameters()
