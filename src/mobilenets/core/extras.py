"""Optional dependencies: which extra installs each, and the one error a missing one raises.

``pip install mobilenets`` brings what building, costing, training and evaluating a classifier
need (torch, torchvision, safetensors, numpy, pillow, tqdm). The rest is behind extras (see
pyproject.toml) and imported through [`require`][mobilenets.core.extras.require] when a feature
is used, never by ``import mobilenets``:

- ``onnx``: onnx, onnxruntime, onnxscript (ONNX export, int8 quantization, bench);
- ``keras``: h5py (reading Keras .h5 weights);
- ``detection``: pycocotools (COCO data and mAP);
- ``segmentation``: scipy (SBD's .mat masks) and pycocotools (COCO masks);
- ``plots``: matplotlib (training curves, the confusion matrix, the zoo plot);
- ``mobile``: executorch (the .pte export and its bench);
- ``openvino``: openvino (``bench --openvino``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from mobilenets.core.errors import MobileNetsError

# top-level module (also its pip package's name): the extra that installs it
EXTRAS = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "h5py": "keras",
    "pycocotools": "detection",
    "scipy": "segmentation",
    "matplotlib": "plots",
    "executorch": "mobile",
    "openvino": "openvino",
}


def install_command(extra: str) -> str:
    """The pip command that installs ``extra``: ``pip install 'mobilenets[onnx]'``."""
    return f"pip install 'mobilenets[{extra}]'"


def require(module: str, purpose: str) -> ModuleType:
    """``module`` imported (a dotted name imports that submodule), or a
    [`MobileNetsError`][mobilenets.core.errors.MobileNetsError] whose one line says what to
    install: ``exporting to ONNX needs onnxruntime: pip install 'mobilenets[onnx]'``.

    ``purpose`` says what the caller was doing, as the start of that sentence. The import
    error stays attached as the cause (a package that is installed but broken shows there).
    """
    package = module.partition(".")[0]
    extra = EXTRAS[package]  # a KeyError here is a bug: every optional package is listed above
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MobileNetsError(f"{purpose} needs {package}: {install_command(extra)}") from error


def installed_version(package: str) -> str | None:
    """The installed version of ``package``, or None; without importing it (executorch takes
    seconds to import)."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None
