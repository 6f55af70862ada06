"""The published cost of MobileNetV3 beside ours: paper Table 3 and the TF-slim README's rows.

Our count (``core/cost.py``) is one multiply-add per weight per output position of every conv and
linear layer, the SE module's two 1x1 convs included. The published figures do not follow one
convention (docs/cost.md has the search): the paper's 219M for Large 1.0 and 44M for Small 0.75
are reached by adding the elementwise multiplies of V3's new parts, the SE scale and h-swish
(``elementwise_multiplies``), its 155M for Large 0.75 and 56M for Small 1.0 without them. The
README's Small rows (66M, 65M) match no count we found, and its Small params (2.9M, 2.4M) those
of a Small with a 1280-wide pre-logits layer at 1001 classes (``wide_pre_logits_params``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilenets.core.cost import cost_of_spec
from mobilenets.core.spec import ModelConfig, NetSpec, resolve

SOURCE_V3_PAPER = "Howard et al. 2019, Table 3"
SOURCE_TFSLIM_V3 = "TF-slim mobilenet/README.md"


@dataclass(frozen=True)
class PublishedV3:
    """One published row: the model (at 224, 1000 classes where ours counts), its MAdds in
    millions and params in millions as printed, and what reproduces them."""

    source: str
    arch: str
    alpha: float
    minimalistic: bool
    macs_m: int
    params_m: float
    note: str

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(self.arch, alpha=self.alpha, minimalistic=self.minimalistic)


LARGE, SMALL = "mobilenet_v3_large", "mobilenet_v3_small"
ELEMENTWISE = "ours + SE scale and h-swish multiplies"
CONVS = "ours (conv and linear MACs)"
V3_TABLE3 = (
    PublishedV3(SOURCE_V3_PAPER, LARGE, 1.0, False, 219, 5.4, f"MAdds: {ELEMENTWISE}"),
    PublishedV3(SOURCE_V3_PAPER, LARGE, 0.75, False, 155, 4.0, f"MAdds: {CONVS}"),
    PublishedV3(SOURCE_V3_PAPER, SMALL, 1.0, False, 56, 2.5, f"MAdds: {CONVS}, truncated"),
    PublishedV3(SOURCE_V3_PAPER, SMALL, 0.75, False, 44, 2.0, f"MAdds: {ELEMENTWISE}"),
)
TFSLIM_V3 = (
    PublishedV3(SOURCE_TFSLIM_V3, LARGE, 1.0, False, 217, 5.4, f"MAdds: {CONVS}"),
    PublishedV3(SOURCE_TFSLIM_V3, LARGE, 0.75, False, 155, 4.0, f"MAdds: {CONVS}"),
    PublishedV3(SOURCE_TFSLIM_V3, LARGE, 1.0, True, 209, 3.9, f"MAdds: {CONVS}"),
    PublishedV3(
        SOURCE_TFSLIM_V3,
        SMALL,
        1.0,
        False,
        66,
        2.9,
        "MAdds: no count found; params: a 1280-wide pre-logits layer, 1001 classes",
    ),
    PublishedV3(
        SOURCE_TFSLIM_V3,
        SMALL,
        0.75,
        False,
        44,
        2.4,
        f"MAdds: {ELEMENTWISE}; params: a 1280-wide pre-logits layer, 1001 classes",
    ),
    PublishedV3(SOURCE_TFSLIM_V3, SMALL, 1.0, True, 65, 2.0, "MAdds: no count found"),
)


def elementwise_multiplies(spec: NetSpec) -> int:
    """The multiplies V3 adds outside its convs: the SE scale (one per element of the depthwise
    output it gates) and h-swish's x * relu6(x + 3) / 6, counted as one per output element."""
    total = 0
    for block in spec.blocks:
        kinds = {layer.kind: layer for layer in block.layers}
        if "squeeze_excite" in kinds:
            total += kinds["depthwise"].out_elements
        for layer in block.layers:
            if layer.act and layer.activation == "hardswish":
                total += layer.out_elements
    return total


def wide_pre_logits_params(config: ModelConfig, width: int = 1280, classes: int = 1001) -> int:
    """Params of ``config`` with its pre-logits layer ``width`` wide and ``classes`` outputs."""
    spec = resolve(config.replace(num_classes=classes))
    (layer,) = spec.pre_logits.layers
    extra = width - layer.out_channels
    return cost_of_spec(spec).params + extra * (layer.in_channels + 1) + extra * classes


@dataclass(frozen=True)
class V3Comparison:
    published: PublishedV3
    params: int
    macs: int
    elementwise: int  # elementwise_multiplies of the same network

    @property
    def macs_error(self) -> float:
        return self.macs / (self.published.macs_m * 1e6) - 1

    @property
    def params_error(self) -> float:
        return self.params / (self.published.params_m * 1e6) - 1


def v3_table() -> list[V3Comparison]:
    """Every published V3 row (paper Table 3, then the TF-slim README) beside our count."""
    rows = []
    for published in (*V3_TABLE3, *TFSLIM_V3):
        spec = resolve(published.config)
        report = cost_of_spec(spec)
        rows.append(
            V3Comparison(published, report.params, report.macs, elementwise_multiplies(spec))
        )
    return rows
