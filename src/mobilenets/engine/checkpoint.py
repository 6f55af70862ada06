"""Checkpoints and run state: the writer beside the reader.

A **checkpoint** is a safetensors file of weights whose metadata says how to use them: the model
config (written by [`mobilenets.core.weights.save_weights`][mobilenets.core.weights.save_weights]),
the class names and the preprocessing, and, for a file a run wrote, its training config, epoch and
metrics. [`save_checkpoint`][mobilenets.engine.checkpoint.save_checkpoint] writes one;
[`load_checkpoint`][mobilenets.engine.checkpoint.load_checkpoint] rebuilds a classifier from the
file alone (the detection task reads its own through
[`read_checkpoint_info`][mobilenets.engine.checkpoint.read_checkpoint_info]). A run folder stands
for its ``best.safetensors``.

The **state** of a run (``state/last.pt`` in its folder) is what ``resume`` needs: model,
optimizer, schedule, EMA, grad scaler, RNG state and the position in the epoch. It is written
with ``torch.save`` and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import atomic_path
from mobilenets.core.models import MobileNet, build_model
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import load_model, read_info, save_weights
from mobilenets.zoo import pretrained
from mobilenets.zoo.convert import ConversionReport, convert_file
from mobilenets.zoo.registry import resolve_config

STATE_FILE = Path("state") / "last.pt"  # a run's state, relative to its folder
BEST, LAST = "best.safetensors", "last.safetensors"


# --- Checkpoints ----------------------------------------------------------------------------------


def checkpoint_info(classes, preprocessing: Preprocessing, **extra: Any) -> dict[str, Any]:
    """The metadata entries of a checkpoint: the class names and preprocessing that using the
    weights needs, and any of ``extra`` that is not None (``train_config``, ``epoch``,
    ``metrics``, ``class_ids`` for ImageNet's WordNet ids, ``category_ids`` for COCO's,
    ``source``, ``weights``). Every checkpoint and every export records these."""
    info = {"classes": list(classes), "preprocessing": preprocessing.to_dict()}
    info.update({key: value for key, value in extra.items() if value is not None})
    return info


def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    classes,
    preprocessing: Preprocessing,
    **extra: Any,
) -> Path:
    """Write ``model``'s weights with
    [`checkpoint_info`][mobilenets.engine.checkpoint.checkpoint_info] in the metadata,
    atomically."""
    return save_weights(model, path, checkpoint_info(classes, preprocessing, **extra))


def checkpoint_path(path: str | os.PathLike) -> Path:
    """The weights file a checkpoint argument names: a run folder means its best weights; a
    run's state file is refused with what to give instead."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    if path.suffix == ".pt":
        raise MobileNetsError(
            f"{str(path)!r} is a training state, which resuming a run reads; give {BEST} or "
            f"{LAST} from the run folder"
        )
    return path


def read_checkpoint_info(path: str | os.PathLike, num_classes: int, writer: str) -> dict:
    """A checkpoint's metadata ([`checkpoint_info`][mobilenets.engine.checkpoint.checkpoint_info])
    with the class names checked against the model's ``num_classes``; ``writer`` names the command
    that writes such files, for the error about a file without them."""
    info = read_info(path)
    try:
        info["classes"] = tuple(info["classes"])
        info["preprocessing"] = Preprocessing.from_dict(info["preprocessing"])
    except (KeyError, TypeError, ValueError) as error:
        raise MobileNetsError(
            f"{str(path)!r} holds weights but no class names or preprocessing (it was not "
            f"written by {writer})"
        ) from error
    if len(info["classes"]) != num_classes:
        raise MobileNetsError(
            f"{str(path)!r} names {len(info['classes'])} classes for a {num_classes}-class model"
        )
    return info


