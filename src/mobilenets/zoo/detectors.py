"""Building named detectors, with their backbone initialised from a classifier's weights.

[`create_detector`][mobilenets.zoo.detectors.create_detector] builds a registered detector;
``backbone_weights`` copies a classification model's tensors into its backbone
([`copy_backbone`][mobilenets.zoo.detectors.copy_backbone]), from published ImageNet weights or any
file [`mobilenets.zoo.transfer.source_model`][mobilenets.zoo.transfer.source_model] reads.
"""

from __future__ import annotations

import os

from mobilenets.core.detection_spec import DetectionConfig
from mobilenets.core.detector import BACKBONE_FIELDS, SSDLite, saved_detection_config
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import MobileNet
from mobilenets.core.segmentation_spec import SegmentationConfig
from mobilenets.core.segmenter import Segmenter
from mobilenets.core.weights import PARITY_FIELDS, load_weights, mismatch_report
from mobilenets.zoo.registry import resolve_detection_config
from mobilenets.zoo.transfer import source_model


def copy_backbone(model: SSDLite | Segmenter, classifier: MobileNet) -> None:
    """Copy every tensor of a classification model that a detector's or segmenter's backbone has
    into it: weights, BN statistics. The classifier is left out, and the blocks the backbone does
    not build (a segmenter's ends at its tap: V2's last 1x1 conv); anything else that does not fit
    raises, nothing is skipped."""
    if not isinstance(classifier, MobileNet):
        raise MobileNetsError(
            f"backbone weights come from a MobileNet classification model, got "
            f"{type(classifier).__name__}"
        )
    target = model.config.backbone
    differ = [
        f"{key} {theirs!r} (need {ours!r})"
        for key in BACKBONE_FIELDS
        if (theirs := getattr(classifier.config, key)) != (ours := getattr(target, key))
    ]
    if differ:
        raise MobileNetsError(
            f"backbone weights of {classifier.name} do not fit {model.name}: " + "; ".join(differ)
        )
    # The blocks past the model's backbone (a segmenter's ends at its tap: V2's "head" goes).
    built = {block.name.removeprefix("backbone.") for block in model.spec.blocks}
    dropped = [block.name for block in classifier.spec.feature_blocks if block.name not in built]
    left_out = ("classifier.", *(f"{name}." for name in dropped))
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith(left_out)}
    problems = mismatch_report(model.backbone, state)
    if problems:
        raise MobileNetsError(
            f"backbone weights of {classifier.name} do not fit {model.name}: " + ", ".join(problems)
        )
    model.backbone.load_state_dict(state, strict=True)


def load_classifier(
    config: DetectionConfig | SegmentationConfig, weights, progress: bool = True
) -> MobileNet:
    """The classification model whose backbone ``weights`` name, for a detector or segmenter of
    ``config``: a built MobileNet, ``"torchvision"``/``"timm"``/``"keras"`` (``source:tag``), or a
    file (ours from ``mobilenets train``/``convert``, or a foreign one); see
    [`mobilenets.zoo.transfer.source_model`][mobilenets.zoo.transfer.source_model].
    [`copy_backbone`][mobilenets.zoo.detectors.copy_backbone] checks that it fits."""
    backbone = config.backbone
    # At the classification input size: Keras publishes 224 files for every alpha.
    return source_model(
        weights,
        backbone.arch,
        alpha=backbone.alpha,
        expansion=backbone.expansion,
        progress=progress,
        argument="backbone_weights",
    )


def create_detector(
    name: str | DetectionConfig = "ssdlite_mobilenet_v2",
    *,
    num_classes: int | None = None,
    resolution: int | None = None,
    alpha: float | None = None,
    backbone_weights=None,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
    **overrides,
) -> SSDLite:
    """Build a registered detector: ``create_detector("ssdlite_mobilenet_v2", num_classes=21,
    resolution=300, backbone_weights="torchvision")``.

    - ``backbone_weights``: initialize the backbone from a classification model (see
      [`load_classifier`][mobilenets.zoo.detectors.load_classifier]). The detector takes the padding
      and BN epsilon those weights were trained with (unless given here), and
      [`copy_backbone`][mobilenets.zoo.detectors.copy_backbone] copies every backbone tensor or
      raises.
    - ``weights``: a whole detector's weights file (``save_weights(detector, path)``); a file
      that records its config sets the padding and BN epsilon, unless given here.
    """
    if backbone_weights is not None and weights is not None:
        raise MobileNetsError(
            "give weights (a whole detector) or backbone_weights (a classification model), not both"
        )
    config = resolve_detection_config(
        name, num_classes=num_classes, resolution=resolution, alpha=alpha, **overrides
    )
    if backbone_weights is not None:
        classifier = load_classifier(config, backbone_weights, progress=progress)
        parity = {
            key: getattr(classifier.config, key)
            for key in PARITY_FIELDS
            if overrides.get(key) is None  # one given here must agree, or copy_backbone raises
        }
        config = config.replace(backbone=config.backbone.replace(**parity))
        model = SSDLite(config)
        copy_backbone(model, classifier)
        return model
    if weights is not None:
        saved = saved_detection_config(weights)
        if saved is not None:
            parity = {
                key: getattr(saved.backbone, key)
                for key in PARITY_FIELDS
                if overrides.get(key) is None
            }
            config = config.replace(backbone=config.backbone.replace(**parity))
        model = SSDLite(config)
        load_weights(model, weights)
        return model
    return SSDLite(config)
