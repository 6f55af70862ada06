"""Building named models, and their cost before they are built.

[`create_model`][mobilenets.zoo.factory.create_model] builds a registered classifier with any
weights we can read (published ImageNet weights, our own files, foreign state dicts);
[`cost`][mobilenets.zoo.factory.cost] gives the analytic cost of a name, a config or a built model,
classifier or detector, without building anything.
"""

from __future__ import annotations

import os

from torch import nn

from mobilenets.core.cost import CostReport, cost_of_spec
from mobilenets.core.detection_spec import DetectionConfig, resolve_detection
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import MobileNet, build_model
from mobilenets.core.segmentation_spec import SegmentationConfig, resolve_segmentation
from mobilenets.core.spec import resolve
from mobilenets.core.weights import PARITY_FIELDS, load_weights, saved_config
from mobilenets.zoo import pretrained
from mobilenets.zoo.convert import convert_file, detect_source
from mobilenets.zoo.registry import (
    is_detector,
    is_segmenter,
    resolve_config,
    resolve_detection_config,
    resolve_segmentation_config,
)


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    weights: str | None = None,
    progress: bool = True,
    **overrides,
) -> MobileNet:
    """Build a registered model: ``create_model("mobilenet_v2_1.0_224")``,
    ``create_model("mobilenet_v1", alpha=0.5, rho=0.714)``.

    ``weights`` is one of:

    - ``"keras"``, ``"torchvision"`` or ``"timm"`` (optionally ``"torchvision:IMAGENET1K_V2"``):
      that ecosystem's published ImageNet weights, downloaded once to the cache, verified,
      converted, with the padding and BN epsilon they were trained with. The model's
      ``weights_record`` then holds the file's record (preprocessing, license, accuracy).
    - a path to our own weights (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with
      ``torch.load(weights_only=True)``); a file written by save_weights also sets the padding
      and BN epsilon it was trained with, unless they are given here.
    - a path to a foreign file: a Keras ``.h5`` or a torchvision/timm state dict, converted.
    """
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise MobileNetsError(
            f"weights must be 'keras', 'torchvision', 'timm' or a file path, got {weights!r}"
        )
    if isinstance(weights, str) and pretrained.looks_like_source(weights):
        config = resolve_config(name, num_classes=num_classes, in_chans=in_chans, **overrides)
        return pretrained.load_pretrained(config, weights, progress=progress)[0]
    saved = saved_config(weights) if weights is not None else None
    if saved is not None:
        for key in PARITY_FIELDS:
            if overrides.get(key) is None:
                overrides[key] = getattr(saved, key)
    config = resolve_config(name, num_classes=num_classes, in_chans=in_chans, **overrides)
    source = detect_source(weights) if weights is not None and saved is None else None
    if source is not None:
        state, config, _report = convert_file(weights, source, config)
        model = build_model(config)
        model.load_state_dict(state, strict=True)
        return model
    model = build_model(config)
    if weights is not None:
        load_weights(model, weights)
    return model


def cost(name_or_model, resolution: int | None = None, **overrides) -> CostReport:
    """The cost of a registered name, a family name with ``alpha=``, or a built model.

    ``cost("mobilenet_v1_1.0_224")``, ``cost("mobilenet_v2", alpha=0.5, rho=0.571)``,
    ``cost(model)``, ``cost(model, resolution=160)``. No model is built for a name.

    A detector name (``cost("ssdlite_mobilenet_v2", resolution=300)``) or an SSDLite model gets
    the cost of the whole detector: backbone, extra layers and heads. A segmenter name
    (``cost("deeplabv3_mobilenet_v2", output_stride=8, aspp=True)``) or a segmenter gets the cost
    of its inference network at ``resolution`` (513 by default), single scale.
    """
    base = name_or_model.config if isinstance(name_or_model, nn.Module) else name_or_model
    if is_detector(base) or isinstance(base, DetectionConfig):
        config = resolve_detection_config(base, resolution=resolution, **overrides)
        return cost_of_spec(resolve_detection(config))
    if is_segmenter(base) or isinstance(base, SegmentationConfig):
        config = resolve_segmentation_config(base, resolution=resolution, **overrides)
        return cost_of_spec(resolve_segmentation(config))
    return cost_of_spec(resolve(resolve_config(base, resolution=resolution, **overrides)))
