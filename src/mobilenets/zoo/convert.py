"""Weights from torchvision, timm and Keras, converted into our state dicts.

A conversion is a pure function from a foreign mapping of tensors to our state dict plus a
report. The key map is generated from the resolved spec (one entry per conv, BN and classifier
tensor), so every variant the spec can express maps without a hand-written table. Every layout
change lives in [`LAYOUTS`][mobilenets.zoo.convert.LAYOUTS]:

- Keras/TF conv kernels are HWIO ``(kh, kw, in, out)``; ours are OIHW ``(out, in, kh, kw)``.
- Keras depthwise kernels are ``(kh, kw, channels, 1)``; ours ``(channels, 1, kh, kw)``.
- A Keras Dense kernel is ``(in, out)``; a Linear weight ``(out, in)``.
- Keras MobileNet V1 ends in a 1x1 conv classifier ``(1, 1, 1024, classes)``: a Linear.
- A classifier with one row too many is TF-slim's 1001-class layout; row 0 (background) goes.

Every tensor is shape-checked, and a foreign key that maps nowhere or a tensor of ours that
nothing fills fails the conversion with the full list: nothing is loaded with ``strict=False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.families import V1_TABLE, V2_TABLE
from mobilenets.core.models import build_model
from mobilenets.core.spec import BlockSpec, LayerSpec, ModelConfig, resolve
from mobilenets.core.weights import read_state_dict

SOURCES = ("torchvision", "timm", "keras")
# The numerics each ecosystem trained with (STYLE.md: part of the spec and the weights record).
SOURCE_NUMERICS = {
    "torchvision": {"padding": "symmetric", "bn_eps": 1e-5},
    "timm": {"padding": "symmetric", "bn_eps": 1e-5},
    "keras": {"padding": "same", "bn_eps": 1e-3},
}
SHOWN = 8  # keys listed per category in an error


def _conv_hwio(array: torch.Tensor) -> torch.Tensor:
    return array.permute(3, 2, 0, 1)


def _depthwise_hwc1(array: torch.Tensor) -> torch.Tensor:
    return array.permute(2, 3, 0, 1)


def _dense(array: torch.Tensor) -> torch.Tensor:
    return array.t()


def _conv1x1_linear(array: torch.Tensor) -> torch.Tensor:
    if array.dim() != 4 or array.shape[:2] != (1, 1):
        raise MobileNetsError(
            f"a 1x1 conv classifier kernel is (1, 1, in, out), got {tuple(array.shape)}"
        )
    return array[0, 0].t()


LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "same": lambda array: array,
    "conv_hwio": _conv_hwio,  # Keras Conv2D kernel -> OIHW
    "depthwise_hwc1": _depthwise_hwc1,  # Keras DepthwiseConv2D kernel -> (C, 1, kh, kw)
    "dense": _dense,  # Keras Dense kernel (in, out) -> Linear (out, in)
    "conv1x1_linear": _conv1x1_linear,  # Keras V1 conv_preds (1, 1, in, out) -> Linear
}


@dataclass(frozen=True)
class Entry:
    """One tensor of ours and where it comes from."""

    ours: str
    theirs: str
    layout: str = "same"


@dataclass
class ConversionReport:
    """What a conversion did: how many tensors came from where, and what changed layout."""

    source: str
    model: str
    converted: int = 0
    relayout: dict[str, int] = field(default_factory=dict)  # layout name -> tensor count
    notes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # foreign counters we rebuild (BN steps)

    def summary(self) -> str:
        changes = ", ".join(f"{count} {name}" for name, count in sorted(self.relayout.items()))
        text = f"{self.converted} tensors from {self.source} into {self.model}"
        text += f" (layout changes: {changes})" if changes else ""
        return "; ".join([text, *self.notes])


# --- Where each of our tensors lives in each ecosystem ----------------------------------------


@dataclass(frozen=True)
class Slot:
    """A conv (or the classifier) of ours, with what a foreign naming needs to know about it."""

    block: BlockSpec
    layer: LayerSpec
    role: str  # stem, dw, pw, pwl, head, classifier
    index: int  # block index (0-based), -1 for stem, head and classifier
    stage: int  # timm's stage (a paper row for V2; V1 starts one at each stride-2 row)
    repeat: int  # position inside the stage


ROLE_OF_LAYER = {"conv_dw": "dw", "conv_pw": "pw", "conv_pwl": "pwl"}
OUR_BN = {
    ("depthwise_separable", "dw"): "bn1",
    ("depthwise_separable", "pw"): "bn2",
    ("inverted_residual", "pw"): "bn1",
    ("inverted_residual", "dw"): "bn2",
    ("inverted_residual", "pwl"): "bn3",
}


def _stages(config: ModelConfig) -> list[tuple[int, int]]:
    """(stage, repeat) of every block, from the paper table (not from the resolved strides, so
    the small-input variant keys like the standard net)."""
    positions = []
    if config.arch == "mobilenet_v2":
        for stage, row in enumerate(V2_TABLE[1:-1]):
            positions += [(stage, repeat) for repeat in range(row.n)]
        return positions
    stage, repeat = -1, 0
    for row in V1_TABLE[1:]:
        for _ in range(row.n):
            if row.s == 2 or stage < 0:  # timm's V1 stages begin at each stride-2 row
                stage, repeat = stage + 1, 0
            positions.append((stage, repeat))
            repeat += 1
    return positions


def slots(config: ModelConfig) -> list[Slot]:
    """Every conv and the classifier of the resolved spec, in order, with naming facts."""
    positions = iter(_stages(config))
    result = []
    for block in resolve(config).blocks:
        if block.name.startswith("blocks."):
            index = int(block.name.split(".")[1])
            stage, repeat = next(positions)
            for layer in block.layers:
                role = ROLE_OF_LAYER[layer.name.rsplit(".", 1)[1]]
                result.append(Slot(block, layer, role, index, stage, repeat))
        else:
            (layer,) = block.layers
            result.append(Slot(block, layer, block.name, -1, -1, -1))
    return result


def _our_bn(slot: Slot) -> str:
    if slot.role in ("stem", "head"):
        return f"{slot.block.name}.bn"
    return f"{slot.block.name}.{OUR_BN[slot.block.kind, slot.role]}"


def _torch_bn(ours: str, theirs: str) -> list[Entry]:
    names = ("weight", "bias", "running_mean", "running_var")
    return [Entry(f"{ours}.{name}", f"{theirs}.{name}") for name in names]


def _keras_bn(ours: str, theirs: str) -> list[Entry]:
    names = (
        ("weight", "gamma"),
        ("bias", "beta"),
        ("running_mean", "moving_mean"),
        ("running_var", "moving_variance"),
    )
    return [Entry(f"{ours}.{a}", f"{theirs}/{b}") for a, b in names]


def _torchvision_names(slot: Slot, config: ModelConfig) -> tuple[str, str | None]:
    """torchvision's mobilenet_v2: features.0 stem, features.1..17 blocks, features.18 head."""
    if slot.role == "stem":
        return "features.0.0", "features.0.1"
    if slot.role == "head":
        last = len(_stages(config)) + 1
        return f"features.{last}.0", f"features.{last}.1"
    if slot.role == "classifier":
        return "classifier.1", None
    prefix = f"features.{slot.index + 1}.conv"
    if slot.block.expansion == 1:  # [dw conv+bn], pwl conv, bn
        return {"dw": (f"{prefix}.0.0", f"{prefix}.0.1"), "pwl": (f"{prefix}.1", f"{prefix}.2")}[
            slot.role
        ]
    return {
        "pw": (f"{prefix}.0.0", f"{prefix}.0.1"),
        "dw": (f"{prefix}.1.0", f"{prefix}.1.1"),
        "pwl": (f"{prefix}.2", f"{prefix}.3"),
    }[slot.role]


