"""Reference weights files in the publishers' native formats, and a local server for them.

The references have random weights, BN statistics far from 0 and 1 and a random BN affine part,
and logits that depend on the input, so a mis-mapped tensor or a wrong padding or BN epsilon
shows in the logits. The tests of published weights and of the commands that use them serve
these files from 127.0.0.1, and point copies of the real records at them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

from mobilenets.zoo import pretrained
from mobilenets.zoo.pretrained import (
    RECORDS,
    imagenet_synsets,
)

TOLERANCE = 1e-4  # max abs logit difference against the reference implementation


# --- A file server on 127.0.0.1 ----------------------------------------------------------------


@dataclass
class FileServer:
    """Serves ``files`` (name -> bytes) at ``url/NAME``, honouring ``Range: bytes=N-``. Records
    each request as (name, Range header or None). ``drops``: how many more responses announce
    their full length but close the connection half way."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    drops: int = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        state: FileServer = self.server.state
        name = self.path.lstrip("/")
        requested = self.headers.get("Range")
        state.requests.append((name, requested))
        if name not in state.files:
            self.send_error(404)
            return
        body, start = state.files[name], 0
        if requested:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested)[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if state.drops > 0:
            state.drops -= 1
            self.wfile.write(chunk[: len(chunk) // 2])
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


def start_server():
    """A running server and a function that stops it."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = FileServer(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()

    def stop():
        httpd.shutdown()
        httpd.server_close()
        thread.join()

    return httpd.state, stop


def use_records(monkeypatch, *replacements: pretrained.WeightsRecord) -> None:
    """pretrained.RECORDS with each record of the same (source, tag, model) replaced."""

    def key(record):
        return record.source, record.tag, record.model_name

    by_key = {key(record): record for record in replacements}
    records = tuple(by_key.get(key(record), record) for record in pretrained.RECORDS)
    assert sum(record in replacements for record in records) == len(replacements)
    monkeypatch.setattr(pretrained, "RECORDS", records)


def serve(server: FileServer, record, name: str, body: bytes, sha256: str | None):
    """A copy of ``record`` that downloads ``body`` from ``server`` under ``name``."""
    server.files[name] = body
    return dataclasses.replace(record, url=f"{server.url}/{name}", sha256=sha256)


# --- Reference files in their native formats ---------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A weights file as its ecosystem writes it, with the logits its own model computes."""

    path: Path
    body: bytes
    sha256: str
    inputs: torch.Tensor  # NCHW
    logits: torch.Tensor
    model: object = None  # the reference model (torchvision only)

    @property
    def served_name(self) -> str:
        """torchvision's naming: the first 8 hex digits of the file's sha256."""
        return f"mobilenet_v2-{self.sha256[:8]}{self.path.suffix}"


def calibrate_batch_norm(model: nn.Module, inputs: torch.Tensor) -> None:
    """BN running statistics measured on ``inputs`` and a random affine part: every BN tensor
    matters, and the logits still depend on the input (statistics drawn at random instead
    drown the signal within a few blocks and make every input's logits the same)."""
    batch_norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for module in batch_norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(inputs)
    for module in batch_norms:
        module.momentum = 0.1
        nn.init.normal_(module.weight, 1.0, 0.3)
        nn.init.normal_(module.bias, 0.0, 0.3)
    model.eval()


def make_reference(path: Path, inputs: torch.Tensor, logits: torch.Tensor, model=None):
    body = path.read_bytes()
    return Reference(path, body, hashlib.sha256(body).hexdigest(), inputs, logits, model)


def torchvision_reference(folder: Path) -> Reference:
    """torchvision's mobilenet_v2 (alpha 1.0) state dict, saved as torchvision publishes it."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2()
    calibrate_batch_norm(model, torch.randn(8, 3, 64, 64))
    nn.init.normal_(model.classifier[1].weight, 0, 0.05)  # a peakier softmax than the 0.01 init
    nn.init.normal_(model.classifier[1].bias, 0, 0.1)
    model.eval()
    path = folder / "mobilenet_v2.pth"
    torch.save(model.state_dict(), path)
    inputs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(inputs)
    return make_reference(path, inputs, logits, model)


def keras_reference(folder: Path) -> Reference:
    """Keras MobileNetV2 alpha 0.35 at 96 px, its weights written by Keras's HDF5 writer in the
    layout of the official files (root ``layer_names``, one group per layer)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    path = folder / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5"
    inputs = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():  # Keras under numpy 2 warns about copy= on every variable
        warnings.simplefilter("ignore", DeprecationWarning)
        model = keras.applications.MobileNetV2(
            alpha=0.35, weights=None, input_shape=(96, 96, 3), classifier_activation=None
        )
        for layer in model.layers:
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
                # He init: Keras's default (Glorot) shrinks the signal block by block until the
                # random BN statistics alone set the logits, the same for every input.
                (kernel,) = layer.get_weights()
                depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
                fan_in = np.prod(kernel.shape[:2]) * (1 if depthwise else kernel.shape[2])
                layer.set_weights([rng.normal(0, np.sqrt(2 / fan_in), kernel.shape)])
            elif isinstance(layer, keras.layers.BatchNormalization):
                n = layer.gamma.shape[0]
                gamma, beta = rng.normal(1, 0.3, n), rng.normal(0, 0.3, n)
                mean, variance = rng.normal(0, 0.5, n), rng.uniform(0.5, 2, n)
                layer.set_weights([gamma, beta, mean, variance])
            elif isinstance(layer, keras.layers.Dense):
                kernel, bias = layer.get_weights()
                layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
        with h5py.File(path, "w") as handle:
            save_weights_to_hdf5_group(handle, model)
        channels_last = inputs.permute(0, 2, 3, 1).numpy()
        logits = keras.ops.convert_to_numpy(model(channels_last, training=False))
    return make_reference(path, inputs, torch.as_tensor(logits))


def logits_of(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(inputs)


def max_difference(model: nn.Module, reference: Reference) -> float:
    actual = logits_of(model, reference.inputs)
    assert actual.shape == reference.logits.shape
    return (actual - reference.logits).abs().max().item()


def record_of(source: str, model: str, tag: str | None = None) -> pretrained.WeightsRecord:
    """The real record (the first, without a tag), whatever a test has patched in."""
    return next(
        r for r in RECORDS if (r.source, r.model_name) == (source, model) and tag in (None, r.tag)
    )


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    """A smooth random colour pattern, so resizing and cropping change what the model sees."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    channels = [
        np.sin(rng.uniform(2, 12) * x + rng.uniform(0, 6)) * np.cos(rng.uniform(2, 12) * y)
        for _ in range(3)
    ]
    pixels = ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def write_imagenet_folder(root: Path, class_indices, per_class: int = 2) -> list[Path]:
    """An ImageNet-layout validation folder: ``root/WNID/*.JPEG`` (and PNGs)."""
    paths = []
    for i, index in enumerate(class_indices):
        folder = root / imagenet_synsets()[index]
        folder.mkdir(parents=True)
        for j in range(per_class):
            suffix = ".JPEG" if j % 2 == 0 else ".png"
            path = folder / f"ILSVRC2012_val_{i:03d}{j:02d}{suffix}"
            write_image(path, (120 + 17 * j, 90 + 11 * i), seed=10 * i + j)
            paths.append(path)
    return paths


# --- Fixtures ------------------------------------------------------------------------------------
