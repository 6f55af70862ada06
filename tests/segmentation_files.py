"""Segmentation datasets in their real formats, written tiny for the tests: PASCAL VOC 2012 (palette
PNGs), SBD (MATLAB .mat structs), Cityscapes (label-id PNGs), COCO instances (polygons and crowd
RLE) and the plain folder layout.

Each writer returns the class-index masks a reader must give back, worked out here from the shapes
drawn (never through the code under test): ``{item name: uint8 array [H, W]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (32, 24)  # width, height


def voc_palette() -> list[int]:
    """The VOC colour map (index 255, the border, is (224, 224, 192)), as 768 palette bytes."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= (code & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette += [red, green, blue]
    return palette


def object_mask(size: tuple[int, int], label: int, border: bool = False) -> np.ndarray:
    """Background 0 with a block of ``label`` in the middle; ``border`` draws VOC's 1-pixel 255
    outline around it."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    top, left = height // 4, width // 4
    if border:
        mask[top - 1 : height - top + 1, left - 1 : width - left + 1] = 255
    mask[top : height - top, left : width - left] = label
    return mask


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def write_voc(
    root: Path, splits: dict[str, Iterable[str]], size: tuple[int, int] = SIZE
) -> dict[str, np.ndarray]:
    """``root/JPEGImages/NAME.jpg``, ``root/SegmentationClass/NAME.png`` (palette PNG, class
    1 + i % 20 for the i-th name, 255 border) and ``root/ImageSets/Segmentation/{split}.txt``
    (``trainval.txt`` too)."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    masks = {}
    for split, names in splits.items():
        names = list(names)
        for name in names:
            masks[name] = object_mask(size, 1 + len(masks) % 20, border=True)
            photo(size, len(masks)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            png = Image.fromarray(masks[name])
            png.putpalette(voc_palette())  # mode "P": the palette index is the class
            png.save(root / "SegmentationClass" / f"{name}.png")
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "ImageSets" / "Segmentation" / "trainval.txt").write_text("\n".join(masks) + "\n")
    return masks


def write_sbd(
    root: Path, splits: dict[str, Iterable[str]], size: tuple[int, int] = SIZE
) -> dict[str, np.ndarray]:
    """``root/cls/NAME.mat`` (a struct ``GTcls`` with ``Segmentation`` and ``CategoriesPresent``,
    as SBD ships them; class 20 - i % 20 for the i-th name, no border), ``root/img/NAME.jpg`` and
    ``root/{split}.txt``."""
    from scipy.io import savemat

    (root / "cls").mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(parents=True, exist_ok=True)
    masks = {}
    for split, names in splits.items():
        names = list(names)
        for name in names:
            label = 20 - len(masks) % 20
            masks[name] = object_mask(size, label)
            struct = {"Segmentation": masks[name], "CategoriesPresent": np.uint8(label)}
            savemat(root / "cls" / f"{name}.mat", {"GTcls": struct})
            photo(size, 100 + len(masks)).save(root / "img" / f"{name}.jpg", quality=95)
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return masks


# Label ids written in vertical bands, and the train id each must become (cityscapesScripts'
# table): unlabeled, road, car, bicycle, static, person, and 255 (no label has that id).
CITYSCAPES_BANDS = ((0, 255), (7, 0), (26, 13), (33, 18), (4, 255), (24, 11), (255, 255))


def write_cityscapes(
    root: Path, split: str = "train", cities: dict[str, int] | None = None, size=SIZE
) -> dict[str, np.ndarray]:
    """``root/leftImg8bit/SPLIT/CITY/CITY_000000_00000I_leftImg8bit.png`` and the matching
    ``root/gtFine/SPLIT/CITY/..._gtFine_labelIds.png`` (label ids in the bands of
    ``CITYSCAPES_BANDS``); returns the train-id masks by image file name."""
    width, height = size
    band = np.arange(width) * len(CITYSCAPES_BANDS) // width
    label_ids = np.array([ids for ids, _ in CITYSCAPES_BANDS], dtype=np.uint8)[band]
    train_ids = np.array([train for _, train in CITYSCAPES_BANDS], dtype=np.uint8)[band]
    masks = {}
    for city, count in (cities or {"aachen": 2}).items():
        images, labels = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            stem = f"{city}_000000_{index:06d}"
            photo(size, index).save(images / f"{stem}_leftImg8bit.png")
            Image.fromarray(np.tile(label_ids, (height, 1))).save(
                labels / f"{stem}_gtFine_labelIds.png"
            )
            (labels / f"{stem}_gtFine_color.png").write_bytes(b"")  # other gtFine files: unread
            masks[f"{stem}_leftImg8bit.png"] = np.tile(train_ids, (height, 1))
    return masks


