"""How an image becomes a model's input tensor, recorded with every weights file.

A [`Preprocessing`][mobilenets.core.preprocessing.Preprocessing] travels with the weights it belongs
to: the published weights records ([`mobilenets.zoo.pretrained`][mobilenets.zoo.pretrained]) carry
their publisher's, and every checkpoint a run writes carries its training data's, so that evaluation
and prediction read images as training did. It is a record; the transforms that carry it out are
built by [`mobilenets.data.transforms`][mobilenets.data.transforms].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    ``resize`` is the shorter side an image is resized to before a center crop of
    ``resolution`` (the ImageNet 256 -> 224 habit); ``None`` resizes straight to ``resolution``.
    """

    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    resize: int | None = None
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        data = dict(data)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)

    def replace(self, **changes) -> Preprocessing:
        return dataclasses.replace(self, **changes)

    def at(self, resolution: int) -> Preprocessing:
        """The same pipeline for another input size: resize and crop scale together."""
        if resolution == self.resolution:
            return self
        scaled = None if self.resize is None else round(self.resize * resolution / self.resolution)
        return self.replace(resolution=resolution, resize=scaled)


def imagenet_preprocessing(resolution: int, channels: int = 3) -> Preprocessing:
    """ImageNet's evaluation pipeline scaled to ``resolution``: resize to resolution / 0.875."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
    return Preprocessing(resolution, mean, std, channels, resize=round(resolution / 0.875))
