"""Reading and writing our own weights files, safely.

Files are read with safetensors, or with ``torch.load(weights_only=True)`` for ``.pt``/``.pth``:
never arbitrary pickle. A file that does not fit the model is refused with a report of every
missing, unexpected and mis-shaped key; nothing is loaded with ``strict=False``. Files are
written atomically (a temporary file in the same folder, then a rename), so an interrupted
save never leaves a partial file under the final name.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import atomic_path
from mobilenets.core.models import MobileNet, build_model
from mobilenets.core.spec import ModelConfig

METADATA_PREFIX = "mobilenets."  # every entry save_weights writes: mobilenets.<name> -> JSON
CONFIG_KEY = "config"
CONFIG_METADATA_KEY = METADATA_PREFIX + CONFIG_KEY
PARITY_FIELDS = ("padding", "bn_eps")  # settings that change what the weights compute
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SHOWN = 5  # keys listed per category in a mismatch report


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file; a checkpoint dict's ``state_dict``/``model`` entry."""
    path = Path(path)
    if not path.is_file():
        raise MobileNetsError(
            f"weights file {str(path)!r} does not exist (weights= takes a path to a "
            f".safetensors file or a {'/'.join(TORCH_SUFFIXES)} state dict)"
        )
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        if path.suffix not in TORCH_SUFFIXES:
            raise MobileNetsError(
                f"weights file {str(path)!r} has suffix {path.suffix!r}; allowed: "
                f".safetensors, {', '.join(TORCH_SUFFIXES)}"
            )
        data = torch.load(path, map_location="cpu", weights_only=True)
    except MobileNetsError:
        raise
    except pickle.UnpicklingError as error:
        # weights_only=True refuses anything but tensors and plain containers: never unpickle
        # arbitrary objects from a file.
        raise MobileNetsError(
            f"cannot read weights file {str(path)!r}: it holds pickled objects other than "
            "tensors, which are not loaded (save model.state_dict() instead)"
        ) from error
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as error:
        raise MobileNetsError(f"cannot read weights file {str(path)!r}: {error}") from error
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MobileNetsError(f"weights file {str(path)!r} holds no state dict of tensors")
    return data


def mismatch_report(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Every way ``state`` fails to fit ``model``, one phrase per category; empty if it fits."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("keys with another shape", shapes),
    ):
        if items:
            shown = "; ".join(items[:SHOWN]) + ("; ..." if len(items) > SHOWN else "")
            problems.append(f"{len(items)} {label} ({shown})")
    return problems


def load_weights(model, path: str | os.PathLike) -> None:
    """Load a weights file into ``model`` after checking that every key and shape fits, and
    that a file which records its padding and BN epsilon was saved with the model's."""
    state = read_state_dict(path)
    saved = saved_config(path, type(model.config))
    problems = mismatch_report(model, state)
    if problems:
        origin = f" (saved from {saved.name})" if saved else ""
        raise MobileNetsError(
            f"weights file {str(path)!r}{origin} does not fit {model.name}: " + ", ".join(problems)
        )
    if saved is not None:
        # A detector's or segmenter's numerics are its backbone's.
        theirs_config = getattr(saved, "backbone", saved)
        ours_config = getattr(model.config, "backbone", model.config)
        differ = [
            f"{key} {theirs!r} in the file, {ours!r} in the model"
            for key in PARITY_FIELDS
            if (theirs := getattr(theirs_config, key)) != (ours := getattr(ours_config, key))
        ]
        if differ:
            raise MobileNetsError(
                f"weights file {str(path)!r} was trained with other numerics: "
                + "; ".join(differ)
                + " (build the model with the file's settings, or use mobilenets.load_model)"
            )
    model.load_state_dict(state, strict=True)


def save_weights(model, path: str | os.PathLike, info: Mapping[str, Any] | None = None) -> Path:
    """Write the model's state dict as safetensors, with its config in the metadata, atomically
    (a temporary file in the same folder, then a rename).

    ``info`` adds entries (class names, preprocessing, a training config, metrics: any value JSON
    can write), each stored as ``mobilenets.<name>``;
    [`read_info`][mobilenets.core.weights.read_info] reads them back.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise MobileNetsError(f"save_weights writes .safetensors files, got {str(path)!r}")
    info = dict(info or {})
    if CONFIG_KEY in info:
        raise MobileNetsError(
            f"info key {CONFIG_KEY!r} is the model config, written from the model"
        )
    info[CONFIG_KEY] = model.config.to_dict()
    metadata = {METADATA_PREFIX + key: json.dumps(value) for key, value in info.items()}
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(state, temporary, metadata=metadata)
    return path


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The entries [`save_weights`][mobilenets.core.weights.save_weights] wrote into a safetensors
    file (the model config under ``"config"``), decoded; empty for a file written by another
    program."""
    info = {}
    for key, value in read_metadata(path).items():
        if key.startswith(METADATA_PREFIX):
            try:
                info[key[len(METADATA_PREFIX) :]] = json.loads(value)
            except ValueError as error:
                raise MobileNetsError(
                    f"weights file {str(path)!r} has an unreadable {key!r} entry: {error}"
                ) from error
    return info


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (empty for a file without any)."""
    if not Path(path).is_file():
        read_state_dict(path)  # raises the missing-file error
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise MobileNetsError(f"cannot read weights file {str(path)!r}: {error}") from error


def saved_config(path: str | os.PathLike, config_type: type = ModelConfig):
    """The config of ``config_type`` (a ModelConfig by default; a DetectionConfig or
    SegmentationConfig for those models) recorded in a safetensors file that save_weights wrote;
    None for other files, a record of another kind of model, or one that is absent or unreadable
    (the keys are still checked on load)."""
    if Path(path).suffix != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(CONFIG_METADATA_KEY)
        return config_type.from_dict(json.loads(raw)) if raw else None
    except (SafetensorError, OSError, ValueError):  # MobileNetsError is a ValueError
        return None


def load_saved(
    path: str | os.PathLike, config_type: type, build, *, record: str, factory: str, what: str
):
    """Rebuild a model from a safetensors file that save_weights wrote, config and weights:
    ``build(config)`` for the ``config_type`` the file records. The error for a file without one
    names the ``record`` missing and the ``factory`` that loads the ``what`` it was saved from."""
    config = saved_config(path, config_type)
    if config is None:
        read_state_dict(path)  # reports a missing or unreadable file as such
        raise MobileNetsError(
            f"weights file {str(path)!r} records no {record} config; use "
            f"{factory}(NAME, weights=PATH) with the {what} it was saved from"
        )
    model = build(config)
    load_weights(model, path)
    return model


def load_model(path: str | os.PathLike) -> MobileNet:
    """Rebuild a model from a safetensors file that save_weights wrote: config and weights."""
    return load_saved(
        path,
        ModelConfig,
        build_model,
        record="mobilenets model",
        factory="create_model",
        what="model",
    )
