"""The analytic cost model: parameters, multiply-adds and activation memory from the spec alone.

Everything here reads the resolved [`NetSpec`][mobilenets.core.spec.NetSpec]; no model is built and
no forward pass runs, so the cost of a network is known before it exists. The tests hold it equal to
the built model's parameter count and to torch's FLOP counter.

What each figure counts (the published figures count differently, see the README):

- ``params``: trainable parameters, i.e. conv and linear weights, the classifier bias, and BN
  scale and shift (``bn_params`` of them). BN running statistics are buffers and not counted
  (``bn_buffers`` has them). TF-slim's V2 table counts ``params - bn_params`` at 1001 classes.
- ``macs``: multiply-adds of convolutions and the classifier (one per weight per output
  position). BN, ReLU6, the residual adds, the pool and the bias adds are not counted, as in the
  papers.
- ``body_params`` / ``body_macs``: convolution weights alone, no BN and no classifier, the
  figures TF-slim's mobilenet_v1.py docstring gives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mobilenets.core.spec import LayerSpec, NetSpec

ACTIVATION_BYTES = 2  # V2 Table 3 counts activations at 16 bits
KIND_LABELS = {  # V1 Table 2's names for the layer kinds
    "pointwise": "Conv 1x1",
    "depthwise": "Conv DW 3x3",
    "conv": "Conv 3x3",
    "squeeze_excite": "SE 1x1",
    "linear": "Fully Connected",
}


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    out_shape: tuple[int, int, int]
    weights: int  # the weight tensor alone
    params: int  # weights + bias + BN scale and shift
    macs: int
    activation_bytes: int  # the output tensor at 16 bits

    @classmethod
    def of(cls, layer: LayerSpec) -> LayerCost:
        return cls(
            name=layer.name,
            kind=layer.kind,
            in_shape=(layer.in_channels, layer.in_size, layer.in_size),
            out_shape=(layer.out_channels, layer.out_size, layer.out_size),
            weights=layer.weights,
            params=layer.params,
            macs=layer.macs,
            activation_bytes=layer.out_elements * ACTIVATION_BYTES,
        )


@dataclass(frozen=True)
class KindShare:
    """One row of V1 Table 2: a layer kind's share of mult-adds and of weights."""

    kind: str
    label: str
    macs: int
    macs_percent: float
    weights: int
    weights_percent: float


@dataclass(frozen=True)
class CostReport:
    name: str
    arch: str
    alpha: float
    resolution: int
    num_classes: int
    layers: tuple[LayerCost, ...]
    params: int
    macs: int
    body_params: int
    body_macs: int
    bn_params: int  # BN scale and shift, included in params
    bn_buffers: int  # BN running mean and variance, not in params
    peak_activation_bytes: int
    peak_activation_tensor: str  # the layer (or block) whose output sets the peak
    standard_params: int
    standard_macs: int

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    def by_kind(self) -> list[KindShare]:
        """Shares of mult-adds and weights per layer kind, as V1 Table 2 reports them."""
        total_macs, total_weights = self.macs, self.weights
        rows = []
        for kind, label in KIND_LABELS.items():
            macs = sum(layer.macs for layer in self.layers if layer.kind == kind)
            weights = sum(layer.weights for layer in self.layers if layer.kind == kind)
            if macs or weights:
                rows.append(
                    KindShare(
                        kind,
                        label,
                        macs,
                        100 * macs / total_macs,
                        weights,
                        100 * weights / total_weights,
                    )
                )
        return rows

    def to_dict(self, *, by_kind: bool = False) -> dict:
        data = dataclasses.asdict(self)
        data["weights"] = self.weights
        if by_kind:
            data["by_kind"] = [dataclasses.asdict(row) for row in self.by_kind()]
        return data


def separable_pairs(spec: NetSpec) -> list[tuple[LayerSpec, LayerSpec]]:
    """Each depthwise conv with the 1x1 conv that follows it: the depthwise separable
    convolutions that V1 section 3.1 factorizes a standard convolution into (V3's SE between the
    two is not part of the pair)."""
    layers = [layer for layer in spec.layers if layer.kind != "squeeze_excite"]
    return [
        (layer, layers[i + 1])
        for i, layer in enumerate(layers[:-1])
        if layer.kind == "depthwise" and layers[i + 1].kind == "pointwise"
    ]


