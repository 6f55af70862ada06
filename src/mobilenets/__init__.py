"""mobilenets: the MobileNet family (V1, V2), exact to the papers, end to end."""

from mobilenets.cost import CostReport, cost
from mobilenets.errors import MobileNetsError
from mobilenets.models import InvertedResidual, MobileNet, MobileNetV1, MobileNetV2
from mobilenets.registry import create_model, get_entry, list_models
from mobilenets.spec import ModelConfig, NetSpec, resolve
from mobilenets.weights import load_model, load_weights, save_weights

__all__ = [
    "CostReport",
    "InvertedResidual",
    "MobileNet",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetsError",
    "ModelConfig",
    "NetSpec",
    "cost",
    "create_model",
    "get_entry",
    "list_models",
    "load_model",
    "load_weights",
    "resolve",
    "save_weights",
]
__version__ = "0.1.0"
