"""Semantic segmentation datasets: PASCAL VOC 2012 (with the SBD train_aug set), Cityscapes, COCO
with the 20 VOC categories, a plain folder of images and masks, and generated synthetic shapes.

Masks hold a class index per pixel; ``IGNORE_INDEX`` (255) marks pixels that no loss or metric
counts (VOC's object borders, Cityscapes' unlabelled classes, the padding of a crop).

Every dataset returns ``(image, mask)``: a PIL RGB image and a PIL mode "L" mask of the same size
whose values are class indices ``0..num_classes - 1`` or 255. Passed through a transform from
[`mobilenets.data.segmentation_transforms`][mobilenets.data.segmentation_transforms], they become
the model's input and an int64 target. An item may be asked for as ``index`` or as
``(index, seed)`` (what [`EpochSampler`][mobilenets.data.common.EpochSampler] yields): the seed
fixes the augmentation.

The file lists are read and every listed file is checked to exist when a dataset is made; each
mask is checked when it is loaded: a value that is neither a class index nor 255, a mask whose
size differs from its image's, or a file that cannot be read raises an error naming the file.
Nothing is skipped silently: the only images left out are COCO training images with too little
VOC-category area, torchvision's rule (see
[`CocoSegmentation`][mobilenets.data.segmentation.CocoSegmentation]).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.data.common import data_dirs, open_image, seeded
from mobilenets.data.detection import (
    IMAGE_FIELDS,
    SYNTHETIC_SHAPES,
    SYNTHETIC_SHAPES_SIDE,
    SYNTHETIC_SHAPES_TRAIN,
    VOC_CLASSES,
    load_coco_api,
)
from mobilenets.data.shapes import make_synthetic_segmentation

IGNORE_INDEX = 255
log = logging.getLogger("mobilenets")

BACKGROUND = "background"
VOC_SEGMENTATION_CLASSES = (BACKGROUND, *VOC_CLASSES)
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# cityscapesScripts helpers/labels.py: the label id of each train id 0..18. Every other label id
# (unlabeled, ego vehicle, ..., license plate) is not trained on or scored: 255.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_TRAIN_IDS = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # label id -> train id
CITYSCAPES_TRAIN_IDS[list(CITYSCAPES_LABEL_IDS)] = np.arange(len(CITYSCAPES_LABEL_IDS))
# torchvision references/segmentation/coco_utils.py: the COCO category id of each VOC class
# (0 stands for background; COCO has no category 0).
COCO_VOC_CATEGORY_IDS = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
# torchvision's _coco_remove_images_without_annotations: a training image is kept when its VOC
# category annotations have more than this much area (the sum of their ``area`` fields).
COCO_TRAIN_MIN_AREA = 1000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VOC_LAYOUT = "a VOC root holds JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/"
SBD_LAYOUT = "an SBD root holds cls/, img/, train.txt and val.txt"
SEGMENTATION_DATA_HELP = (
    f"{SYNTHETIC_SHAPES}[:N] (generated: N training images, default {SYNTHETIC_SHAPES_TRAIN}, "
    f"N/5 validation, {SYNTHETIC_SHAPES_SIDE} px), voc:VOC_ROOT (VOC2012 train and val), "
    "voc-aug:VOC_ROOT,SBD_ROOT (train_aug: VOC train with SBD, less VOC val; VOC val), "
    "cityscapes:ROOT (leftImg8bit/, gtFine/; 19 train ids), coco:ROOT (train2017/, val2017/, "
    "annotations/instances_{train,val}2017.json; the 20 VOC categories), or folder:ROOT "
    "(ROOT/{train,val}/images/NAME.jpg|png, ROOT/{train,val}/masks/NAME.png, optional "
    "ROOT/classes.txt)"
)


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


def _split_names(path: Path, hint: str) -> list[str]:
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


class VocSegmentation(SegmentationFiles):
    """PASCAL VOC 2012: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs, 255 on
    object borders) and ``ImageSets/Segmentation/{split}.txt``; 21 classes, background first."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None) -> None:
        self.root, self.split = Path(root), split
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        files = [self.pair(self.root, name) for name in _split_names(split_file, VOC_LAYOUT)]
        super().__init__(
            files, VOC_SEGMENTATION_CLASSES, transform, source=f"VOC split file {str(split_file)!r}"
        )

    @staticmethod
    def pair(root: Path, name: str) -> tuple[Path, Path]:
        return root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"


