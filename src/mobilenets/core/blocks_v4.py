"""The blocks MobileNetV4 is built of, each from its records in a resolved NetSpec.

- [`FusedIB`][mobilenets.core.blocks_v4.FusedIB]: a full k x k conv to the expansion, then a
  linear 1x1 projection (the first block of Conv-M/L and the hybrids).
- [`UniversalInvertedBottleneck`][mobilenets.core.blocks_v4.UniversalInvertedBottleneck]: paper
  Figure 4, with its optional start and middle depthwise convs (IB, ConvNext-like, ExtraDW, FFN).
- [`MobileMQA`][mobilenets.core.blocks_v4.MobileMQA]: section 4.1's multi-query attention with
  keys and values reduced by a stride-2 depthwise conv, for the hybrids.
- [`LayerScale`][mobilenets.core.blocks_v4.LayerScale]: the hybrids' per-channel output scale.
- [`PreLogitsBN`][mobilenets.core.blocks_v4.PreLogitsBN]: the 1280 layer after the pool, no bias,
  BN and the nonlinearity.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilenets.core.blocks import make_act, make_bn, make_conv
from mobilenets.core.families import get_family
from mobilenets.core.spec import BlockSpec, LayerSpec, ModelConfig


def _named(spec: BlockSpec) -> dict[str, LayerSpec]:
    return {layer.name.rsplit(".", 1)[-1]: layer for layer in spec.layers}


class LayerScale(nn.Module):
    """x times one learned factor per channel (initially the family's ``layer_scale``, 1e-5)."""

    def __init__(self, layer: LayerSpec, init: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((layer.out_channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


def _layer_scale(layers: dict[str, LayerSpec], config: ModelConfig) -> LayerScale | None:
    if "layer_scale" not in layers:
        return None
    return LayerScale(layers["layer_scale"], get_family(config.arch).layer_scale)


class FusedIB(nn.Module):
    """conv_exp (k x k, stride) + bn1 + act1, conv_pwl (1x1) + bn2, residual where the spec has
    one."""

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        layers = _named(spec)
        self.conv_exp = make_conv(layers["conv_exp"], config.padding)
        self.bn1 = make_bn(layers["conv_exp"], config)
        self.act1 = make_act(layers["conv_exp"])
        self.conv_pwl = make_conv(layers["conv_pwl"], config.padding)
        self.bn2 = make_bn(layers["conv_pwl"], config)
        self.use_residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pwl(self.act1(self.bn1(self.conv_exp(x)))))
        return y + x if self.use_residual else y


class UniversalInvertedBottleneck(nn.Module):
    """[conv_dw_start + bn_start], conv_pw + bn1 + act1, [conv_dw + bn2 + act2], conv_pwl + bn3,
    [layer_scale], residual. Absent parts are None and have no checkpoint keys."""

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        layers = _named(spec)
        self.conv_dw_start = self.bn_start = None
        if "conv_dw_start" in layers:
            self.conv_dw_start = make_conv(layers["conv_dw_start"], config.padding)
            self.bn_start = make_bn(layers["conv_dw_start"], config)
        self.conv_pw = make_conv(layers["conv_pw"], config.padding)
        self.bn1 = make_bn(layers["conv_pw"], config)
        self.act1 = make_act(layers["conv_pw"])
        self.conv_dw = self.bn2 = self.act2 = None
        if "conv_dw" in layers:
            self.conv_dw = make_conv(layers["conv_dw"], config.padding)
            self.bn2 = make_bn(layers["conv_dw"], config)
            self.act2 = make_act(layers["conv_dw"])
        self.conv_pwl = make_conv(layers["conv_pwl"], config.padding)
        self.bn3 = make_bn(layers["conv_pwl"], config)
        self.layer_scale = _layer_scale(layers, config)
        self.use_residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.conv_dw_start is not None:
            y = self.bn_start(self.conv_dw_start(y))
        y = self.act1(self.bn1(self.conv_pw(y)))
        if self.conv_dw is not None:
            y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        return y + x if self.use_residual else y


class MobileMQA(nn.Module):
    """Mobile MQA: ``norm`` (BN) on the input; ``query`` (1x1 to heads x d), ``key`` and
    ``value`` (1x1 to d, one head shared by all query heads), each of the two after
    ``key_down``/``value_down`` (stride-2 depthwise) + ``key_norm``/``value_norm`` where the row
    reduces them; softmax(q k^T / sqrt(d)) v per head; ``output`` (1x1); ``layer_scale``;
    residual. The projections have no bias.

    The attention is two plain matrix products and a softmax (not a fused kernel), so every
    export path sees the same graph and torch's FLOP counter counts it.
    """

    OWN_INIT = True  # init_weights calls reset_parameters after the defaults

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        layers = _named(spec)
        self.norm = make_bn(layers["norm"], config)
        self.query = make_conv(layers["query"], config.padding)
        for branch in ("key", "value"):
            down = layers.get(f"{branch}_down")
            setattr(
                self, f"{branch}_down", None if down is None else make_conv(down, config.padding)
            )
            setattr(self, f"{branch}_norm", None if down is None else make_bn(down, config))
            setattr(self, branch, make_conv(layers[branch], config.padding))
        self.output = make_conv(layers["output"], config.padding)
        self.key_dim = layers["key"].out_channels
        self.heads = layers["query"].out_channels // self.key_dim
        self.scale = self.key_dim**-0.5
        self.layer_scale = _layer_scale(layers, config)
        self.use_residual = spec.residual

    def reset_parameters(self) -> None:
        """Xavier-uniform projections and reductions, as the reference code initializes them
        (He init, which the convs elsewhere get, made the hybrids' training unstable there)."""
        for conv in (self.query, self.key, self.value, self.output, self.key_down, self.value_down):
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        y = self.norm(x)
        keys, values = y, y
        if self.key_down is not None:
            keys = self.key_norm(self.key_down(y))
            values = self.value_norm(self.value_down(y))
        # One key/value head serves every query head, so the heads' queries stack into one
        # (batch, heads * queries, d) matrix against (batch, d, keys): two plain bmm calls with no
        # head axis to broadcast. XNNPACK has no broadcasting matmul: an expand of K and V to every
        # head (or torch.matmul's own expands) would run outside the delegate and split the program.
        q = self.query(y).reshape(batch, self.heads, self.key_dim, -1).transpose(-1, -2)
        q = q.reshape(batch, -1, self.key_dim)
        k = self.key(keys).flatten(2)
        v = self.value(values).flatten(2).transpose(-1, -2)
        weights = torch.softmax(torch.bmm(q * self.scale, k), dim=-1)
        out = torch.bmm(weights, v).reshape(batch, self.heads, -1, self.key_dim)
        out = out.transpose(-1, -2).reshape(batch, -1, height, width)
        out = self.output(out)
        if self.layer_scale is not None:
            out = self.layer_scale(out)
        return out + x if self.use_residual else out


class PreLogitsBN(nn.Module):
    """V4's 1x1 layer after the pool: ``fc`` (no bias), ``bn``, the nonlinearity."""

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        (layer,) = spec.layers
        self.fc = nn.Linear(layer.in_channels, layer.out_channels, bias=False)
        self.bn = nn.BatchNorm1d(layer.out_channels, eps=config.bn_eps, momentum=config.bn_momentum)
        self.act = make_act(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.fc(x)))


V4_BLOCK_CLASSES = {
    "fused_ib": FusedIB,
    "universal_ib": UniversalInvertedBottleneck,
    "mobile_mqa": MobileMQA,
}