def uncompressed_rle(region: np.ndarray) -> dict:
    """COCO's uncompressed RLE (crowd annotations): run lengths over the column-major pixels,
    starting with a run of zeros."""
    flat = region.T.ravel().astype(np.uint8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(region.shape), "counts": runs}


def rectangle(x1: int, y1: int, x2: int, y2: int) -> list[float]:
    """A polygon that pycocotools fills as the pixels [x1, x2) x [y1, y2)."""
    return [x1, y1, x2, y1, x2, y2, x1, y2]


COCO_SIZE = (40, 32)
COCO_CATEGORIES = {1: "person", 3: "car", 13: "stop sign", 18: "dog", 44: "bottle"}
# VOC class of each category written above (torchvision's table; stop sign is not a VOC class)
COCO_TO_VOC = {1: 15, 3: 7, 13: 0, 18: 12, 44: 5}


def write_coco_voc(root: Path, split: str = "val2017") -> dict[str, np.ndarray]:
    """``root/SPLIT/*.jpg`` and ``root/annotations/instances_SPLIT.json``, three 40x32 images:

    - ``a.jpg``: a dog of area 1008 overlapped by a person (the shared pixels become 255), and a
      stop sign (not a VOC class) over the dog's corner, which stays dog;
    - ``b.jpg``: a crowd of bottles as an RLE, a car in two polygons (area 80);
    - ``c.jpg``: a stop sign only: all background, and no VOC area, so training drops it.
    """
    width, height = COCO_SIZE
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    crowd = np.zeros((height, width), dtype=bool)
    crowd[5:15, 5:20] = True
    objects = {  # file name: (category id, polygons or RLE, area, iscrowd)
        "a.jpg": [
            (18, [rectangle(2, 2, 38, 30)], 1008, 0),
            (1, [rectangle(30, 20, 40, 32)], 120, 0),
            (13, [rectangle(0, 0, 10, 10)], 100, 0),
        ],
        "b.jpg": [
            (44, uncompressed_rle(crowd), 150, 1),
            (3, [rectangle(22, 2, 30, 10), rectangle(32, 2, 36, 6)], 80, 0),
        ],
        "c.jpg": [(13, [rectangle(4, 4, 20, 20)], 256, 0)],
    }
    masks = {name: np.zeros((height, width), dtype=np.uint8) for name in objects}
    masks["a.jpg"][2:30, 2:38] = 12
    masks["a.jpg"][20:32, 30:40] = 15
    masks["a.jpg"][20:30, 30:38] = 255
    masks["b.jpg"][crowd] = 5
    masks["b.jpg"][2:10, 22:30] = 7
    masks["b.jpg"][2:6, 32:36] = 7
    images, annotations = [], []
    for image_id, (name, found) in enumerate(objects.items(), start=1):
        photo(COCO_SIZE, image_id).save(root / split / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for category, segmentation, area, iscrowd in found:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "area": area,
                    "iscrowd": iscrowd,
                    "bbox": [0, 0, 1, 1],
                }
            )
    categories = [{"id": cid, "name": name} for cid, name in COCO_CATEGORIES.items()]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))
    return masks


def write_folder(
    root: Path,
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = SIZE,
    num_classes: int = 3,
    class_names: Iterable[str] | None = None,
    image_format: str = "png",
) -> dict[str, np.ndarray]:
    """``root/SPLIT/images/NAME.IMAGE_FORMAT`` and ``root/SPLIT/masks/NAME.png`` (single-channel:
    class i % num_classes for the i-th item, a 255 border); ``root/classes.txt`` when
    ``class_names`` are given. Returns the masks by ``SPLIT/NAME``."""
    masks = {}
    for split, count in (splits or {"train": 3, "val": 2}).items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            name = f"{split}_{index:03d}"
            mask = object_mask(size, len(masks) % num_classes, border=True)
            photo(size, len(masks)).save(root / split / "images" / f"{name}.{image_format}")
            Image.fromarray(mask).save(root / split / "masks" / f"{name}.png")
            masks[f"{split}/{name}"] = mask
    if class_names is not None:
        (root / "classes.txt").write_text("\n".join(class_names) + "\n")
    return masks