class VocAugSegmentation(SegmentationFiles):
    """VOC 2012 ``train_aug``, the training set of the DeepLab papers and of MobileNetV2's section
    6.3: VOC train plus the SBD (Hariharan et al. 2011) train and val images, less VOC val, 10,582
    images. A VOC image keeps VOC's own mask; the others read SBD's ``cls/NAME.mat`` with
    ``img/NAME.jpg``."""

    def __init__(
        self, voc_root: str | os.PathLike, sbd_root: str | os.PathLike, transform=None
    ) -> None:
        self.voc_root, self.sbd_root = Path(voc_root), Path(sbd_root)
        voc_splits = self.voc_root / "ImageSets" / "Segmentation"
        voc_train = set(_split_names(voc_splits / "train.txt", VOC_LAYOUT))
        voc_val = set(_split_names(voc_splits / "val.txt", VOC_LAYOUT))
        sbd = {
            name
            for split in ("train", "val")
            for name in _split_names(self.sbd_root / f"{split}.txt", SBD_LAYOUT)
        }
        files = []
        for name in sorted((voc_train | sbd) - voc_val):
            if name in voc_train:
                files.append(VocSegmentation.pair(self.voc_root, name))
            else:
                files.append(
                    (self.sbd_root / "img" / f"{name}.jpg", self.sbd_root / "cls" / f"{name}.mat")
                )
        super().__init__(
            files,
            VOC_SEGMENTATION_CLASSES,
            transform,
            source=f"train_aug of {str(self.voc_root)!r} and {str(self.sbd_root)!r}",
        )


class CityscapesSegmentation(SegmentationFiles):
    """Cityscapes fine annotations: ``leftImg8bit/{split}/CITY/*_leftImg8bit.png`` with
    ``gtFine/{split}/CITY/*_gtFine_labelIds.png``; label ids become the 19 train ids, every other
    id 255."""

    IMAGE_SUFFIX, MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None) -> None:
        self.root, self.split = Path(root), split
        images = self.root / "leftImg8bit" / split
        if not images.is_dir():
            raise MobileNetsError(
                f"Cityscapes split {split!r}: {str(images)!r} is not a folder (a Cityscapes root "
                f"holds leftImg8bit/{split}/CITY/*{self.IMAGE_SUFFIX} and "
                f"gtFine/{split}/CITY/*{self.MASK_SUFFIX})"
            )
        masks = self.root / "gtFine" / split
        files = []
        for image in sorted(images.glob(f"*/*{self.IMAGE_SUFFIX}")):
            name = image.name.removesuffix(self.IMAGE_SUFFIX) + self.MASK_SUFFIX
            files.append((image, masks / image.parent.name / name))
        super().__init__(
            files,
            CITYSCAPES_CLASSES,
            transform,
            label_map=CITYSCAPES_TRAIN_IDS,
            source=f"the Cityscapes images in {str(images)!r}",
        )


def folder_class_names(root: str | os.PathLike) -> tuple[str, ...]:
    """A folder dataset's classes: ``root/classes.txt`` (one name a line), or without it
    ``class_0..class_K`` where K is the largest label (255 aside) of the masks of every split."""
    root = Path(root)
    listed = root / "classes.txt"
    if listed.is_file():
        names = tuple(line.strip() for line in listed.read_text().splitlines() if line.strip())
        if not 1 <= len(names) <= IGNORE_INDEX:
            raise MobileNetsError(
                f"{str(listed)!r} names {len(names)} classes; it needs 1..{IGNORE_INDEX}, one a "
                f"line ({IGNORE_INDEX} is the ignore index)"
            )
        return names
    largest = 0
    for path in sorted(root.glob("*/masks/*.png")):
        labels = read_mask(path)
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[:IGNORE_INDEX])
        largest = max(largest, int(present[-1]) if present.size else 0)
    return tuple(f"class_{index}" for index in range(largest + 1))


