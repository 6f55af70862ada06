"""What bench measures: each input (a model, a registered name, a checkpoint, an .onnx or .pte
file) loaded, and made into a [`Target`][mobilenets.deploy.bench.sources.Target]: the eager
reference model and the files to run beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mobilenets.core.detection_spec import DetectionConfig
from mobilenets.core.detector import SSDLite, load_detector, saved_detection_config
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.models import MobileNet, build_model
from mobilenets.core.segmentation_spec import SegmentationConfig
from mobilenets.core.segmenter import (
    Segmenter,
    build_segmenter,
    load_segmenter,
    saved_segmentation_config,
)
from mobilenets.core.spec import ModelConfig
from mobilenets.deploy.bench.scoring import Validation
from mobilenets.deploy.executorch_export import load_pte, pte_input_shape, read_pte_metadata
from mobilenets.deploy.onnx_export import (
    ExportSource,
    export_source,
    onnx_session,
    read_onnx_metadata,
)
from mobilenets.engine.checkpoint import checkpoint_path
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.registry import is_detector, is_segmenter
from mobilenets.zoo.segmenters import create_segmenter

QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger")
FILE_SUFFIXES = (".onnx", ".pte")  # the exported files bench measures as they are
FILE_EAGER = "random weights, from the file's model_config (speed does not depend on them)"


@dataclass
class Target:
    """One input of the benchmark: the eager reference model and the ONNX and .pte files to
    run."""

    name: str
    model: torch.nn.Module | None  # None: an .onnx file whose metadata has no model config
    resolution: int
    in_chans: int
    onnx_files: list[tuple[Path, str, str, str]]  # (path, precision, source, note)
    eager_source: str  # how the eager model's weights came about
    fixed_batch: int | None = None  # an .onnx file exported without a dynamic batch, a .pte
    # (path, batch, precision, source, note): each .pte has one fixed batch
    pte_files: list[tuple[Path, int, str, str, str]] = field(default_factory=list)
    validation: Validation | None = None  # fills the accuracy column


def is_file(item) -> bool:
    """Whether a bench input is an exported file, measured as it is (not exported here)."""
    return isinstance(item, str) and Path(item).suffix in FILE_SUFFIXES


def onnx_precision(path: Path) -> str:
    """int8 when the graph has quantization ops (QDQ or QOperator), else fp32."""
    onnx = require("onnx", "reading an ONNX file")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # a file onnxruntime loaded but onnx cannot parse is not ours
        raise MobileNetsError(f"cannot read ONNX file {str(path)!r}: {error}") from error
    return "int8" if any(node.op_type in QUANTIZED_OPS for node in graph.node) else "fp32"


def file_target(path: Path, resolution: int | None, threads: int) -> Target:
    """An .onnx or a .pte file, at its own input size."""
    if path.suffix == ".onnx":
        return onnx_file_target(path, resolution, threads)
    return pte_file_target(path, resolution)


def onnx_file_target(path: Path, resolution: int | None, threads: int) -> Target:
    """An .onnx file; its eager reference is rebuilt (random weights) from the model config
    export_onnx (or tasks.segmentation.export.export) writes into its metadata."""
    session = onnx_session(path, threads)  # the load error names the file first
    (graph_input,) = session.get_inputs()
    shape = graph_input.shape
    height = _input_side(path, shape, resolution, "an ONNX file", square=False)
    model = model_from_config(read_onnx_metadata(path).get("model_config"), height)
    fixed = shape[0] if isinstance(shape[0], int) else None
    files = [(path, onnx_precision(path), f"file {path}", "")]
    channels = shape[1]
    return Target(path.name, model, height, channels, files, FILE_EAGER, fixed_batch=fixed)


def pte_file_target(path: Path, resolution: int | None) -> Target:
    """A .pte file; its eager reference is rebuilt (random weights) from the model config
    export_executorch (or tasks.segmentation.export.export) stores in it."""
    shape = pte_input_shape(load_pte(path))  # the load error names the file first
    height = _input_side(path, shape, resolution, "a .pte file", square=True)
    metadata = read_pte_metadata(path)
    model = model_from_config(metadata.get("model_config"), height)
    precision = "int8" if "quantization" in metadata else "fp32"
    batch, channels = shape[:2]
    return Target(
        path.name,
        model,
        height,
        channels,
        [],
        FILE_EAGER,
        fixed_batch=batch,
        pte_files=[(path, batch, precision, f"file {path}", "")],
    )


def _input_side(path: Path, shape, resolution: int | None, kind: str, square: bool) -> int:
    """The height of a file's (N, C, H, W) input (H == W where ``square``), which ``resolution``
    must equal when given: the input size of ``kind`` of file is fixed at export."""
    image = len(shape) == 4 and all(isinstance(dim, int) for dim in shape[1:])
    if not image or (square and shape[2] != shape[3]):
        raise MobileNetsError(
            f"{str(path)!r} takes input {shape}; a (N, C, R, R) image model is expected"
        )
    _, _, height, width = shape
    if resolution is not None and resolution != height:
        raise MobileNetsError(
            f"{str(path)!r} takes {height}x{width} inputs; resolution={resolution} cannot "
            f"change {kind} (export it again at that size)"
        )
    return height


def model_from_config(config, resolution: int) -> torch.nn.Module | None:
    """The model (random weights) of a config an exported file records, at ``resolution``: a
    detector's (it has a backbone and extra layers), a segmenter's (a backbone) or a
    classifier's; None when the file records none."""
    if not isinstance(config, dict):
        return None
    if "backbone" in config and "extra_depths" in config:
        return SSDLite(DetectionConfig.from_dict(config).replace(resolution=resolution))
    if "backbone" in config:
        return build_segmenter(SegmentationConfig.from_dict(config).replace(resolution=resolution))
    return build_model(ModelConfig.from_dict(config).replace(resolution=resolution))


