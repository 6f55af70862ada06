"""Segmentation transforms: DeepLab's training augmentation and the full-size evaluation.

Both take ``(image, mask)``: a PIL RGB image and a PIL mode "L" (or "P") mask of class indices, as
the datasets in [`mobilenets.data.segmentation`][mobilenets.data.segmentation] return them (a uint8
image tensor and a ``tv_tensors.Mask`` work too). Both give a float32 image ``[3, H, W]``
normalized with the backbone's mean and std and an int64 mask ``[H, W]`` in which
``IGNORE_INDEX`` (255) marks pixels no loss or metric counts.

Training is the DeepLab recipe (the TF DeepLab input pipeline that MobileNetV2's section 6.3
trains with), composed from torchvision.transforms.v2: the whole image scaled by a random factor
in [0.5, 2.0] (bilinear for the image, nearest for the mask), padded to at least the crop with the
mean pixel (0 after normalization) and 255 in the mask, a random crop, a random horizontal flip.
Evaluation keeps the image's own size: DeepLab scores at the original resolution.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from mobilenets.core.preprocessing import Preprocessing
from mobilenets.data.detection import detection_preprocessing
from mobilenets.data.segmentation import IGNORE_INDEX

# DeepLab's training crop for PASCAL VOC (Chen et al. 2017, "Rethinking Atrous Convolution",
# section 4.1): 513 x 513.
CROP = 513


class RandomScale(T.Transform):
    """Resize by a factor drawn uniformly from ``scale``, the aspect ratio kept.

    v2's ``ScaleJitter`` and ``RandomResize`` draw a size relative to a fixed target; DeepLab
    scales each image relative to itself. torchvision resizes a ``tv_tensors.Mask`` with nearest
    neighbours whatever ``interpolation`` says, so labels are never blended.
    """

    def __init__(self, scale: tuple[float, float], interpolation=InterpolationMode.BILINEAR):
        super().__init__()
        self.scale, self.interpolation = scale, interpolation

    def make_params(self, flat_inputs: list) -> dict:
        height, width = T.query_size(flat_inputs)
        low, high = self.scale
        factor = low + (high - low) * float(torch.rand(()))
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt, params: dict):
        return self._call_kernel(
            F.resize, inpt, size=params["size"], interpolation=self.interpolation, antialias=True
        )


class SegmentationTransform:
    """A v2 pipeline called as ``transform(image, mask)`` or ``transform((image, mask))`` (the
    second form lets [`seeded`][mobilenets.data.common.seeded] fix its randomness); returns plain
    tensors."""

    def __init__(self, steps: list) -> None:
        self.pipeline = T.Compose(steps)

    def __call__(self, *sample) -> tuple[torch.Tensor, torch.Tensor]:
        if len(sample) == 1:
            (sample,) = sample
        image, mask = sample
        if not isinstance(mask, torch.Tensor):
            mask = torch.from_numpy(np.array(mask, dtype=np.uint8))  # a "P" mask: its indices
        image, mask = self.pipeline(image, tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


# The image as float in [0, 1] (so that padding can take the exact mean), the mask as int64.
_TO_FLOAT = T.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True)


def train_transform(
    preprocessing: Preprocessing,
    crop: int = CROP,
    scale: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
) -> SegmentationTransform:
    """DeepLab's augmentation to ``crop x crop``: random scale in ``scale``, padding (mean pixel,
    255), random crop, horizontal flip when ``flip``. An image smaller than the crop is padded
    on every side (``RandomCrop(pad_if_needed=True)``), so all of it lands at a random place in
    the crop; DeepLab pads bottom and right only."""
    fill = {tv_tensors.Image: tuple(preprocessing.mean), tv_tensors.Mask: IGNORE_INDEX}
    steps = [
        T.ToImage(),
        T.RGB(),
        RandomScale(scale, InterpolationMode(preprocessing.interpolation)),
        _TO_FLOAT,
        T.RandomCrop(crop, pad_if_needed=True, fill=fill),
    ]
    if flip:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    steps.append(T.Normalize(preprocessing.mean, preprocessing.std))
    return SegmentationTransform(steps)


def eval_transform(preprocessing: Preprocessing) -> SegmentationTransform:
    """The full-size image normalized and its int64 mask: no resize, no crop."""
    steps = [T.ToImage(), T.RGB(), _TO_FLOAT, T.Normalize(preprocessing.mean, preprocessing.std)]
    return SegmentationTransform(steps)


def segmentation_preprocessing(backbone_weights: str | None, crop: int = CROP) -> Preprocessing:
    """The input normalization the backbone weights were trained with (as for detection: Keras
    [-1, 1], ImageNet's mean and std otherwise); ``resolution`` records the training crop."""
    return detection_preprocessing(crop, backbone_weights)
