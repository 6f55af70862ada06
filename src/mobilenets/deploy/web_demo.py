"""The browser demo: the int8 classifier and detector in onnxruntime-web, on a static page.

[`export_demo`][mobilenets.deploy.web_demo.export_demo] writes the folder the page in the
repository's ``web/`` reads:

- ``classifier.onnx``: an int8 classifier (onnxruntime QDQ, as ``mobilenets quantize`` writes it)
  calibrated on training images of the checkpoint's data, or an ONNX classifier of ours as it is;
- ``detector.onnx``: a detector with NMS inside (``mobilenets detect export --nms``), quantized
  here the same way but for its convolutions only (box decoding and NMS stay float), or as it is
  when it is int8 already;
- ``manifest.json``: per model its file, kind, input and output names, class names and
  preprocessing, from which the page builds its input as
  [`eval_transform`][mobilenets.data.transforms.eval_transform] does.

The folder is built beside its final place and renamed there once every file is written and
runs in onnxruntime: an error leaves what was there before, or nothing.

[`serve_demo`][mobilenets.deploy.web_demo.serve_demo] serves the page, onnxruntime-web's wasm
build (``web/node_modules/onnxruntime-web/dist``, which ``npm ci --prefix web`` installs at the
version ``web/package.json`` pins) and the folder with Python's http.server. The page and its
npm package live in a source checkout: ``web/`` is not part of the installed package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from mobilenets.core.detection_spec import DetectionConfig
from mobilenets.core.detector import saved_detection_config
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import write_json
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.segmenter import saved_segmentation_config
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import read_state_dict, saved_config
from mobilenets.data.classification import load_splits
from mobilenets.data.transforms import eval_transform
from mobilenets.deploy import onnx_export as export
from mobilenets.deploy.quantize import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CALIBRATION_IMAGES,
    QUANTIZATION_KEY,
    calibration_batches,
    calibration_indices,
    check_options,
    quantize_ptq,
)
from mobilenets.engine.checkpoint import Checkpoint, check_classes, checkpoint_path

log = logging.getLogger("mobilenets")

CLASSIFIER, DETECTOR = "classifier", "detector"
MANIFEST = "manifest.json"
CLASSIFIER_OUTPUTS = (export.OUTPUT_NAME,)
# tasks.detection.graphs.NMS_OUTPUT_NAMES, which this layer may not import (a test checks)
DETECTOR_OUTPUTS = ("boxes", "scores", "classes", "count")
DETECTOR_WITHOUT_NMS = ("boxes", "scores")
# The detector's int8 ops: the convolutions hold all the arithmetic; decoding and NMS stay float.
ACTIVATIONS = "u8"  # fast on x86 (see deploy.quantize), and what the classifier gets

WEB_ROOT = Path(__file__).resolve().parents[3] / "web"  # in a source checkout
INDEX = "index.html"
PAGE_FILES = (INDEX, "demo.js", "demo.css")
ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
# onnxruntime-web's CPU (wasm) build: the script, and the module and binary it loads
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
NPM_INSTALL = "npm ci --prefix web"
MIME_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
}


# --- What a model file holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class DemoModel:
    """One model of the demo: a manifest entry, and where its file came from."""

    kind: str  # classifier or detector
    file: str  # its name in the demo folder
    model_name: str
    input: str
    outputs: tuple[str, ...]
    classes: tuple[str, ...]  # a detector's classes[0] is the background
    preprocessing: Preprocessing
    quantization: dict | None  # the settings of an int8 file, None for fp32
    source: str  # what it was made from, as its metadata says
    file_bytes: int

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "file": self.file,
            "model": self.model_name,
            "input": self.input,
            "outputs": list(self.outputs),
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "quantization": self.quantization,
            "source": self.source,
            "bytes": self.file_bytes,
        }

    @classmethod
    def from_dict(cls, entry: dict) -> DemoModel:
        return cls(
            entry["kind"],
            entry["file"],
            entry["model"],
            entry["input"],
            tuple(entry["outputs"]),
            tuple(entry["classes"]),
            Preprocessing.from_dict(entry["preprocessing"]),
            entry["quantization"],
            entry["source"],
            entry["bytes"],
        )


def source_kind(path: str | os.PathLike) -> str:
    """``classifier`` or ``detector``: for a checkpoint (a .safetensors file or run folder) the
    config it records, for an ONNX file of ours its outputs. Anything else raises, naming what
    the demo takes."""
    path = Path(path)
    if path.suffix == ".onnx":
        return read_model_file(path).kind
    if not path.exists():
        raise MobileNetsError(
            f"{str(path)!r} does not exist (the demo takes a classifier or detector checkpoint, "
            "a run folder or an .onnx file)"
        )
    weights = checkpoint_path(path)
    if saved_detection_config(weights) is not None:
        return DETECTOR
    if saved_segmentation_config(weights) is not None:
        raise MobileNetsError(
            f"{str(weights)!r} is a segmentation checkpoint; the demo runs a classifier and a "
            "detector"
        )
    if saved_config(weights, ModelConfig) is not None:
        return CLASSIFIER
    read_state_dict(weights)  # a missing or unreadable file is named as such
    raise MobileNetsError(
        f"{str(weights)!r} records no mobilenets model config: the demo takes checkpoints "
        "written by `mobilenets train` or `mobilenets detect train`, or their .onnx exports"
    )


def read_model_file(path: str | os.PathLike) -> DemoModel:
    """What an ONNX classifier or detector of ours holds, checked: its outputs are a
    classifier's (``logits``) or a detector's with NMS inside, its metadata has class names and
    preprocessing, its input fits them, and onnxruntime runs it."""
    path = Path(path)
    model = export._read_model(path)
    metadata = export.read_onnx_metadata(path)
    outputs = tuple(output.name for output in model.graph.output)
    if outputs == CLASSIFIER_OUTPUTS and _rank(model.graph.output[0]) == 2:
        kind, config_key, config_type = CLASSIFIER, "model_config", ModelConfig
    elif outputs == DETECTOR_OUTPUTS:
        kind, config_key, config_type = DETECTOR, "detection_config", DetectionConfig
    elif len(outputs) == 1 and _rank(model.graph.output[0]) == 4:
        raise MobileNetsError(
            f"{str(path)!r} is a segmenter (output {outputs[0]} per pixel); the demo runs a "
            "classifier and a detector"
        )
    elif outputs == DETECTOR_WITHOUT_NMS:
        raise MobileNetsError(
            f"{str(path)!r} is a detector without NMS; the page needs it inside the file: "
            "`mobilenets detect export CKPT --nms --out FILE.onnx`, or give the checkpoint"
        )
    else:
        raise MobileNetsError(
            f"{str(path)!r} has outputs {', '.join(outputs) or 'none'}; the demo runs a "
            "classifier (logits [N, classes]) or a detector with NMS "
            f"({', '.join(DETECTOR_OUTPUTS)})"
        )
    missing = [key for key in ("classes", "preprocessing", config_key) if key not in metadata]
    if missing:
        raise MobileNetsError(
            f"{str(path)!r} is not an export of mobilenets: its metadata has no "
            f"{', '.join(missing)} (write it with `mobilenets quantize` or `mobilenets detect "
            "export --nms`, or give the checkpoint)"
        )
    try:
        classes = tuple(metadata["classes"])
        preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
        model_name = config_type.from_dict(metadata[config_key]).name
    except (KeyError, TypeError, ValueError) as error:
        raise MobileNetsError(f"{str(path)!r} has unreadable metadata: {error}") from error
    (graph_input,) = model.graph.input
    shape = export.graph_input_shape(model)
    side, channels = preprocessing.resolution, preprocessing.channels
    batch_of_one = shape[:1] == (1,) or isinstance(shape[0], str)  # fixed at 1, or dynamic
    if len(shape) != 4 or shape[1:] != (channels, side, side) or not batch_of_one:
        raise MobileNetsError(
            f"{str(path)!r} takes input {export.format_shape(shape)}, where its preprocessing "
            f"says Nx{channels}x{side}x{side}"
        )
    _check_runs(path, graph_input.name, shape[1:], outputs)
    quantization = metadata.get(QUANTIZATION_KEY)
    return DemoModel(
        kind,
        f"{kind}.onnx",
        model_name,
        graph_input.name,
        outputs,
        classes,
        preprocessing,
        quantization if isinstance(quantization, dict) else None,
        metadata.get("source", path.name),
        os.path.getsize(path),
    )


def _rank(value) -> int:
    return len(value.type.tensor_type.shape.dim)


def _check_runs(path: Path, input_name: str, shape: tuple, outputs: tuple[str, ...]) -> None:
    session = export.onnx_session(path)
    try:
        session.run(list(outputs), {input_name: np.zeros((1, *shape), np.float32)})
    except Exception as error:  # onnxruntime raises its own exception types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MobileNetsError(f"onnxruntime cannot run {str(path)!r}: {first}") from error


# --- int8 files ---------------------------------------------------------------------------------


def quantize_classifier(
    checkpoint: Checkpoint,
    data: str,
    path: str | os.PathLike,
    *,
    calibration_images: int | None = None,
) -> DemoModel:
    """``checkpoint`` as an int8 ONNX file, as ``mobilenets quantize --method ptq`` writes it
    (minmax ranges, u8 activations, s8 weights per channel), calibrated on
    ``calibration_images`` training images of ``data`` (default 512, or all if fewer)."""
    check_options(path, "minmax", ACTIVATIONS)
    preprocessing = checkpoint.preprocessing
    splits = load_splits(data, preprocessing.resolution)
    check_classes(checkpoint, splits.classes, data)
    if calibration_images is None:
        calibration_images = min(DEFAULT_CALIBRATION_IMAGES, len(splits.train))
    indices = calibration_indices(len(splits.train), calibration_images)
    splits.train.transform = eval_transform(preprocessing)
    batches = calibration_batches(splits.train, indices, DEFAULT_BATCH_SIZE)
    quantize_ptq(checkpoint, batches, path, activation_type=ACTIVATIONS)
    return read_model_file(path)


# --- The demo folder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoExport:
    folder: Path
    models: tuple[DemoModel, ...]


def export_demo(
    folder: str | os.PathLike,
    *,
    classifier: str | os.PathLike | None = None,
    detector: str | os.PathLike | None = None,
) -> DemoExport:
    """Write the demo's folder (see the module docstring) from ONNX files of ours: a
    ``classifier`` and a detector with NMS inside, either of them None;
    [`quantize_classifier`][mobilenets.deploy.web_demo.quantize_classifier] and
    [`quantize_detector_onnx`][mobilenets.tasks.detection.quantize.quantize_detector_onnx] make
    them int8. Each is
    checked (kind, metadata, input, onnxruntime runs it) before anything is written.

    ``folder`` is new, or a folder this function wrote before, which is replaced once the new
    one is complete."""
    given = {
        kind: path
        for kind, path in ((CLASSIFIER, classifier), (DETECTOR, detector))
        if path is not None
    }
    if not given:
        raise MobileNetsError("the demo needs a classifier, a detector or both")
    folder = Path(folder)
    check_out_folder(folder)
    models = []
    for kind, path in given.items():
        model = read_model_file(path)
        if model.kind != kind:
            raise MobileNetsError(f"{str(path)!r} is a {model.kind}, given as the {kind}")
        models.append(model)
    with _replacing(folder) as building:
        for model in models:
            shutil.copyfile(given[model.kind], building / model.file)
        write_json(building / MANIFEST, {"models": [model.to_dict() for model in models]})
    return DemoExport(folder, tuple(models))


def load_demo(folder: str | os.PathLike) -> DemoExport:
    """A folder [`export_demo`][mobilenets.deploy.web_demo.export_demo] wrote, its manifest
    read and its files checked to be there."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise MobileNetsError(
            f"{str(folder)!r} is not a demo folder: it has no {MANIFEST} (export_demo writes one)"
        )
    try:
        entries = json.loads(manifest.read_text())["models"]
        models = tuple(DemoModel.from_dict(entry) for entry in entries)
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise MobileNetsError(f"cannot read {str(manifest)!r}: {error}") from error
    for model in models:
        if not (folder / model.file).is_file():
            raise MobileNetsError(f"{str(folder)!r} lacks {model.file}, which its manifest names")
    return DemoExport(folder, models)


