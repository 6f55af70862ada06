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
from torchvision import datasets as tv_datasets

from mobilenets import data as datasets
from mobilenets import pretrained
from mobilenets.errors import MobileNetsError
from mobilenets.models import MobileNet
from mobilenets.registry import resolve_config
from mobilenets.train import (
    METADATA_PREFIX,
    STATE_FILE,
    Evaluation,
    check_tta,
    evaluate,
    ordered_loader,
    pick_device,
    tta_log_probabilities,
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
    # ImageNet models: the WordNet id of each class, which names the folders of ImageNet's
    # validation set; None for a model trained on its own classes.
    class_ids: tuple[str, ...] | None = None


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
    class_ids = values.get("class_ids")
    return Checkpoint(
        model.eval(), classes, preprocessing, path, values.get("train_config"),
        values.get("metrics"), tuple(class_ids) if class_ids else None,
    )  # fmt: skip


def pretrained_checkpoint(name: str, weights: str, progress: bool = True) -> Checkpoint:
    """Published ImageNet weights as a Checkpoint: the model, the 1000 class names and WordNet
    ids, and the preprocessing of the weights record."""
    config = resolve_config(name)
    model, record, path = pretrained.load_pretrained(config, weights, progress=progress)
    return Checkpoint(
        model, pretrained.imagenet_categories(), record.preprocessing_for(config.resolution),
        path, metrics={"top1": record.top1, "top5": record.top5},
        class_ids=pretrained.imagenet_synsets(),
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
                        workers: int = 0, device: str = "auto", progress: bool = True,
                        tta: str = "none") -> Evaluation:  # fmt: skip
    """Top-1, top-5 and the confusion matrix on the validation split of ``data``, with the
    checkpoint's own preprocessing; ``tta="flip"`` also scores each mirror image (see
    ``train.evaluate``)."""
    preprocessing = checkpoint.preprocessing
    splits = datasets.load_splits(data, preprocessing.resolution)
    check_classes(checkpoint, splits.classes, data)
    splits.val.transform = preprocessing.eval_transform()
    target = pick_device(device)
    loader = ordered_loader(splits.val, batch_size, workers, target)
    model = checkpoint.model.to(target)
    return evaluate(
        model, loader, len(checkpoint.classes), device=target, progress=progress, tta=tta
    )


def imagenet_samples(folder: str | os.PathLike, class_ids: tuple[str, ...]) -> list:
    """(path, class index) of every image of an ImageNet-layout validation folder: one
    sub-folder per class, named by WordNet id (``n01440764/*.JPEG``). A subset of the classes
    is fine; ``folder/val`` is used when it exists."""
    root = Path(folder)
    if (root / "val").is_dir():
        root = root / "val"
    if not root.is_dir():
        raise MobileNetsError(f"--data {str(folder)!r} is not a folder")
    try:
        found = tv_datasets.ImageFolder(str(root), loader=datasets.open_image)
    except FileNotFoundError as error:
        raise MobileNetsError(f"--data {str(root)!r}: {error}") from error
    index = {class_id: i for i, class_id in enumerate(class_ids)}
    unknown = [name for name in found.classes if name not in index]
    if unknown:
        raise MobileNetsError(
            f"--data {str(root)!r}: class folders must be ImageNet WordNet ids such as "
            f"{class_ids[0]}; found {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}"
        )
    return [(path, index[found.classes[label]]) for path, label in found.samples]


def evaluate_imagenet(checkpoint: Checkpoint, folder: str | os.PathLike, *,
                      batch_size: int = 256, workers: int = 0, device: str = "auto",
                      progress: bool = True, tta: str = "none") -> Evaluation:  # fmt: skip
    """Top-1 and top-5 of an ImageNet model on an ImageNet-layout validation folder, with the
    checkpoint's own preprocessing (for published weights: their record's)."""
    if checkpoint.class_ids is None:
        raise MobileNetsError(
            f"{str(checkpoint.path)!r} is not an ImageNet model (it records no WordNet ids)"
        )
    samples = imagenet_samples(folder, checkpoint.class_ids)
    images = datasets.ImageFiles(samples, checkpoint.preprocessing.eval_transform())
    target = pick_device(device)
    loader = ordered_loader(images, batch_size, workers, target)
    model = checkpoint.model.to(target)
    return evaluate(
        model, loader, len(checkpoint.classes), device=target, progress=progress, tta=tta
    )


@dataclass(frozen=True)
class Prediction:
    path: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]


@torch.no_grad()
def predict(checkpoint: Checkpoint, paths: list[str | os.PathLike], topk: int = 5,
            device: str = "cpu", tta: str = "none") -> list[Prediction]:  # fmt: skip
    """The ``topk`` classes and probabilities for each image file; ``tta="flip"`` gives the
    mean probabilities of each image and its mirror (see ``train.evaluate``)."""
    if not isinstance(topk, int) or topk < 1:
        raise MobileNetsError(f"topk must be a positive integer, got {topk!r}")
    check_tta(tta)
    topk = min(topk, len(checkpoint.classes))
    transform = checkpoint.preprocessing.eval_transform()
    images = torch.stack([transform(datasets.open_image(path)) for path in paths])
    target = pick_device(device)
    model = checkpoint.model.to(target).eval()
    probabilities = tta_log_probabilities(model, images.to(target), tta).exp().cpu()
    values, indices = probabilities.topk(topk, 1)
    return [
        Prediction(
            str(path),
            tuple(checkpoint.classes[i] for i in row_indices.tolist()),
            tuple(row_values.tolist()),
        )
        for path, row_values, row_indices in zip(paths, values, indices, strict=True)
    ]
