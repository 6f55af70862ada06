"""Using a trained checkpoint: rebuild it from the file alone, evaluate it, predict with it.

A checkpoint is a safetensors file that :func:`mobilenets.train.fit` wrote (``best`` or
``last``): the weights, and in the metadata the model config, class names, preprocessing and
training config. A run folder stands for its ``best.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mobilenets import data as datasets
from mobilenets.errors import MobileNetsError
from mobilenets.models import MobileNet
from mobilenets.train import (
    METADATA_PREFIX,
    STATE_FILE,
    Evaluation,
    TrainConfig,
    evaluate,
    make_loader,
    pick_device,
)
from mobilenets.weights import load_model, read_metadata


@dataclass
class Checkpoint:
    model: MobileNet
    classes: tuple[str, ...]
    preprocessing: datasets.Preprocessing
    path: Path
    train_config: dict | None = None
    metrics: dict | None = None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The model, class names and preprocessing stored in a checkpoint (or a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    if path.suffix == ".pt" or path.name == STATE_FILE.name:
        raise MobileNetsError(
            f"{str(path)!r} is a training state for --resume; give best.safetensors or "
            "last.safetensors from the run folder"
        )
    model = load_model(path)
    metadata = read_metadata(path)
    try:
        values = {
            key[len(METADATA_PREFIX) :]: json.loads(value)
            for key, value in metadata.items()
            if key.startswith(METADATA_PREFIX)
        }
        classes = tuple(values["classes"])
        preprocessing = datasets.Preprocessing.from_dict(values["preprocessing"])
    except (KeyError, TypeError, ValueError) as error:
        raise MobileNetsError(
            f"{str(path)!r} holds weights but no class names or preprocessing (it was not "
            "written by mobilenets train)"
        ) from error
    if len(classes) != model.num_classes:
        raise MobileNetsError(
            f"{str(path)!r} names {len(classes)} classes for a {model.num_classes}-class model"
        )
    return Checkpoint(
        model.eval(), classes, preprocessing, path, values.get("train_config"),
        values.get("metrics"),
    )  # fmt: skip


def check_classes(checkpoint: Checkpoint, classes: tuple[str, ...], data: str) -> None:
    """Refuse data whose classes are not the checkpoint's, in the same order."""
    if tuple(classes) == checkpoint.classes:
        return
    shown = ", ".join(checkpoint.classes[:5]) + (", ..." if len(checkpoint.classes) > 5 else "")
    theirs = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    raise MobileNetsError(
        f"checkpoint {str(checkpoint.path)!r} has {len(checkpoint.classes)} classes ({shown}); "
        f"--data {data!r} has {len(classes)} ({theirs})"
    )


def evaluate_checkpoint(checkpoint: Checkpoint, data: str, *, batch_size: int = 256,
                        workers: int = 0, device: str = "auto",
                        progress: bool = True) -> Evaluation:  # fmt: skip
    """Top-1, top-5 and the confusion matrix on the validation split of ``data``, with the
    checkpoint's own preprocessing."""
    preprocessing = checkpoint.preprocessing
    splits = datasets.load_splits(data, preprocessing.resolution)
    check_classes(checkpoint, splits.classes, data)
    splits.val.transform = preprocessing.eval_transform()
    target = pick_device(device)
    config = TrainConfig(batch_size=batch_size, workers=workers)
    sampler = datasets.EpochSampler(len(splits.val), shuffle=False, batch_size=batch_size)
    loader = make_loader(splits.val, sampler, config, target)
    model = checkpoint.model.to(target)
    return evaluate(model, loader, len(checkpoint.classes), device=target, progress=progress)


@dataclass(frozen=True)
class Prediction:
    path: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]


@torch.no_grad()
def predict(checkpoint: Checkpoint, paths: list[str | os.PathLike], topk: int = 5,
            device: str = "cpu") -> list[Prediction]:  # fmt: skip
    """The ``topk`` classes and probabilities for each image file."""
    if not isinstance(topk, int) or topk < 1:
        raise MobileNetsError(f"topk must be a positive integer, got {topk!r}")
    topk = min(topk, len(checkpoint.classes))
    transform = checkpoint.preprocessing.eval_transform()
    images = torch.stack([transform(datasets.open_image(path)) for path in paths])
    target = pick_device(device)
    model = checkpoint.model.to(target).eval()
    probabilities = model(images.to(target)).float().softmax(1).cpu()
    values, indices = probabilities.topk(topk, 1)
    return [
        Prediction(
            str(path),
            tuple(checkpoint.classes[i] for i in row_indices.tolist()),
            tuple(row_values.tolist()),
        )
        for path, row_values, row_indices in zip(paths, values, indices, strict=True)
    ]
