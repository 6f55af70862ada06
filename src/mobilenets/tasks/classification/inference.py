"""Predicting with a classifier checkpoint: the top classes of image files.

A checkpoint
([`mobilenets.engine.checkpoint.load_checkpoint`][mobilenets.engine.checkpoint.load_checkpoint])
rebuilds from the file alone: the weights, and in the metadata the model config, class names and
preprocessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.data.common import open_image
from mobilenets.data.transforms import eval_transform
from mobilenets.engine.checkpoint import Checkpoint
from mobilenets.engine.device import pick_device
from mobilenets.engine.evaluate import check_tta, tta_log_probabilities


@dataclass(frozen=True)
class Prediction:
    path: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]


@torch.no_grad()
def predict(
    checkpoint: Checkpoint,
    paths: list[str | os.PathLike],
    topk: int = 5,
    device: str = "cpu",
    tta: str = "none",
) -> list[Prediction]:
    """The ``topk`` classes and probabilities for each image file; ``tta="flip"`` gives the
    mean probabilities of each image and its mirror (see
    [`evaluate`][mobilenets.engine.evaluate.evaluate])."""
    if not isinstance(topk, int) or topk < 1:
        raise MobileNetsError(f"topk must be a positive integer, got {topk!r}")
    check_tta(tta)
    topk = min(topk, len(checkpoint.classes))
    transform = eval_transform(checkpoint.preprocessing)
    images = torch.stack([transform(open_image(path)) for path in paths])
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
