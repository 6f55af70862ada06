"""mobilenets: the MobileNet family (V1, V2), exact to the papers, end to end.

The package is layered; each layer imports only the ones above it in this list:

- ``core``: the papers' tables, resolved specs, blocks, the cost model, weights files;
- ``zoo``: the registry of named models, published weights, conversion, the factories;
- ``data``: datasets and their augmentation;
- ``engine``: the training loop, evaluation, checkpoints and run state;
- ``deploy``: BN folding, ONNX and ExecuTorch export, int8 quantization, latency;
- ``tasks``: classification, detection and segmentation, each plugged into the engine;
- ``cli``: the ``mobilenets`` command.

This module gathers the everyday entry points; ``import mobilenets`` loads ``core`` and
``zoo`` only.
"""

from mobilenets.core.cost import CostReport
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import (
    InvertedResidual,
    MobileNet,
    MobileNetV1,
    MobileNetV2,
    MobileNetV3Large,
    MobileNetV3Small,
    MobileNetV4,
)
from mobilenets.core.spec import ModelConfig, NetSpec, resolve
from mobilenets.core.version import __version__
from mobilenets.core.weights import load_model, load_weights, save_weights
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.factory import cost, create_model
from mobilenets.zoo.registry import get_entry, list_models
from mobilenets.zoo.segmenters import create_segmenter

__all__ = [
    "CostReport",
    "InvertedResidual",
    "MobileNet",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "MobileNetV4",
    "MobileNetsError",
    "ModelConfig",
    "NetSpec",
    "__version__",
    "cost",
    "create_detector",
    "create_model",
    "create_segmenter",
    "get_entry",
    "list_models",
    "load_model",
    "load_weights",
    "resolve",
    "save_weights",
]
