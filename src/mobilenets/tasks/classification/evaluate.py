"""Scoring a classifier checkpoint: on the validation split of a dataset, or on an ImageNet-layout
folder.

A checkpoint
([`mobilenets.engine.checkpoint.load_checkpoint`][mobilenets.engine.checkpoint.load_checkpoint])
rebuilds from the file alone: the weights, and in the metadata the model config, class names and
preprocessing. The scores are those of
[`mobilenets.engine.evaluate.evaluate`][mobilenets.engine.evaluate.evaluate].
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision import datasets as tv_datasets

from mobilenets.core.errors import MobileNetsError
from mobilenets.data.classification import load_splits
from mobilenets.data.common import ImageFiles, open_image
from mobilenets.data.transforms import eval_transform
from mobilenets.engine.checkpoint import Checkpoint, check_classes
from mobilenets.engine.device import pick_device
from mobilenets.engine.evaluate import Evaluation
from mobilenets.engine.evaluate import evaluate as evaluate_classifier
from mobilenets.engine.loop import ordered_loader


def evaluate(
    checkpoint: Checkpoint,
    data: str,
    *,
    batch_size: int = 256,
    workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    tta: str = "none",
) -> Evaluation:
    """Top-1, top-5 and the confusion matrix on the validation split of ``data``, with the
    checkpoint's own preprocessing; ``tta="flip"`` also scores each mirror image (see
    [`evaluate`][mobilenets.engine.evaluate.evaluate])."""
    preprocessing = checkpoint.preprocessing
    splits = load_splits(data, preprocessing.resolution)
    check_classes(checkpoint, splits.classes, data)
    splits.val.transform = eval_transform(preprocessing)
    return score_images(checkpoint, splits.val, batch_size, workers, device, progress, tta)


def imagenet_samples(folder: str | os.PathLike, class_ids: tuple[str, ...]) -> list:
    """(path, class index) of every image of an ImageNet-layout validation folder: one
    sub-folder per class, named by WordNet id (``n01440764/*.JPEG``). A subset of the classes
    is fine; ``folder/val`` is used when it exists."""
    root = Path(folder)
    if (root / "val").is_dir():
        root = root / "val"
    if not root.is_dir():
        raise MobileNetsError(f"data={str(folder)!r} is not a folder")
    try:
        found = tv_datasets.ImageFolder(str(root), loader=open_image)
    except FileNotFoundError as error:
        raise MobileNetsError(f"data={str(root)!r}: {error}") from error
    index = {class_id: i for i, class_id in enumerate(class_ids)}
    unknown = [name for name in found.classes if name not in index]
    if unknown:
        raise MobileNetsError(
            f"data={str(root)!r}: class folders must be ImageNet WordNet ids such as "
            f"{class_ids[0]}; found {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}"
        )
    return [(path, index[found.classes[label]]) for path, label in found.samples]


def evaluate_imagenet(
    checkpoint: Checkpoint,
    folder: str | os.PathLike,
    *,
    batch_size: int = 256,
    workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    tta: str = "none",
) -> Evaluation:
    """Top-1 and top-5 of an ImageNet model on an ImageNet-layout validation folder, with the
    checkpoint's own preprocessing (for published weights: their record's)."""
    if checkpoint.class_ids is None:
        raise MobileNetsError(
            f"{str(checkpoint.path)!r} is not an ImageNet model (it records no WordNet ids)"
        )
    samples = imagenet_samples(folder, checkpoint.class_ids)
    images = ImageFiles(samples, eval_transform(checkpoint.preprocessing))
    return score_images(checkpoint, images, batch_size, workers, device, progress, tta)


def score_images(
    checkpoint: Checkpoint,
    images,
    batch_size: int,
    workers: int,
    device: str,
    progress: bool,
    tta: str,
) -> Evaluation:
    """The checkpoint's evaluation of a dataset of ``(image, class index)`` already through its
    evaluation transform, in order, on ``device`` (``"auto"`` picks one)."""
    target = pick_device(device)
    loader = ordered_loader(images, batch_size, workers, target)
    model = checkpoint.model.to(target)
    return evaluate_classifier(
        model, loader, len(checkpoint.classes), device=target, progress=progress, tta=tta
    )
