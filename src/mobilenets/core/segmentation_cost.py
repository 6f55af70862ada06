"""What Mobile DeepLabv3 costs as the V2 paper's Table 7 counts it: multi-scale inference, and the
multiply-adds of atrous convolution as TensorFlow runs it.

Our cost model counts one multiply-add per weight per output position; a dilated conv costs what an
undilated one does. Table 7's four ASPP rows are higher than that (V1 OS 16: 14.25B where we count
12.76B). TF (1.x, which the paper's DeepLab ran on) computes a dilated convolution with rate r as
``space_to_batch``, an ordinary convolution, ``batch_to_space``
(``tf.nn.convolution`` -> ``with_space_to_batch``): the input, padded by (k - 1) * r for "SAME",
is padded further at the end to a multiple of r, split into r * r images, and each is convolved
with the undilated k x k kernel, "VALID". The convolution, which is what TF's profiler counts,
produces ``r * (ceil((n + (k - 1) * r) / r) - (k - 1))`` positions per side instead of n: at
33 x 33 with rates 6, 12, 18 it computes 36 x 36 each, 19% more. Counting the atrous layers that
way ([`space_to_batch_macs`][mobilenets.core.segmentation_cost.space_to_batch_macs]) gives 14.23B,
5.82B and 387.5B for three of the four ASPP rows (paper: 14.25B, 5.8B, 387B) and leaves the non-ASPP
rows where they are (their dilated layers are depthwise and cheap). The fourth, V1 at OS 8 with
multi-scale inputs, is 990.8B counted that way and 800.7B our way, against the paper's 941.9B:
neither accounts for it. [`table7`][mobilenets.core.segmentation_cost.table7] lays the rows out.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilenets.core.cost import cost_of_spec
from mobilenets.core.segmentation_spec import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_SIZE,
    PAPER_RESOLUTION,
    TABLE7,
    V3_TABLE7,
    SegmentationConfig,
    SegmentationSpec,
    Table7Row,
    V3Table7Row,
    resolve_segmentation,
)
from mobilenets.core.spec import LayerSpec, ModelConfig

# Table 7's "MF": TF DeepLab's eval_scales 0.5:0.25:1.75, each evaluated with its mirror image.
MULTISCALE = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def scaled_size(size: int, scale: float) -> int:
    """An input side at ``scale``, as TF DeepLab computes it: ``int((size - 1) * scale + 1)``
    (513 gives 257, 385, 513, 641, 769, 897)."""
    return int((size - 1) * scale + 1)


def space_to_batch_side(size: int, kernel: int, rate: int) -> int:
    """Output positions per side that TF's space_to_batch convolution computes for a stride-1
    "SAME" conv with dilation ``rate`` on a ``size`` input (``size`` itself for rate 1)."""
    if rate == 1:
        return size
    padded = size + (kernel - 1) * rate
    blocks = -(-padded // rate)  # the padded side is rounded up to a multiple of the rate
    return rate * (blocks - (kernel - 1))


def layer_macs(layer: LayerSpec, *, space_to_batch: bool = False) -> int:
    """A layer's multiply-adds; with ``space_to_batch``, a dilated layer's as TF computes them."""
    if not space_to_batch or layer.dilation == 1:
        return layer.macs
    side = space_to_batch_side(layer.in_size, layer.kernel, layer.dilation)
    return layer.weights * side * side


def space_to_batch_macs(spec: SegmentationSpec) -> int:
    """The multiply-adds of a resolved segmenter with every dilated conv counted as TF runs it."""
    return sum(layer_macs(layer, space_to_batch=True) for layer in spec.layers)


def inference_macs(
    config: SegmentationConfig, *, multiscale: bool = False, space_to_batch: bool = False
) -> int:
    """Multiply-adds of one inference at ``config.resolution``, or with ``multiscale`` of the
    twelve of Table 7's MF (six scales, each with its mirror), summed."""
    sizes = [scaled_size(config.resolution, s) for s in MULTISCALE] if multiscale else [None]
    total = 0
    for size in sizes:
        spec = resolve_segmentation(config if size is None else config.replace(resolution=size))
        total += space_to_batch_macs(spec) if space_to_batch else cost_of_spec(spec).macs
    return total * (2 if multiscale else 1)


@dataclass(frozen=True)
class Table7Comparison:
    """One Table 7 row: the paper's figures, ours, and ours with TF's atrous counting."""

    paper: Table7Row
    config: SegmentationConfig
    params: int
    macs: int  # one multiply-add per weight per output position, summed over MF's inputs
    space_to_batch_macs: int  # dilated convs counted as TF's space_to_batch runs them

    @property
    def params_error(self) -> float:
        """Our parameters against the paper's, as a fraction (the paper gives 0.01M)."""
        return self.params / (self.paper.params_m * 1e6) - 1

    @property
    def macs_error(self) -> float:
        return self.macs / (self.paper.madds_b * 1e9) - 1

    @property
    def space_to_batch_error(self) -> float:
        return self.space_to_batch_macs / (self.paper.madds_b * 1e9) - 1


def table7(resolution: int = PAPER_RESOLUTION) -> list[Table7Comparison]:
    """V2 Table 7's six MobileNet rows beside ours (21 classes, ``resolution`` px inputs)."""
    rows = []
    for row in TABLE7:
        config = SegmentationConfig(
            ModelConfig(arch=row.arch),
            resolution=resolution,
            output_stride=row.output_stride,
            aspp=row.aspp,
        )
        rows.append(
            Table7Comparison(
                paper=row,
                config=config,
                params=cost_of_spec(resolve_segmentation(config)).params,
                macs=inference_macs(config, multiscale=row.multiscale),
                space_to_batch_macs=inference_macs(
                    config, multiscale=row.multiscale, space_to_batch=True
                ),
            )
        )
    return rows


def rectangular_macs(config: SegmentationConfig, height: int, width: int) -> int:
    """Multiply-adds of one ``height x width`` inference: each layer's weights times its output
    rows (the spec resolved at ``height``) times its output columns (the spec at ``width``). The
    spec's sizes are square; every layer computes its rows and its columns alike, and a layer on a
    pooled map has one of each."""
    rows = resolve_segmentation(config.replace(resolution=height)).layers
    columns = resolve_segmentation(config.replace(resolution=width)).layers
    return sum(a.weights * a.out_size * b.out_size for a, b in zip(rows, columns, strict=True))


@dataclass(frozen=True)
class V3Table7Comparison:
    """One V3 Table 7 row: the paper's figures and ours (19 classes, 1024 x 2048)."""

    paper: V3Table7Row
    config: SegmentationConfig
    params: int  # everything trainable, BN scale and shift included
    params_without_bn: int
    macs: int  # one 1024 x 2048 image


def v3_table7() -> list[V3Table7Comparison]:
    """V3 Table 7's LR-ASPP rows beside ours: the backbone with the reduced tail at output
    stride 16, the head with F filters, 19 Cityscapes classes, one 1024 x 2048 image."""
    rows = []
    height, width = CITYSCAPES_SIZE
    for row in V3_TABLE7:
        config = SegmentationConfig(
            ModelConfig(arch=row.arch, reduced_tail=True),
            num_classes=CITYSCAPES_CLASSES,
            resolution=height,
            head="lraspp",
            head_channels=row.head_channels,
        )
        report = cost_of_spec(resolve_segmentation(config))
        rows.append(
            V3Table7Comparison(
                paper=row,
                config=config,
                params=report.params,
                params_without_bn=report.params - report.bn_params,
                macs=rectangular_macs(config, height, width),
            )
        )
    return rows