def check_out_folder(folder: str | os.PathLike) -> None:
    """Refuse an existing ``folder`` that export_demo did not write (one it did is replaced)."""
    folder = Path(folder)
    if folder.exists() and not (folder / MANIFEST).is_file():
        if not folder.is_dir() or any(folder.iterdir()):
            raise MobileNetsError(
                f"{str(folder)!r} exists and is not a demo folder; give a new folder (a demo "
                "folder written before is replaced)"
            )


@contextlib.contextmanager
def _replacing(folder: Path) -> Iterator[Path]:
    """A new folder beside ``folder`` that takes its place when the block succeeds; on an error
    it is removed and ``folder`` is as it was."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(building, 0o777 & ~umask)  # mkdtemp makes 0700; the result is an ordinary folder
    try:
        yield building
        if not folder.exists():
            os.replace(building, folder)
            return
        aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
        try:
            os.replace(folder, aside / folder.name)
            try:
                os.replace(building, folder)
            except OSError:
                os.replace(aside / folder.name, folder)
                raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)


# --- Serving -------------------------------------------------------------------------------------


def check_web(web_root: str | os.PathLike = WEB_ROOT) -> Path:
    """The folder of the page, checked to hold it and onnxruntime-web's wasm build."""
    web_root = Path(web_root)
    missing = [name for name in PAGE_FILES if not (web_root / name).is_file()]
    if missing:
        raise MobileNetsError(
            f"the demo page is not in {str(web_root)!r} (no {missing[0]}): the demo runs from a "
            "source checkout of mobilenets, whose web/ folder is not installed with the package"
        )
    dist = web_root / ORT_DIST
    if not all((dist / name).is_file() for name in ORT_FILES):
        raise MobileNetsError(
            f"onnxruntime-web is not installed in {str(web_root)!r}: run `{NPM_INSTALL}` in the "
            "repository (web/package.json pins its version)"
        )
    return web_root


class DemoRequestHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of the page's files, onnxruntime-web's under ``/ort/`` and the demo
    folder's under ``/models/``; nothing else, no listings."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def translate_path(self, path: str) -> str:
        """The file a URL path names: one directly in a route's folder (and among its names),
        else one that does not exist, which is a 404."""
        path = urlsplit(path).path
        for prefix, root, names in self.server.routes:
            if path.startswith(prefix):
                self.directory = str(root)
                local = Path(super().translate_path("/" + path[len(prefix) :]))
                if local == root and names is not None and INDEX in names:
                    local = root / INDEX
                if local.parent == root and (names is None or local.name in names):
                    return str(local)
                break
        return str(self.server.missing)

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "No listing here")
        return None

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # a new export shows on reload
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class DemoServer(ThreadingHTTPServer):
    """The page at ``/``, onnxruntime-web at ``/ort/``, a demo folder at ``/models/``."""

    daemon_threads = True

    def __init__(self, folder: Path, web_root: Path, host: str, port: int) -> None:
        folder, web_root = folder.resolve(), web_root.resolve()
        self.routes = (
            ("/ort/", web_root / ORT_DIST, ORT_FILES),
            ("/models/", folder, None),
            ("/", web_root, PAGE_FILES),
        )
        self.missing = web_root / ".missing"  # where a path outside the routes leads: a 404
        try:
            super().__init__((host, port), DemoRequestHandler)
        except OSError as error:
            raise MobileNetsError(
                f"cannot serve on host={host!r} port={port}: {error.strerror or error}"
            ) from error

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def serve_demo(
    folder: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    web_root: str | os.PathLike = WEB_ROOT,
) -> DemoServer:
    """A server (bound, not yet serving: call ``serve_forever``) of the page and the demo
    ``folder``; ``port=0`` takes a free port, which ``server.url`` shows."""
    demo = load_demo(folder)
    return DemoServer(demo.folder, check_web(web_root), host, port)
