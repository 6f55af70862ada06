"""Detection transforms: the SSD training augmentation and the evaluation resize.

Both take ``(image, target)``: a PIL image (or uint8 tensor) and a dict whose ``boxes`` are a
``tv_tensors.BoundingBoxes`` in pixel (x1, y1, x2, y2), as the datasets in
[`mobilenets.data.detection`][mobilenets.data.detection] return them; both give a float image
``[3, H, W]`` normalized with the backbone's mean and std, and ``boxes`` as a plain float tensor
``[K, 4]`` (x1, y1, x2, y2) normalized to [0, 1]. Per-box fields (``labels``, and ``difficult`` or
``iscrowd`` when present) are filtered together with the boxes; other keys pass unchanged.

The training pipeline is the SSD paper's section 2.2 augmentation, composed from
torchvision.transforms.v2 as torchvision's SSD reference recipe does: photometric distortion,
zoom-out ("expansion", up to 4x, filled with the mean colour), the IoU-constrained random crop,
horizontal flip, then the resize to the model's square input.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from mobilenets.data.classification import Preprocessing

# Fields of a target that hold one entry per box and must be filtered with the boxes.
PER_BOX_FIELDS = ("labels", "difficult", "iscrowd")


def _per_box_fields(sample) -> tuple[torch.Tensor, ...]:
    target = sample[1]
    return tuple(target[key] for key in PER_BOX_FIELDS if key in target)


class _NormalizeBoxes(T.Transform):
    """Pixel BoundingBoxes -> a plain tensor normalized by the image size (the model's input)."""

    def transform(self, inpt, params):
        if not isinstance(inpt, tv_tensors.BoundingBoxes):
            return inpt
        height, width = inpt.canvas_size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        return (inpt.as_subclass(torch.Tensor).float() / scale).clamp(0, 1)


class DetectionTransform:
    """A v2 pipeline called as ``transform(image, target)`` or ``transform((image, target))``
    (the second form lets [`seeded`][mobilenets.data.common.seeded] fix its randomness)."""

    def __init__(self, steps: list) -> None:
        self.pipeline = T.Compose(steps)

    def __call__(self, *sample):
        if len(sample) == 1:
            (sample,) = sample
        image, target = sample
        return self.pipeline(image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


def _resize_and_normalize(preprocessing: Preprocessing) -> list:
    size = (preprocessing.resolution, preprocessing.resolution)
    interpolation = InterpolationMode(preprocessing.interpolation)
    return [
        T.Resize(size, interpolation, antialias=True),
        # After the resize, so min_size=1 means one pixel of the model's input.
        T.SanitizeBoundingBoxes(min_size=1, labels_getter=_per_box_fields),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(preprocessing.mean, preprocessing.std),
        _NormalizeBoxes(),
    ]


def train_transform(
    preprocessing: Preprocessing, zoom_out: float = 4.0, photometric: bool = True
) -> DetectionTransform:
    """SSD augmentation at ``preprocessing.resolution``; ``zoom_out`` is the largest expansion
    (the paper's 4x; 1 turns it off)."""
    fill = tuple(round(255 * value) for value in preprocessing.mean)
    steps = [T.ToImage(), T.RGB()]
    if photometric:
        steps.append(T.RandomPhotometricDistort(p=0.5))
    if zoom_out > 1:
        steps.append(
            T.RandomZoomOut(
                fill={tv_tensors.Image: fill, "others": 0}, side_range=(1.0, zoom_out), p=0.5
            )
        )
    steps += [T.RandomIoUCrop(), T.RandomHorizontalFlip(p=0.5)]
    return DetectionTransform(steps + _resize_and_normalize(preprocessing))


def eval_transform(preprocessing: Preprocessing) -> DetectionTransform:
    """Resize to the model's square input (no crop: every box stays) and normalize."""
    return DetectionTransform([T.ToImage(), T.RGB(), *_resize_and_normalize(preprocessing)])


def make_train_transform(preprocessing: Preprocessing, augment: str) -> DetectionTransform:
    if augment == "ssd":
        return train_transform(preprocessing)
    # Flips only: objects keep their size, which a short run from scratch learns faster.
    return DetectionTransform([T.RandomHorizontalFlip(p=0.5), eval_transform(preprocessing)])
