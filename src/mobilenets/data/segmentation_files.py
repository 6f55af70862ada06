"""The base of every segmentation dataset: image and mask file pairs, reading and checking masks,
and batching images and masks of different sizes.

A mask holds a class index per pixel; ``IGNORE_INDEX`` (255) marks pixels that no loss or metric
counts. See [`mobilenets.data.segmentation`][mobilenets.data.segmentation] for the datasets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.data.common import open_image, seeded

IGNORE_INDEX = 255


def collate_segmentation(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image [3, H, W], mask [H, W])`` pairs of any sizes: each is padded at the bottom
    and right to the largest height and width in the batch, images with 0 (the mean pixel after
    normalization, as DeepLab pads) and masks with ``IGNORE_INDEX``, so padding is never scored."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], height, width))
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.int64)
    for index, (image, mask) in enumerate(batch):
        images[index, :, : image.shape[-2], : image.shape[-1]] = image
        masks[index, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks


# --- reading masks --------------------------------------------------------------------------------


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A PNG of class indices as uint8 ``[H, W]``: single-channel ("L"), or palette ("P", VOC's
    kind) whose palette index is the class."""
    mask = open_image(path)
    if mask.mode not in ("L", "P"):
        raise MobileNetsError(
            f"mask {str(path)!r} is a mode {mask.mode!r} image; a mask is a single-channel ('L') "
            "or palette ('P') PNG of class indices"
        )
    return np.array(mask, dtype=np.uint8)


def read_sbd_mask(path: str | os.PathLike) -> np.ndarray:
    """An SBD ``cls/*.mat`` file's class map (the struct ``GTcls``, field ``Segmentation``)."""
    scipy_io = require("scipy.io", "reading SBD masks (.mat)")
    try:
        matlab = scipy_io.loadmat(path, squeeze_me=True, struct_as_record=False)
    # A damaged file can fail anywhere in scipy's parser, with IndexError, MatReadError, OSError,
    # ValueError...; whichever it is, the file is what the user must fix.
    except Exception as error:
        raise MobileNetsError(f"cannot read SBD mask {str(path)!r}: {error}") from error
    labels = getattr(matlab.get("GTcls"), "Segmentation", None)
    if not (
        isinstance(labels, np.ndarray)
        and labels.ndim == 2
        and labels.dtype.kind in "ui"
        and (labels.size == 0 or 0 <= labels.min() <= labels.max() <= 255)
    ):
        raise MobileNetsError(
            f"SBD mask {str(path)!r} has no class map: it needs a struct GTcls whose field "
            "Segmentation is a 2-D array of class indices 0..255"
        )
    return labels.astype(np.uint8)


def check_labels(labels: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    """Every value is a class index below ``num_classes`` or ``IGNORE_INDEX``."""
    if labels.size == 0 or labels.max() < num_classes:
        return
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    bad = present[(present >= num_classes) & (present != IGNORE_INDEX)]
    if bad.size:
        raise MobileNetsError(
            f"mask {str(path)!r} holds values {bad.tolist()}; allowed are the class indices "
            f"0..{num_classes - 1} and {IGNORE_INDEX} (ignore)"
        )


def read_split_names(path: Path, hint: str) -> list[str]:
    try:
        return path.read_text().split()
    except OSError as error:
        raise MobileNetsError(
            f"cannot read the split file {str(path)!r} ({hint}): {error}"
        ) from error


# --- datasets -------------------------------------------------------------------------------------


class SegmentationFiles(Dataset):
    """Pairs of image and mask files; the base of every dataset here.

    ``files[index]`` is ``(image file, mask file)``: a PNG mask (see
    [`read_mask`][mobilenets.data.segmentation.read_mask]) or an SBD ``.mat`` file. ``label_map``,
    a 256-entry lookup table, maps a mask's stored values to class indices (Cityscapes' label ids
    to train ids). ``source`` names where the list came from, for the error about a missing file.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        files,
        class_names: tuple[str, ...],
        transform=None,
        *,
        label_map: np.ndarray | None = None,
        source: str = "the file list",
    ) -> None:
        self.files = [(Path(image), Path(mask)) for image, mask in files]
        self.class_names, self.transform, self.label_map = tuple(class_names), transform, label_map
        if not 1 <= len(self.class_names) <= IGNORE_INDEX:
            raise MobileNetsError(
                f"a segmentation dataset has 1..{IGNORE_INDEX} classes ({IGNORE_INDEX} is the "
                f"ignore index), got {len(self.class_names)}"
            )
        if not self.files:
            raise MobileNetsError(f"{source} holds no images")
        for pair in self.files:
            for path in pair:
                if not path.is_file():
                    raise MobileNetsError(f"{str(path)!r} does not exist (needed by {source})")

    @property
    def num_classes(self) -> int:
        """Classes the masks may hold (255 aside): the C of the model's logits."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.load(index)
        if self.transform is None:
            return image, mask
        if seed is None:
            return self.transform(image, mask)
        return seeded(self.transform, (image, mask), seed)

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        """The item's image (RGB) and checked mask (mode "L")."""
        image_path, mask_path = self.files[index]
        labels = self.labels(index)
        check_labels(labels, self.num_classes, mask_path)
        image = open_image(image_path)
        if image.size != labels.shape[::-1]:
            raise MobileNetsError(
                f"image {str(image_path)!r} is {image.size[0]}x{image.size[1]} but its mask "
                f"{str(mask_path)!r} is {labels.shape[1]}x{labels.shape[0]}"
            )
        return image.convert("RGB"), Image.fromarray(labels)

    def labels(self, index: int) -> np.ndarray:
        """The item's class map, uint8 ``[H, W]``, not yet checked."""
        path = self.files[index][1]
        labels = read_sbd_mask(path) if path.suffix == ".mat" else read_mask(path)
        return labels if self.label_map is None else self.label_map[labels]