class FolderSegmentation(SegmentationFiles):
    """A plain folder: ``root/{split}/images/NAME.(jpg|jpeg|png)`` and
    ``root/{split}/masks/NAME.png`` (class indices, 255 ignored). ``class_names`` default to
    [`folder_class_names`][mobilenets.data.segmentation.folder_class_names]. An image without a
    mask, a mask without an image, or another kind of file there is an error."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        class_names: tuple[str, ...] | None = None,
        transform=None,
    ) -> None:
        self.root, self.split = Path(root), split
        images, masks = self.root / split / "images", self.root / split / "masks"
        for folder in (images, masks):
            if not folder.is_dir():
                raise MobileNetsError(
                    f"folder split {split!r}: {str(folder)!r} is not a folder (a folder dataset "
                    f"holds {split}/images/NAME.jpg|png and {split}/masks/NAME.png)"
                )
        image_of = self._by_name(images, IMAGE_SUFFIXES)
        mask_of = self._by_name(masks, (".png",))
        for name, image in image_of.items():
            if name not in mask_of:
                raise MobileNetsError(
                    f"image {str(image)!r} has no mask {str(masks / f'{name}.png')!r}"
                )
        for name, mask in mask_of.items():
            if name not in image_of:
                raise MobileNetsError(
                    f"mask {str(mask)!r} has no image {name}.jpg or {name}.png in {str(images)!r}"
                )
        files = [(image_of[name], mask_of[name]) for name in sorted(image_of)]
        if class_names is None:
            class_names = folder_class_names(self.root)
        super().__init__(files, class_names, transform, source=f"{str(images)!r}")

    @staticmethod
    def _by_name(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix.lower() not in suffixes or not path.is_file():
                raise MobileNetsError(
                    f"{str(path)!r} is not a {' or '.join(suffixes)} file; {str(folder)!r} holds "
                    "only those"
                )
            if path.stem in found:
                raise MobileNetsError(
                    f"{str(found[path.stem])!r} and {str(path)!r} share the name {path.stem!r}"
                )
            found[path.stem] = path
        return found


class CocoSegmentation(SegmentationFiles):
    """COCO instances reduced to the 20 VOC categories, as torchvision's segmentation reference
    reads them: each annotation's polygons or RLE (crowd regions included) become a binary mask
    through pycocotools; a pixel covered by one instance takes its VOC class, a pixel covered by
    two or more becomes 255 (torchvision's "discard overlapping instances"), other categories are
    background. ``min_area`` (for training: ``COCO_TRAIN_MIN_AREA``) keeps only the images whose
    VOC-category annotations have more area than that; None keeps every image.

    ``files[index]`` is ``(image file, annotation file)``: the mask is drawn from the annotations.
    Polygons of fewer than 3 points enclose nothing; they are counted in a warning.
    """

    def __init__(
        self,
        images: str | os.PathLike,
        annotations: str | os.PathLike,
        transform=None,
        min_area: float | None = None,
    ) -> None:
        self.images, self.annotations = Path(images), Path(annotations)
        if not self.images.is_dir():
            raise MobileNetsError(f"COCO image folder {str(self.images)!r} does not exist")
        self.coco = load_coco_api(self.annotations)
        self.label_of = {cid: label for label, cid in enumerate(COCO_VOC_CATEGORY_IDS) if label}
        for info in self.coco.imgs.values():
            if not all(isinstance(info.get(key), kind) for key, kind in IMAGE_FIELDS.items()):
                raise MobileNetsError(
                    f"{str(self.annotations)!r}, image {info.get('id')!r}: needs file_name, "
                    f"width and height, got {info!r}"
                )
        degenerate = sum(
            self._check(a) for a in self.coco.anns.values() if a.get("category_id") in self.label_of
        )
        if degenerate:
            log.warning(
                "%s: %d polygons of fewer than 3 points cover no pixels",
                self.annotations,
                degenerate,
            )
        self.image_ids = sorted(self.coco.imgs)
        if min_area is not None:
            self.image_ids = [i for i in self.image_ids if self._area(i) > min_area]
        files = [
            (self.images / self.coco.imgs[i]["file_name"], self.annotations) for i in self.image_ids
        ]
        super().__init__(
            files, VOC_SEGMENTATION_CLASSES, transform, source=f"{str(self.annotations)!r}"
        )

    def _voc_annotations(self, image_id: int) -> list[dict]:
        annotations = self.coco.imgToAnns.get(image_id, [])
        return [a for a in annotations if a["category_id"] in self.label_of]

    def _area(self, image_id: int) -> float:
        """torchvision's test: an image with no VOC annotation has none."""
        return sum(a["area"] for a in self._voc_annotations(image_id))

    def _check(self, annotation: dict) -> int:
        """Raise for a malformed annotation; return its number of degenerate polygons."""
        where = f"{str(self.annotations)!r}, annotation {annotation.get('id')!r}"
        info = self.coco.imgs.get(annotation.get("image_id"))
        if info is None:
            raise MobileNetsError(
                f"{where}: image_id {annotation.get('image_id')!r} is not among the images"
            )
        if not isinstance(annotation.get("area"), (int, float)):
            raise MobileNetsError(f"{where}: area must be a number, got {annotation.get('area')!r}")
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list) and all(
            isinstance(polygon, list) and len(polygon) % 2 == 0 for polygon in segmentation
        ):
            return sum(len(polygon) < 6 for polygon in segmentation)
        size = [info["height"], info["width"]]
        if isinstance(segmentation, dict) and "counts" in segmentation:
            if segmentation.get("size") != size:
                raise MobileNetsError(
                    f"{where}: the RLE size {segmentation.get('size')!r} is not the image's "
                    f"[height, width] {size}"
                )
            return 0
        raise MobileNetsError(
            f"{where}: segmentation must be a list of polygons [x1, y1, x2, y2, ...] or an RLE "
            f"{{'counts', 'size'}}, got {segmentation!r:.80}"
        )

    def labels(self, index: int) -> np.ndarray:
        coco_mask = require("pycocotools.mask", "reading COCO segmentation masks")
        image_id = self.image_ids[index]
        height, width = self.coco.imgs[image_id]["height"], self.coco.imgs[image_id]["width"]
        labels = np.zeros((height, width), dtype=np.uint8)
        covers = np.zeros((height, width), dtype=np.uint16)  # instances covering each pixel
        for annotation in self._voc_annotations(image_id):
            segmentation = annotation["segmentation"]
            try:
                if isinstance(segmentation, list):
                    polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
                    if not polygons:
                        continue
                    rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
                elif isinstance(segmentation["counts"], list):
                    rle = coco_mask.frPyObjects(segmentation, height, width)
                else:
                    rle = segmentation
                instance = coco_mask.decode(rle).astype(bool)
            except (TypeError, ValueError, OverflowError) as error:
                raise MobileNetsError(
                    f"{str(self.annotations)!r}, annotation {annotation.get('id')!r}: cannot "
                    f"decode its segmentation: {error}"
                ) from error
            labels[instance] = self.label_of[annotation["category_id"]]
            covers += instance
        labels[covers > 1] = IGNORE_INDEX
        return labels


