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
[`CocoSegmentation`][mobilenets.data.segmentation_coco.CocoSegmentation]).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilenets.core.errors import MobileNetsError
from mobilenets.data.common import data_dirs
from mobilenets.data.detection import (
    SYNTHETIC_SHAPES,
    SYNTHETIC_SHAPES_SIDE,
    SYNTHETIC_SHAPES_TRAIN,
    VOC_CLASSES,
)

# the readers' common parts and the COCO reader, named here too: this module is where the
# datasets are looked up
from mobilenets.data.segmentation_coco import COCO_TRAIN_MIN_AREA as COCO_TRAIN_MIN_AREA
from mobilenets.data.segmentation_coco import CocoSegmentation as CocoSegmentation
from mobilenets.data.segmentation_files import IGNORE_INDEX as IGNORE_INDEX
from mobilenets.data.segmentation_files import SegmentationFiles as SegmentationFiles
from mobilenets.data.segmentation_files import collate_segmentation as collate_segmentation
from mobilenets.data.segmentation_files import read_mask as read_mask
from mobilenets.data.segmentation_files import read_split_names
from mobilenets.data.shapes import make_synthetic_segmentation

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


class VocSegmentation(SegmentationFiles):
    """PASCAL VOC 2012: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs, 255 on
    object borders) and ``ImageSets/Segmentation/{split}.txt``; 21 classes, background first."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None) -> None:
        self.root, self.split = Path(root), split
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        files = [self.pair(self.root, name) for name in read_split_names(split_file, VOC_LAYOUT)]
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
        voc_train = set(read_split_names(voc_splits / "train.txt", VOC_LAYOUT))
        voc_val = set(read_split_names(voc_splits / "val.txt", VOC_LAYOUT))
        sbd = {
            name
            for split in ("train", "val")
            for name in read_split_names(self.sbd_root / f"{split}.txt", SBD_LAYOUT)
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
