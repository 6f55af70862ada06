"""The image transforms that carry out a
[`Preprocessing`][mobilenets.core.preprocessing.Preprocessing]: evaluation (resize, crop, normalise)
and the classification training augmentation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from mobilenets.core.preprocessing import Preprocessing


def eval_transform(preprocessing: Preprocessing) -> Callable:
    """PIL image or uint8 CHW tensor -> normalized float tensor of the model's input size."""
    steps = [T.ToImage()]
    interpolation = InterpolationMode(preprocessing.interpolation)
    if preprocessing.resize is None:
        side = preprocessing.resolution
        steps.append(T.Resize((side, side), interpolation, antialias=True))
    else:
        steps += [T.Resize(preprocessing.resize, interpolation, antialias=True)]
        steps += [T.CenterCrop(preprocessing.resolution)]
    return T.Compose(steps + float_steps(preprocessing))


def train_transform(
    preprocessing: Preprocessing, augment: str, random_erasing: float, small: bool
) -> Callable:
    """Training augmentation: pad-and-crop for small images, random-resized crop for large
    ones; flips; TrivialAugment when ``augment == "trivial"``; random erasing last."""
    side = preprocessing.resolution
    interpolation = InterpolationMode(preprocessing.interpolation)
    steps = [T.ToImage()]
    if small:
        steps += [T.Resize((side, side), interpolation, antialias=True)]
        steps += [T.RandomCrop(side, padding=max(1, side // 8))]
    else:
        steps += [T.RandomResizedCrop(side, interpolation=interpolation)]
    steps.append(T.RandomHorizontalFlip())
    if augment == "trivial":
        steps.append(T.TrivialAugmentWide(interpolation=interpolation))
    steps += float_steps(preprocessing)
    if random_erasing > 0:
        steps.append(T.RandomErasing(p=random_erasing, value=0))
    return T.Compose(steps)


def float_steps(preprocessing: Preprocessing) -> list:
    """The steps after the geometry: channels, float in [0, 1], normalisation."""
    steps = [T.Grayscale(1) if preprocessing.channels == 1 else T.RGB()]
    steps += [
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(preprocessing.mean, preprocessing.std),
    ]
    return steps