def _timm_names(slot: Slot, config: ModelConfig) -> tuple[str, str | None]:
    """timm's efficientnet-builder MobileNets: conv_stem/bn1, blocks.STAGE.I, conv_head/bn2."""
    if slot.role == "stem":
        return "conv_stem", "bn1"
    if slot.role == "head":
        return "conv_head", "bn2"
    if slot.role == "classifier":
        return "classifier", None
    prefix = f"blocks.{slot.stage}.{slot.repeat}"
    if slot.block.kind == "depthwise_separable" or slot.block.expansion == 1:
        # timm's DepthwiseSeparableConv: conv_dw/bn1 then conv_pw/bn2 (V2's first block too).
        names = {"dw": ("conv_dw", "bn1"), "pw": ("conv_pw", "bn2"), "pwl": ("conv_pw", "bn2")}
    else:
        names = {"pw": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"), "pwl": ("conv_pwl", "bn3")}
    conv, bn = names[slot.role]
    return f"{prefix}.{conv}", f"{prefix}.{bn}"


def _keras_names(slot: Slot, config: ModelConfig) -> tuple[str, str | None]:
    """Keras applications layer names (mobilenet.py and mobilenet_v2.py)."""
    if config.arch == "mobilenet_v1":
        if slot.role == "stem":
            return "conv1", "conv1_bn"
        if slot.role == "classifier":
            return "conv_preds", None
        layer = f"conv_{slot.role}_{slot.index + 1}"
        return layer, f"{layer}_bn"
    if slot.role == "stem":
        return "Conv1", "bn_Conv1"
    if slot.role == "head":
        return "Conv_1", "Conv_1_bn"
    if slot.role == "classifier":
        return "predictions", None
    prefix = "expanded_conv" if slot.index == 0 else f"block_{slot.index}"
    suffix = {"pw": "expand", "dw": "depthwise", "pwl": "project"}[slot.role]
    return f"{prefix}_{suffix}", f"{prefix}_{suffix}_BN"


NAMERS = {"torchvision": _torchvision_names, "timm": _timm_names, "keras": _keras_names}


def key_map(config: ModelConfig, source: str) -> list[Entry]:
    """Every tensor of the model for ``config`` and the foreign key it is read from."""
    check_source(source)
    if source == "torchvision" and config.arch != "mobilenet_v2":
        raise MobileNetsError(
            f"torchvision has no {config.arch}; it ships mobilenet_v2 (and V3) only"
        )
    entries = []
    for slot in slots(config):
        conv, bn = NAMERS[source](slot, config)
        if source == "keras":
            if slot.role == "classifier":
                layout = "conv1x1_linear" if config.arch == "mobilenet_v1" else "dense"
                entries += [Entry(f"{slot.layer.name}.weight", f"{conv}/kernel", layout)]
                entries += [Entry(f"{slot.layer.name}.bias", f"{conv}/bias")]
                continue
            layout = "depthwise_hwc1" if slot.role == "dw" else "conv_hwio"
            entries.append(Entry(f"{slot.layer.name}.weight", f"{conv}/kernel", layout))
            entries += _keras_bn(_our_bn(slot), bn)
            continue
        entries.append(Entry(f"{slot.layer.name}.weight", f"{conv}.weight"))
        if slot.role == "classifier":
            entries.append(Entry(f"{slot.layer.name}.bias", f"{conv}.bias"))
        else:
            entries += _torch_bn(_our_bn(slot), bn)
    return entries


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise MobileNetsError(f"weights source must be one of {', '.join(SOURCES)}, got {source!r}")


# --- Conversion -------------------------------------------------------------------------------


def convert_state_dict(
    foreign: dict[str, torch.Tensor | np.ndarray], config: ModelConfig, source: str
) -> tuple[dict[str, torch.Tensor], ModelConfig, ConversionReport]:
    """Our state dict from a foreign one, the config with the source's numerics, and a report.

    Raises MobileNetsError listing every missing foreign key, unused foreign key and tensor of
    the wrong shape (a file for another architecture or alpha fails here).
    """
    check_source(source)
    config = config.replace(**SOURCE_NUMERICS[source])
    expected = build_model(config).state_dict()
    entries = key_map(config, source)
    report = ConversionReport(source, config.name)
    tensors = {key: torch.as_tensor(np.asarray(value)) for key, value in foreign.items()}
    counters = [key for key in tensors if key.endswith("num_batches_tracked")]
    report.ignored = counters
    used, missing, shapes, state = set(counters), [], [], {}
    for entry in entries:
        if entry.theirs not in tensors:
            missing.append(entry.theirs)
            continue
        used.add(entry.theirs)
        value = tensors[entry.theirs].float()
        try:
            value = LAYOUTS[entry.layout](value)
        except (RuntimeError, IndexError) as error:
            shapes.append(f"{entry.theirs} {tuple(value.shape)} ({entry.layout}: {error})")
            continue
        want = expected[entry.ours].shape
        if entry.ours.startswith("classifier.") and value.shape[0] == want[0] + 1:
            value = value[1:]  # TF-slim's 1001 classes: row 0 is "background"
            note = "dropped class 0 (background) of a 1001-class classifier"
            if note not in report.notes:
                report.notes.append(note)
        if value.shape != want:
            shapes.append(f"{entry.theirs} {tuple(value.shape)} -> {entry.ours} {tuple(want)}")
            continue
        state[entry.ours] = value.contiguous()
        if entry.layout != "same":
            report.relayout[entry.layout] = report.relayout.get(entry.layout, 0) + 1
    unused = [key for key in tensors if key not in used]
    problems = [
        f"{len(items)} {label} ({'; '.join(items[:SHOWN])}{'; ...' if len(items) > SHOWN else ''})"
        for label, items in (
            ("foreign keys missing", missing),
            ("foreign keys unused", unused),
            ("tensors of another shape", shapes),
        )
        if items
    ]
    if problems:
        raise MobileNetsError(f"{source} weights do not fit {config.name}: " + ", ".join(problems))
    for key, value in expected.items():  # BN step counters: not weights, start at zero
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    report.converted = len(entries)
    return state, config, report


# --- Reading foreign files ----------------------------------------------------------------------


def read_foreign(path: str | os.PathLike, source: str) -> dict[str, torch.Tensor | np.ndarray]:
    """The tensors of a torchvision/timm state dict (.pth, .pt, .bin, .safetensors) or of a
    Keras HDF5 weights file (Keras 2 or Keras 3 layout), keyed as the key map expects."""
    check_source(source)
    if source == "keras":
        return read_keras_h5(path)
    return read_state_dict(path)


KERAS_BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")


def read_keras_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Keras weights as ``{"layer/weight": array}``, from any of the HDF5 layouts:

    - Keras 2 (the official download files): one group per layer, listed in the root's
      ``layer_names``; each names its weights ``conv_dw_1/depthwise_kernel:0``.
    - Keras 3's legacy writer: the same groups, weights named ``conv_dw_1/kernel``.
    - Either inside a ``model_weights`` group (a whole model saved with ``model.save``).
    - Keras 3's ``.weights.h5``: ``layers/<class>/vars/<i>`` with the layer name in an attribute.

    ``depthwise_kernel`` is read as ``kernel``: the key map names one kernel per layer. h5py is
    the ``keras`` extra.
    """
    path = Path(path)
    if not path.is_file():
        raise MobileNetsError(f"Keras weights file {str(path)!r} does not exist")
    h5py = require("h5py", "reading Keras .h5 weights")
    try:
        with h5py.File(path, "r") as handle:
            if "layers" in handle and "layer_names" not in handle.attrs:
                return _read_keras3_weights(handle)
            group = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" not in group.attrs:
                raise MobileNetsError(
                    f"{str(path)!r} is an HDF5 file but not Keras weights (no layer_names)"
                )
            return _read_keras_legacy(group)
    except OSError as error:
        raise MobileNetsError(f"cannot read Keras weights file {str(path)!r}: {error}") from error


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_keras_legacy(group) -> dict[str, np.ndarray]:
    weights = {}
    for layer in map(_text, group.attrs["layer_names"]):
        layer_group = group[layer]
        for name in map(_text, layer_group.attrs.get("weight_names", [])):
            short = name.rsplit("/", 1)[-1].split(":")[0]
            short = "kernel" if short == "depthwise_kernel" else short
            weights[f"{layer}/{short}"] = np.asarray(layer_group[name])
    return weights


def _read_keras3_weights(handle) -> dict[str, np.ndarray]:
    weights = {}
    for group in handle["layers"].values():
        variables = group.get("vars")
        if variables is None or len(variables) == 0:
            continue
        layer = _text(variables.attrs.get("name", ""))
        arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        if len(arrays) == 4:  # BatchNormalization, in Keras's variable order
            names = KERAS_BN_VARS
        else:  # Conv2D / DepthwiseConv2D (kernel) and Dense or a biased conv (kernel, bias)
            names = ("kernel", "bias")[: len(arrays)]
        weights.update(
            {f"{layer}/{name}": array for name, array in zip(names, arrays, strict=True)}
        )
    return weights


def detect_source(path: str | os.PathLike) -> str | None:
    """The ecosystem a weights file comes from, judged by its suffix and key names; None for
    anything else (our own files among them)."""
    if Path(path).suffix in (".h5", ".hdf5", ".keras"):
        return "keras"
    keys = read_state_dict(path).keys()
    if any(key.startswith("features.") for key in keys):
        return "torchvision"
    if any(key.startswith("conv_stem.") for key in keys):
        return "timm"
    return None


def convert_file(
    path: str | os.PathLike, source: str, config: ModelConfig
) -> tuple[dict[str, torch.Tensor], ModelConfig, ConversionReport]:
    """Read and convert one foreign weights file for the model ``config`` describes."""
    return convert_state_dict(read_foreign(path, source), config, source)
