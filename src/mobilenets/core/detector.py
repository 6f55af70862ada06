"""SSDLite on MobileNetV2 as an nn.Module, built from a resolved DetectionSpec.

Module paths are the spec's names and the checkpoint keys:

- ``backbone``: the classification [`MobileNet`][mobilenets.core.models.MobileNet] itself, without a
  classifier (``backbone.blocks.13.conv_pw.weight``), so a classification checkpoint's tensors
  copy in under the same names.
- ``extras.{i}``: [`ExtraLayer`][mobilenets.core.detector.ExtraLayer], 1x1 ``conv_reduce``, 3x3
  stride-2 ``conv_dw``, 1x1 ``conv_pw``, each with BN and ReLU6.
- ``box_heads.{k}`` and ``class_heads.{k}``:
  [`PredictionHead`][mobilenets.core.detector.PredictionHead], 3x3 ``conv_dw`` with BN and ReLU6,
  then a 1x1 ``conv_pw`` with bias.

``forward(images)`` returns ``{"cls_logits": [N, A, num_classes], "box_regression": [N, A, 4]}``
(class 0 is background), in the order of ``model.anchors()``: map by map, locations row-major,
anchor type innermost (see ``anchors.py``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from mobilenets.core.detection_spec import (
    BOX_CODE_SIZE,
    DetectionConfig,
    DetectionSpec,
    resolve_detection,
)
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model, init_weights, make_bn, make_conv
from mobilenets.core.spec import BlockSpec, ModelConfig
from mobilenets.core.weights import (
    PARITY_FIELDS,
    load_saved,
    saved_config,
)

# What a classification model must share with the detector's backbone for its tensors to mean
# the same thing there: the architecture, and the numerics it was trained with.
BACKBONE_FIELDS = ("arch", "alpha", "expansion", "in_chans", "small_input", *PARITY_FIELDS)


class ExtraLayer(nn.Module):
    """An SSD extra feature layer, made depthwise separable (TF ``use_depthwise``): 1x1 conv to
    d/2, 3x3 stride-2 depthwise conv, 1x1 conv to d; BN and ReLU6 after each."""

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        reduce, depthwise, pointwise = spec.layers
        self.conv_reduce = make_conv(reduce, config.padding)
        self.bn1 = make_bn(reduce, config)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_dw = make_conv(depthwise, config.padding)
        self.bn2 = make_bn(depthwise, config)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pw = make_conv(pointwise, config.padding)
        self.bn3 = make_bn(pointwise, config)
        self.act3 = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_reduce(x)))
        x = self.act2(self.bn2(self.conv_dw(x)))
        return self.act3(self.bn3(self.conv_pw(x)))


class PredictionHead(nn.Module):
    """SSDLite head (V2 section 6.2): SSD's 3x3 prediction conv replaced by a depthwise separable
    one, a 3x3 depthwise conv with BN and ReLU6, then a linear 1x1 conv with bias.

    Returns ``[N, H * W * anchors, outputs_per_anchor]``: channel ``a * k + j`` of the 1x1 conv is
    output j of anchor type a, so moving channels last and reshaping gives the anchor order.
    """

    def __init__(self, spec: BlockSpec, config: ModelConfig, outputs_per_anchor: int) -> None:
        super().__init__()
        depthwise, pointwise = spec.layers
        self.conv_dw = make_conv(depthwise, config.padding)
        self.bn = make_bn(depthwise, config)
        self.act = nn.ReLU6(inplace=True)
        self.conv_pw = make_conv(pointwise, config.padding)
        self.outputs_per_anchor = outputs_per_anchor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pw(self.act(self.bn(self.conv_dw(x))))
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.outputs_per_anchor)


class SSDLite(nn.Module):
    """SSDLite (Sandler et al. 2018, section 6.2) on a MobileNetV2 backbone.

    ``model.anchors()`` (also the non-persistent buffer ``default_boxes``) holds the ``[A, 4]``
    default boxes, (cx, cy, w, h) in [0, 1], that the outputs' second dimension follows. Inputs
    must be ``resolution x resolution``: the anchors are laid out for those feature-map sizes.
    """

    def __init__(self, config: DetectionConfig) -> None:
        super().__init__()
        if not isinstance(config, DetectionConfig):
            raise MobileNetsError(f"SSDLite takes a DetectionConfig, got {config!r}")
        self.config = config
        self.spec: DetectionSpec = resolve_detection(config)
        parity = config.backbone
        self.backbone = build_model(parity)
        self.extras = nn.ModuleList(ExtraLayer(block, parity) for block in self.spec.extras)
        self.box_heads = nn.ModuleList(
            PredictionHead(block, parity, BOX_CODE_SIZE) for block in self.spec.box_heads
        )
        self.class_heads = nn.ModuleList(
            PredictionHead(block, parity, config.num_classes) for block in self.spec.class_heads
        )
        # Not persistent: the boxes follow from the config, so checkpoints hold weights only.
        self.register_buffer("default_boxes", self.spec.default_boxes(), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """The backbone keeps MobileNet's initialization. Extra layers: He init as there. The
        heads' last 1x1 convs: N(0, 0.01) and zero bias, so that training starts from near-equal
        class scores and near-zero box offsets."""
        init_weights(
            [*self.extras.modules(), *self.box_heads.modules(), *self.class_heads.modules()]
        )
        for head in [*self.box_heads, *self.class_heads]:
            nn.init.normal_(head.conv_pw.weight, 0, 0.01)
            nn.init.zeros_(head.conv_pw.bias)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def anchors(self) -> torch.Tensor:
        """The default boxes ``[A, 4]``, (cx, cy, w, h) in [0, 1], in the outputs' order."""
        return self.default_boxes

    def check_input(self, images: torch.Tensor) -> None:
        side, channels = self.config.resolution, self.config.backbone.in_chans
        if images.dim() != 4 or tuple(images.shape[1:]) != (channels, side, side):
            raise MobileNetsError(
                f"{self.name} takes a (batch, {channels}, {side}, {side}) tensor (its default "
                f"boxes are laid out for {side}x{side} inputs; build it with resolution= for "
                f"another size), got shape {tuple(images.shape)}"
            )

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps the heads read, in the spec's order (``spec.maps``)."""
        self.check_input(images)
        taps = [feature_map.tap for feature_map in self.spec.maps if feature_map.tap is not None]
        features = list(self.backbone.forward_taps(images, taps).values())
        x = features[-1]
        for extra in self.extras:
            x = extra(x)
            features.append(x)
        return features

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.forward_features(images)
        return {
            "cls_logits": torch.cat(
                [head(x) for head, x in zip(self.class_heads, features, strict=True)], dim=1
            ),
            "box_regression": torch.cat(
                [head(x) for head, x in zip(self.box_heads, features, strict=True)], dim=1
            ),
        }


# --- Reading a saved detector ---------------------------------------------------------------


def saved_detection_config(path: str | os.PathLike) -> DetectionConfig | None:
    """The detection config recorded in a safetensors file that save_weights wrote from an
    SSDLite; None for other files."""
    return saved_config(path, DetectionConfig)


def load_detector(path: str | os.PathLike) -> SSDLite:
    """Rebuild a detector from a safetensors file that save_weights wrote: config and weights."""
    return load_saved(
        path,
        DetectionConfig,
        SSDLite,
        record="detection",
        factory="create_detector",
        what="detector",
    )