# --- data specs -----------------------------------------------------------------------------------


@dataclass
class SegmentationData:
    """A dataset's splits (None where not asked for) and its classes."""

    train: SegmentationFiles | None
    val: SegmentationFiles | None
    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def synthetic_segmentation_root(count: int) -> Path:
    """The folder of ``synthetic-shapes:count`` segmentation data, generated on first use. As
    [`synthetic_shapes_root`][mobilenets.data.detection.synthetic_shapes_root]: every process may
    generate it into a private folder and rename that into place; the one that loses the race uses
    the winner's identical files, and a half-written folder never has the final name."""
    name = f"{SYNTHETIC_SHAPES}-segmentation-{count}-{SYNTHETIC_SHAPES_SIDE}px-seed0"
    root = data_dirs()[0] / name
    if (root / "classes.txt").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)  # mkdtemp makes 0700; the cache is an ordinary folder
    try:
        make_synthetic_segmentation(
            temporary,
            num_train=count,
            num_val=max(1, count // 5),
            image_size=SYNTHETIC_SHAPES_SIDE,
            seed=0,
        )
        os.replace(temporary, root)
    except OSError as error:
        if not (root / "classes.txt").is_file():
            raise MobileNetsError(
                f"cannot write {SYNTHETIC_SHAPES} data into {str(root.parent)!r}: {error} (set "
                "$MOBILENETS_DATA to a writable folder)"
            ) from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return root


def _synthetic_count(rest: str) -> int:
    if not rest:
        return SYNTHETIC_SHAPES_TRAIN
    try:
        count = int(rest)
    except ValueError:
        count = 0
    if count < 1:
        raise MobileNetsError(
            f"{SYNTHETIC_SHAPES}:N takes a positive number of training images, got {rest!r}"
        )
    return count


def _open_split(
    kind: str, roots: list[Path], split: str, class_names: tuple[str, ...] | None
) -> SegmentationFiles:
    if kind == "voc":
        return VocSegmentation(roots[0], split)
    if kind == "voc-aug":
        return VocAugSegmentation(*roots) if split == "train" else VocSegmentation(roots[0], "val")
    if kind == "cityscapes":
        return CityscapesSegmentation(roots[0], split)
    if kind == "coco":
        annotations = roots[0] / "annotations" / f"instances_{split}2017.json"
        min_area = COCO_TRAIN_MIN_AREA if split == "train" else None
        return CocoSegmentation(roots[0] / f"{split}2017", annotations, min_area=min_area)
    return FolderSegmentation(roots[0], split, class_names)  # folder and synthetic-shapes


def load_segmentation_data(
    spec: str, splits: tuple[str, ...] = ("train", "val")
) -> SegmentationData:
    """The datasets a ``data`` spec names (see
    [`SEGMENTATION_DATA_HELP`][mobilenets.data.segmentation.SEGMENTATION_DATA_HELP]), without
    transforms. Only the ``splits`` asked for are read: evaluation need not read COCO's training
    annotations."""
    if not isinstance(spec, str) or not spec:
        raise MobileNetsError(f"data={spec!r} is not one of: {SEGMENTATION_DATA_HELP}")
    if not splits or not set(splits) <= {"train", "val"}:
        raise MobileNetsError(f"splits must be some of 'train', 'val', got {splits!r}")
    kind, _, rest = spec.partition(":")
    if kind == SYNTHETIC_SHAPES:
        kind, roots = "folder", [synthetic_segmentation_root(_synthetic_count(rest))]
    elif kind in ("voc", "cityscapes", "coco", "folder") and rest:
        roots = [Path(rest).expanduser()]
    elif kind == "voc-aug" and rest.count(",") == 1 and all(rest.split(",")):
        roots = [Path(part).expanduser() for part in rest.split(",")]
    else:
        raise MobileNetsError(f"data={spec!r} is not one of: {SEGMENTATION_DATA_HELP}")
    for root in roots:
        if not root.is_dir():
            raise MobileNetsError(f"data={spec!r}: {str(root)!r} is not a folder")
    # Both splits of a folder dataset take the classes of all its masks.
    class_names = folder_class_names(roots[0]) if kind == "folder" else None
    found = {split: _open_split(kind, roots, split, class_names) for split in splits}
    first = next(iter(found.values()))
    return SegmentationData(found.get("train"), found.get("val"), first.class_names)
