"""Building named segmenters, with their backbone initialised from a classifier's weights.

[`create_segmenter`][mobilenets.zoo.segmenters.create_segmenter] builds a registered Mobile
DeepLabv3; ``backbone_weights`` copies a classification model's tensors into its backbone
([`copy_backbone`][mobilenets.zoo.detectors.copy_backbone], as for detectors), from published
ImageNet weights or any file that
[`mobilenets.zoo.transfer.source_model`][mobilenets.zoo.transfer.source_model] reads. Atrous
convolution changes no tensor, so ImageNet weights fit every output stride.
"""

from __future__ import annotations

import os

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.segmentation_spec import SegmentationConfig
from mobilenets.core.segmenter import Segmenter, build_segmenter, saved_segmentation_config
from mobilenets.core.weights import PARITY_FIELDS, load_weights
from mobilenets.zoo.detectors import copy_backbone, load_classifier
from mobilenets.zoo.registry import resolve_segmentation_config


def create_segmenter(
    name: str | SegmentationConfig = "deeplabv3_mobilenet_v2",
    *,
    num_classes: int | None = None,
    output_stride: int | None = None,
    aspp: bool | None = None,
    resolution: int | None = None,
    alpha: float | None = None,
    backbone_weights=None,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
    **overrides,
) -> Segmenter:
    """Build a registered segmenter: ``create_segmenter("deeplabv3_mobilenet_v2", num_classes=21,
    output_stride=16, aspp=False, backbone_weights="torchvision")``.

    - ``backbone_weights``: initialize the backbone from a classification model: ``"torchvision"``,
      ``"timm"``, ``"keras"`` (``source:tag``), or a file. The segmenter takes the padding and BN
      epsilon those weights were trained with (unless given here); a model of another width,
      expansion or padding is refused with the differences listed.
    - ``weights``: a whole segmenter's weights file (``save_weights(segmenter, path)``); a file
      that records its config sets the padding and BN epsilon, unless given here.
    """
    if backbone_weights is not None and weights is not None:
        raise MobileNetsError(
            "give weights (a whole segmenter) or backbone_weights (a classification model), "
            "not both"
        )
    config = resolve_segmentation_config(
        name,
        num_classes=num_classes,
        output_stride=output_stride,
        aspp=aspp,
        resolution=resolution,
        alpha=alpha,
        **overrides,
    )
    if backbone_weights is not None:
        classifier = load_classifier(config, backbone_weights, progress=progress)
        config = _with_parity(config, classifier.config, overrides)
        model = build_segmenter(config)
        copy_backbone(model, classifier)
        return model
    if weights is not None:
        saved = saved_segmentation_config(weights)
        if saved is not None:
            config = _with_parity(config, saved.backbone, overrides)
        model = build_segmenter(config)
        load_weights(model, weights)
        return model
    return build_segmenter(config)


def _with_parity(config: SegmentationConfig, source, overrides: dict) -> SegmentationConfig:
    """``config`` with the padding and BN epsilon of ``source`` (a ModelConfig), except those
    given explicitly in ``overrides``."""
    parity = {key: getattr(source, key) for key in PARITY_FIELDS if overrides.get(key) is None}
    return config.replace(backbone=config.backbone.replace(**parity))