@dataclass
class Checkpoint:
    """A classifier with what reading its inputs and naming its outputs needs."""

    model: MobileNet
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    path: Path
    train_config: dict | None = None
    metrics: dict | None = None
    # ImageNet models: the WordNet id of each class, which names the folders of ImageNet's
    # validation set; None for a model trained on its own classes.
    class_ids: tuple[str, ...] | None = None

    def info(self, resolution: int | None = None, **extra: Any) -> dict[str, Any]:
        """The checkpoint's metadata
        ([`checkpoint_info`][mobilenets.engine.checkpoint.checkpoint_info]) for a file made from it,
        with the preprocessing at ``resolution`` when given."""
        preprocessing = (
            self.preprocessing if resolution is None else self.preprocessing.at(resolution)
        )
        class_ids = list(self.class_ids) if self.class_ids else None
        return checkpoint_info(
            self.classes, preprocessing, class_ids=class_ids, metrics=self.metrics or None, **extra
        )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The classifier, class names and preprocessing stored in a checkpoint (or a run folder)."""
    path = checkpoint_path(path)
    model = load_model(path)
    info = read_checkpoint_info(path, model.num_classes, "mobilenets train")
    class_ids = info.get("class_ids")
    return Checkpoint(
        model.eval(),
        info["classes"],
        info["preprocessing"],
        path,
        info.get("train_config"),
        info.get("metrics"),
        tuple(class_ids) if class_ids else None,
    )


def pretrained_checkpoint(name: str, weights: str, progress: bool = True) -> Checkpoint:
    """Published weights as a Checkpoint: the model, its class names (ImageNet's 1000 with their
    WordNet ids, or those our own file records) and the preprocessing of the weights record."""
    config = resolve_config(name)
    model, record, path = pretrained.load_pretrained(config, weights, progress=progress)
    metrics = {"top1": record.top1, "top5": record.top5}
    preprocessing = record.preprocessing_for(model.config.resolution)
    if record.source == pretrained.OURS:  # a checkpoint of ours: its own classes
        info = read_checkpoint_info(path, model.num_classes, "mobilenets train")
        return Checkpoint(model, info["classes"], preprocessing, path, metrics=metrics)
    return Checkpoint(
        model,
        pretrained.imagenet_categories(),
        preprocessing,
        path,
        metrics=metrics,
        class_ids=pretrained.imagenet_synsets(),
    )


def convert_to_checkpoint(
    source_file: str | os.PathLike,
    source: str,
    name: str,
    out: str | os.PathLike,
    *,
    tf_port: bool = False,
) -> tuple[ModelConfig, ConversionReport]:
    """Convert a torchvision, timm or Keras weights file into our weights file ``out`` for the
    registered model ``name``; an ImageNet classifier (1000 classes) becomes a checkpoint with
    the ImageNet class names and WordNet ids and the preprocessing of the publisher's record
    (or the publisher's usual one). Returns the model config (with the file's numerics) and
    the conversion report. ``tf_port``: a timm port of TF weights (``tf_mobilenetv3_*``), read
    with TF's padding and BN epsilon."""
    config = resolve_config(name)
    state, config, report = convert_file(source_file, source, config, tf_port=tf_port)
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    info = {"source": source, "source_file": Path(source_file).name}
    if config.num_classes == 1000:  # an ImageNet classifier: keep its classes and inputs
        try:
            record = pretrained.find_record(config, source)
            preprocessing = record.preprocessing_for(config.resolution)
        except MobileNetsError:  # no published record: the ecosystem's usual evaluation
            preprocessing = pretrained.default_preprocessing(source, config.resolution)
        info = checkpoint_info(
            pretrained.imagenet_categories(),
            preprocessing,
            class_ids=list(pretrained.imagenet_synsets()),
            **info,
        )
    save_weights(model, out, info)
    return config, report


def check_classes(checkpoint: Checkpoint, classes: tuple[str, ...], data: str) -> None:
    """Refuse data whose classes are not the checkpoint's, in the same order."""
    if tuple(classes) == checkpoint.classes:
        return
    shown = ", ".join(checkpoint.classes[:5]) + (", ..." if len(checkpoint.classes) > 5 else "")
    theirs = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    raise MobileNetsError(
        f"checkpoint {str(checkpoint.path)!r} has {len(checkpoint.classes)} classes ({shown}); "
        f"data={data!r} has {len(classes)} ({theirs})"
    )


# --- Run state ------------------------------------------------------------------------------------


def save_state(path: str | os.PathLike, state: dict) -> None:
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_state(path: str | os.PathLike) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling raises many types; all mean the same here
        raise MobileNetsError(f"cannot read run state {str(path)!r}: {error}") from error


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
