"""Weights from torchvision, timm and Keras, converted into our state dicts (MobileNetV4: timm's).

A conversion is a pure function from a foreign mapping of tensors to our state dict plus a
report. The key map is generated from the resolved spec (one entry per conv, BN and classifier
tensor), so every variant the spec can express maps without a hand-written table. Every layout
change lives in [`LAYOUTS`][mobilenets.zoo.convert.LAYOUTS]:

- Keras/TF conv kernels are HWIO ``(kh, kw, in, out)``; ours are OIHW ``(out, in, kh, kw)``.
- Keras depthwise kernels are ``(kh, kw, channels, 1)``; ours ``(channels, 1, kh, kw)``.
- A Keras Dense kernel is ``(in, out)``; a Linear weight ``(out, in)``.
- Keras MobileNet V1 ends in a 1x1 conv classifier ``(1, 1, 1024, classes)``: a Linear; so
  do Keras V3's pre-logits layer and classifier (``conv_2``, ``logits``).
- timm's V3 and V4 pre-logits layer (``conv_head``) is a 1x1 conv ``(out, in, 1, 1)``: a Linear.
- A classifier with one row too many is TF-slim's 1001-class layout; row 0 (background) goes.

The key maps are generated from the spec in [`mobilenets.zoo.keymaps`][mobilenets.zoo.keymaps].
The numerics come with the source: torchvision's V3 trained with BN eps 1e-3 (momentum 0.01),
timm's ``tf_`` ports (``tf_port=True``) and Keras with TF "SAME" padding and eps 1e-3. V3's width
rule comes with the source too (torchvision's, or TF-slim's for timm and Keras): weights of one
rule at an alpha other than 1 are refused for a model of the other.

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
from mobilenets.core.families import families
from mobilenets.core.models import build_model
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import read_state_dict
from mobilenets.zoo.keymaps import SOURCES as SOURCES  # the key maps are read from here too
from mobilenets.zoo.keymaps import check_source, is_v3, is_v4, keras3_v3_name
from mobilenets.zoo.keymaps import key_map as key_map

# The numerics each ecosystem trained with (STYLE.md: part of the spec and the weights record).
SOURCE_NUMERICS = {
    "torchvision": {"padding": "symmetric", "bn_eps": 1e-5},
    "timm": {"padding": "symmetric", "bn_eps": 1e-5},
    "keras": {"padding": "same", "bn_eps": 1e-3},
}
# torchvision.models.mobilenetv3 builds its BN as BatchNorm2d(eps=0.001, momentum=0.01).
TORCHVISION_V3_NUMERICS = {"padding": "symmetric", "bn_eps": 1e-3, "bn_momentum": 0.01}
# TF-trained weights in timm's layout (timm's tf_mobilenetv3_*): TF "SAME" padding, eps 1e-3.
TF_PORT_NUMERICS = {"padding": "same", "bn_eps": 1e-3}
# V3's width rule of each source's files (core.families.V3_WIDTH_RULES).
SOURCE_WIDTH_RULES = {"torchvision": "torchvision", "timm": "tf", "keras": "tf"}
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


def _conv1x1_oihw_linear(array: torch.Tensor) -> torch.Tensor:
    if array.dim() != 4 or array.shape[2:] != (1, 1):
        raise MobileNetsError(f"a 1x1 conv kernel is (out, in, 1, 1), got {tuple(array.shape)}")
    return array[:, :, 0, 0]


LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "same": lambda array: array,
    "conv_hwio": _conv_hwio,  # Keras Conv2D kernel -> OIHW
    "depthwise_hwc1": _depthwise_hwc1,  # Keras DepthwiseConv2D kernel -> (C, 1, kh, kw)
    "dense": _dense,  # Keras Dense kernel (in, out) -> Linear (out, in)
    "conv1x1_linear": _conv1x1_linear,  # Keras 1x1 conv (1, 1, in, out) -> Linear
    "conv1x1_oihw_linear": _conv1x1_oihw_linear,  # timm V3 conv_head (out, in, 1, 1) -> Linear
}


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


# --- Conversion -------------------------------------------------------------------------------


def source_numerics(source: str, arch: str, tf_port: bool = False) -> dict:
    """The padding and BN settings the weights of ``source`` for ``arch`` were trained with;
    ``tf_port``: TF-trained weights in timm's layout (timm's ``tf_*`` models)."""
    check_source(source)
    if tf_port:
        if source != "timm":
            raise MobileNetsError(
                f"tf_port=True is for timm's TF ports (tf_mobilenetv3_*); source is {source!r}"
            )
        return TF_PORT_NUMERICS
    if source == "torchvision" and is_v3(arch):
        return TORCHVISION_V3_NUMERICS
    return SOURCE_NUMERICS[source]


def source_width_config(config: ModelConfig, source: str) -> ModelConfig:
    """``config`` with the V3 width rule of ``source``'s files; refused where the two rules give
    different networks (alpha other than 1) and ``config`` asks for the other one."""
    if not is_v3(config.arch):
        return config
    rule = SOURCE_WIDTH_RULES[source]
    if config.width_rule != rule and config.alpha != 1:
        allowed = config.replace(width_rule=rule)
        raise MobileNetsError(
            f"{source} weights have {rule!r} widths; {config.name} has "
            f"width_rule={config.width_rule!r}, which at alpha {config.alpha:g} is another "
            f"network; allowed: width_rule={rule!r} ({allowed.name})"
        )
    return config.replace(width_rule=rule)


def convert_state_dict(
    foreign: dict[str, torch.Tensor | np.ndarray],
    config: ModelConfig,
    source: str,
    *,
    tf_port: bool = False,
) -> tuple[dict[str, torch.Tensor], ModelConfig, ConversionReport]:
    """Our state dict from a foreign one, the config with the source's numerics (and V3 width
    rule), and a report. ``tf_port``: timm's ports of TF weights (``tf_mobilenetv3_*``).

    Raises MobileNetsError listing every missing foreign key, unused foreign key and tensor of
    the wrong shape (a file for another architecture or alpha fails here).
    """
    numerics = source_numerics(source, config.arch, tf_port)
    config = source_width_config(config, source).replace(**numerics)
    expected = build_model(config).state_dict()
    entries = key_map(config, source)
    report = ConversionReport(source, config.name)
    if source == "keras" and is_v3(config.arch):  # the official files have Keras 2's names
        foreign = {keras3_v3_name(key): value for key, value in foreign.items()}
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
        held = _other_variant(set(tensors) - set(counters), config, source)
        raise MobileNetsError(
            f"{source} weights do not fit {config.name}: {held}" + ", ".join(problems)
        )
    for key, value in expected.items():  # BN step counters: not weights, start at zero
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    report.converted = len(entries)
    return state, config, report


def _variants(source: str) -> list[tuple[str, bool]]:
    """(arch, minimalistic) of every variant whose files share a layout: V3's (Large, Small, each
    minimalistic or not) and, in timm's layout, V4's five."""
    variants = [(arch, mini) for arch in families() if is_v3(arch) for mini in (False, True)]
    if source == "timm":
        variants += [(arch, False) for arch in families() if is_v4(arch)]
    return variants


def _other_variant(keys: set[str], config: ModelConfig, source: str) -> str:
    """ "the file holds mobilenet_v3_small weights, not mobilenet_v3_large's; " when the foreign
    keys are exactly another V3 or V4 variant's (a Small file for a Large model, a Conv-M file
    for a Conv-S model, a V3 file for a V4 model), else ""."""
    ours = (config.arch, config.minimalistic)
    if ours not in _variants(source):
        return ""
    for arch, minimalistic in _variants(source):
        if (arch, minimalistic) == ours:
            continue
        rule = SOURCE_WIDTH_RULES[source] if is_v3(arch) else None
        try:
            other = config.replace(arch=arch, minimalistic=minimalistic, width_rule=rule)
        except MobileNetsError:  # a setting the other family lacks (V4's hybrids at OS 8)
            continue
        if keys == {entry.theirs for entry in key_map(other, source)}:
            held = f"{arch}{' minimalistic' if minimalistic else ''}"
            wanted = f"{config.arch}{' minimalistic' if config.minimalistic else ''}"
            return f"the file holds {held} weights, not {wanted}'s; "
    return ""


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
    path: str | os.PathLike, source: str, config: ModelConfig, *, tf_port: bool = False
) -> tuple[dict[str, torch.Tensor], ModelConfig, ConversionReport]:
    """Read and convert one foreign weights file for the model ``config`` describes."""
    return convert_state_dict(read_foreign(path, source), config, source, tf_port=tf_port)
