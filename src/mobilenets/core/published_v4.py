"""The published cost of MobileNetV4 beside ours: paper Table 6 (Qin et al. 2024).

Our count (``core/cost.py``) is one multiply-add per weight per output position of every conv
and linear layer, plus Mobile MQA's two attention matmuls (q.k and attn.v). Our parameter counts
equal timm's, whose V4 definitions follow the paper's reference code (TF Model Garden,
``official/vision/modeling/backbones/mobilenet.py``). Table 6 prints params to 0.1M and MACs to
0.1G; Conv-S matches, the others do not, and the notes say by how much and what we checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilenets.core.cost import cost_of_spec
from mobilenets.core.families import get_family
from mobilenets.core.spec import ModelConfig, resolve

SOURCE_V4_PAPER = "Qin et al. 2024, Table 6"
# Table 6's params and MACs as the issue and the work notes quote them; the hybrids' params were
# not checked against the paper's text here (no copy of it offline).
QUOTED = "the paper's figure as quoted, Table 6 not re-read here"


@dataclass(frozen=True)
class PublishedV4:
    """One Table 6 row: the model at its native resolution, params in millions and MACs in
    billions as printed, and why ours differ."""

    arch: str
    params_m: float
    macs_g: float
    note: str

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(self.arch, resolution=get_family(self.arch).resolution)


CODE = "params: not what the paper's code builds (ours equal timm's)"
V4_TABLE6 = (
    PublishedV4("mobilenet_v4_conv_small", 3.8, 0.2, "none: both within the paper's rounding"),
    PublishedV4("mobilenet_v4_conv_medium", 9.2, 1.0, f"{CODE}; MACs: 1.08G rounds to 1.1G"),
    # the hybrids' params are marked: quoted, not re-read (see QUOTED)
    PublishedV4(
        "mobilenet_v4_hybrid_medium",
        10.5,
        1.2,
        f"{CODE}*; MACs: 1.23G without the attention matmuls rounds to 1.2G",
    ),
    PublishedV4("mobilenet_v4_conv_large", 31, 5.9, f"{CODE}; MACs: no convention found"),
    PublishedV4(
        "mobilenet_v4_hybrid_large",
        35.9,
        7.2,
        f"{CODE}*; MACs: 7.37G without the attention matmuls, still above 7.2G",
    ),
)


@dataclass(frozen=True)
class V4Comparison:
    published: PublishedV4
    params: int
    macs: int
    attention_macs: int  # the q.k and attn.v matmuls of Mobile MQA, inside ``macs``

    @property
    def macs_error(self) -> float:
        return self.macs / (self.published.macs_g * 1e9) - 1

    @property
    def params_error(self) -> float:
        return self.params / (self.published.params_m * 1e6) - 1


def v4_table() -> list[V4Comparison]:
    """Every Table 6 row beside our count at the model's native resolution."""
    rows = []
    for published in V4_TABLE6:
        spec = resolve(published.config)
        report = cost_of_spec(spec)
        attention = sum(
            layer.macs
            for block in spec.blocks
            for layer in block.layers
            if layer.kind == "attention"
        )
        rows.append(V4Comparison(published, report.params, report.macs, attention))
    return rows