def load_source(
    item: str | MobileNet | Segmenter | SSDLite,
    resolution: int | None = None,
    *,
    output_stride: int | None = None,
    aspp: bool | None = None,
) -> ExportSource:
    """The model a bench input names, in eval mode, and the resolution to measure it at (default:
    its own). A classifier (a MobileNet, a registered name or a checkpoint) comes as
    [`export_source`][mobilenets.deploy.onnx_export.export_source] reads it; a segmenter is a
    Segmenter, a registered segmenter name (random weights, at ``output_stride`` and with
    ``aspp`` when given) or a checkpoint that records a segmentation config; a detector is an
    SSDLite, a registered detector name (random weights) or a checkpoint that records a
    detection config. A detector's default boxes are laid out for one input size, so at another
    ``resolution`` it is rebuilt there with the same weights."""
    if (output_stride is not None or aspp is not None) and not is_segmenter(item):
        raise MobileNetsError(
            f"output_stride and aspp apply to a registered segmenter name (such as "
            f"deeplabv3_mobilenet_v2), not to {label(item)!r}"
        )
    if isinstance(item, (MobileNet, Segmenter, SSDLite)):
        return _given_model(item, resolution)
    if is_segmenter(item):
        model = create_segmenter(
            item, output_stride=output_stride, aspp=aspp, resolution=resolution
        )
        return ExportSource(model.eval(), model.resolution, "random weights (a registered name)")
    if is_detector(item):
        model = create_detector(item, resolution=resolution)
        return ExportSource(model.eval(), model.resolution, "random weights (a registered name)")
    return _checkpoint(item, resolution)


def _given_model(model: MobileNet | Segmenter | SSDLite, resolution: int | None) -> ExportSource:
    if isinstance(model, SSDLite):
        model = _detector_at(model, resolution)
        return ExportSource(model.eval(), model.resolution, "the given model's weights")
    size = model.resolution if resolution is None else resolution
    return ExportSource(model.eval(), size, "the given model's weights")


def _checkpoint(item: str, resolution: int | None) -> ExportSource:
    """A detection or segmentation checkpoint; anything else as export_source reads it."""
    path = checkpoint_path(item) if Path(item).exists() else None
    if path is not None and saved_detection_config(path) is not None:
        model = _detector_at(load_detector(path), resolution)
        return ExportSource(model.eval(), model.resolution, f"checkpoint {path}")
    if path is None or saved_segmentation_config(path) is None:
        return export_source(item, resolution=resolution)
    model = load_segmenter(path).eval()
    size = model.resolution if resolution is None else resolution
    return ExportSource(model, size, f"checkpoint {path}")


def _detector_at(model: SSDLite, resolution: int | None) -> SSDLite:
    """``model``, or at another ``resolution`` the same weights in an SSDLite built for it: the
    default boxes follow the input size, the weights do not."""
    if resolution is None or resolution == model.resolution:
        return model
    rebuilt = SSDLite(model.config.replace(resolution=resolution))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def label(item) -> str:
    return item.name if isinstance(item, (MobileNet, Segmenter, SSDLite)) else str(item)


def in_chans(config: ModelConfig | SegmentationConfig | DetectionConfig) -> int:
    if isinstance(config, (SegmentationConfig, DetectionConfig)):
        return config.backbone.in_chans
    return config.in_chans
