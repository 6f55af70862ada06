"""The models and files bench's tests measure."""

import pytest
import torch

from mobilenets import create_model
from mobilenets.deploy.onnx_export import export_onnx


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("mobilenet_v2", alpha=0.35, resolution=32).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    export_onnx(model, path, resolution=32, dynamic_batch=True, check_sizes=(1,))
    return path


@pytest.fixture(scope="module")
def detector():
    from mobilenets.zoo.detectors import create_detector

    torch.manual_seed(0)
    return create_detector("ssdlite_mobilenet_v2", alpha=0.35, num_classes=3, resolution=96).eval()