def standard_counterfactual(spec: NetSpec) -> tuple[int, int]:
    """(params, MACs) of the same network with each depthwise separable convolution (depthwise
    k x k with its following 1x1) replaced by one full k x k conv from the depthwise input to the
    1x1 output at the depthwise stride: the "Conv MobileNet" of V1 Table 4. The replaced pair's
    two BNs become one."""
    params, macs = _total_params(spec), _total_macs(spec)
    for depthwise, pointwise in separable_pairs(spec):
        full = dataclasses.replace(
            pointwise,
            kind="conv",
            in_channels=depthwise.in_channels,
            kernel=depthwise.kernel,
            stride=depthwise.stride,
            in_size=depthwise.in_size,
        )
        params += full.params - depthwise.params - pointwise.params
        macs += full.macs - depthwise.macs - pointwise.macs
    return params, macs


def peak_activation(spec: NetSpec) -> tuple[int, str]:
    """The largest tensor that inference must materialize, in bytes at 16 bits (V2 Table 3).

    V1 runs layer by layer, so every layer output counts. V2 (a network with inverted residuals)
    counts only its bottleneck tensors, the block outputs between inverted residuals: section 5.1
    shows that the expanded tensor inside a block can be computed in slices and never held whole.
    The stem output does not count either, which is how the paper arrives at 400K. A V3 block with
    squeeze-and-excite cannot slice: its gate is the pool of the whole depthwise output, which
    is held until the gate scales it, so that tensor counts too (the peak only where it is larger
    than every bottleneck: Large with small_input, not Large or Small at 224). V4's blocks
    count as V2's; a Mobile MQA's attention weights (heads x queries x keys) are held whole.
    """
    if not any(block.kind in BOTTLENECK_BLOCKS for block in spec.blocks):
        elements, name = max((layer.out_elements, layer.name) for layer in spec.layers)
        return elements * ACTIVATION_BYTES, name
    elements, name = max(
        (block.out_channels * block.out_size**2, block.name)
        for block in spec.blocks
        if block.kind in BOTTLENECK_BLOCKS or block.name.startswith("blocks.")
    )
    for block in spec.blocks:
        kinds = {layer.kind: layer for layer in block.layers}
        held = None
        if "squeeze_excite" in kinds:
            held = (kinds["depthwise"].out_elements, kinds["depthwise"].name)
        if "attention" in kinds:
            held = (attention_elements(kinds["attention"]), kinds["attention"].name)
        if held is not None and held[0] > elements:
            elements, name = held
    return elements * ACTIVATION_BYTES, name


# Blocks whose expanded tensor can be computed in slices (V2 section 5.1): only the tensors
# between them count. V4's UIB and fused IB slice the same way (each expanded channel feeds the
# projection on its own); a Mobile MQA's output is a block output too.
BOTTLENECK_BLOCKS = ("inverted_residual", "universal_ib", "fused_ib", "mobile_mqa")


def attention_elements(layer: LayerSpec) -> int:
    """The attention weights of a Mobile MQA, every head's queries by keys: held whole, since
    each row's softmax needs all its keys."""
    return layer.heads * layer.out_size**2 * layer.kv_size**2


def _total_params(spec: NetSpec) -> int:
    return sum(layer.params for layer in spec.layers)


def _total_macs(spec: NetSpec) -> int:
    return sum(layer.macs for layer in spec.layers)


def cost_of_spec(spec: NetSpec) -> CostReport:
    """The report of a resolved spec: a classification NetSpec, a DetectionSpec or a
    SegmentationSpec (which have the same ``config``, ``blocks`` and ``layers``)."""
    config = spec.config
    convs = [layer for layer in spec.layers if layer.kind != "linear"]
    standard_params, standard_macs = standard_counterfactual(spec)
    peak_bytes, peak_name = peak_activation(spec)
    bn_channels = sum(layer.out_channels for layer in spec.layers if layer.norm)
    return CostReport(
        name=config.name,
        arch=config.arch,
        alpha=config.alpha,
        resolution=config.resolution,
        num_classes=config.num_classes,
        layers=tuple(LayerCost.of(layer) for layer in spec.layers),
        params=_total_params(spec),
        macs=_total_macs(spec),
        body_params=sum(layer.weights for layer in convs),
        body_macs=sum(layer.macs for layer in convs),
        bn_params=bn_channels * 2,
        bn_buffers=bn_channels * 2,
        peak_activation_bytes=peak_bytes,
        peak_activation_tensor=peak_name,
        standard_params=standard_params,
        standard_macs=standard_macs,
    )
