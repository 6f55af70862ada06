"""Synthetic detection and segmentation datasets, for training and evaluating without downloads.

Each image is a textured background (a two-colour gradient, stripes at a random angle and period, or
smooth colour blobs, plus pixel noise) with 1..``max_objects`` filled shapes of
[`SHAPES`][mobilenets.data.shapes.SHAPES], each in a random saturated colour picked to stand out
from the background under it. A shape's box side is drawn log-uniformly between ``min_size`` and
``max_size`` of the image side (by default 0.12 to 0.5: 15 to 64 px at 128 px, so COCO's small,
medium and large all occur). Shapes may overlap, but no more than ``max_overlap`` of either box's
area is shared, so every shape stays recognizable. Boxes are tight around the drawn shape and inside
the image.

Detection data is written in COCO format
([`make_synthetic_coco`][mobilenets.data.shapes.make_synthetic_coco]), segmentation data as a folder
of images and class-index masks
([`make_synthetic_segmentation`][mobilenets.data.shapes.make_synthetic_segmentation]); for the same
seed both hold the same images. The same seed writes the same files: each image draws from its own
generator seeded by (seed, split, index), so the validation images do not depend on how many
training images there are.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import atomic_path

SHAPES = ("circle", "square", "triangle", "star")
SPLIT_CODES = {"train": 0, "val": 1}
FORMATS = ("jpg", "png")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float [size, size, 3] texture in 0..255."""
    first, second = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, math.pi)
    along = x * math.cos(angle) + y * math.sin(angle)
    kind = rng.integers(3)
    if kind == 0:  # gradient
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif kind == 1:  # stripes, 2..8 periods across the image, softened
        t = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(2, 8) * along + rng.uniform(0, 6.3))
        t = 0.25 + 0.5 * t
    else:  # smooth blobs: a coarse random grid upsampled
        coarse = Image.fromarray((rng.random((4, 4)) * 255).astype(np.uint8))
        t = np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    image = first + (second - first) * t[..., None]
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return image + noise * np.float32(rng.uniform(3, 12))


def _outline(shape: str, rng: np.random.Generator, side: float) -> np.ndarray:
    """Vertices [K, 2] of a shape of about ``side`` pixels, centred on the origin."""
    radius = side / 2
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":  # an ellipse of mild aspect, as a 32-gon
        aspect = rng.uniform(0.9, 1.11)
        turns = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        return np.stack([radius * aspect * np.cos(turns), radius / aspect * np.sin(turns)], 1)
    if shape == "square":  # tilted at most 20 degrees so it never becomes a diamond
        angle = rng.uniform(-math.pi / 9, math.pi / 9) + math.pi / 4
        turns = angle + np.arange(4) * math.pi / 2
        radius *= math.sqrt(2) * rng.uniform(0.85, 1.0)
    elif shape == "triangle":
        turns = angle + np.arange(3) * 2 * math.pi / 3
        radius *= 1.1
    else:  # star: five points, inner radius 0.45 of the outer
        turns = angle + np.arange(10) * math.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, radius * 1.05, radius * 0.45)
    return np.stack([radius * np.cos(turns), radius * np.sin(turns)], 1)


def _colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """The most distinct from ``under`` (a mean RGB) of a few random saturated colours."""
    hue = rng.uniform(0, 1, size=6)
    saturation, value = rng.uniform(0.6, 1.0, size=6), rng.uniform(0.35, 1.0, size=6)
    k = (np.array([5.0, 3.0, 1.0])[None] + hue[:, None] * 6) % 6
    rgb = value[:, None] * (1 - saturation[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))
    rgb = rgb * 255
    best = rgb[np.argmax(np.linalg.norm(rgb - under, axis=1))]
    return tuple(int(v) for v in best)


def _shared(box: np.ndarray, other: np.ndarray) -> float:
    """Intersection over the smaller box's area."""
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min(np.prod(box[2:] - box[:2]), np.prod(other[2:] - other[:2]))
    return float(w * h / smaller)


def make_image(
    rng: np.random.Generator,
    image_size: int,
    max_objects: int,
    min_size: float,
    max_size: float,
    max_overlap: float,
    mask: Image.Image | None = None,
) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """One image and its objects as (shape index, [x1, y1, x2, y2] pixels).

    ``mask``, when given (a mode "L" image of the same size, all 0 for background), receives each
    shape filled with its shape index + 1: the very pixels the shape covers in the image, later
    shapes over earlier ones. It draws nothing from ``rng``, so the image is the same either way.
    """
    texture = _background(rng, image_size)
    image = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        shape = int(rng.integers(len(SHAPES)))
        side = image_size * math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
        outline = _outline(SHAPES[shape], rng, side)
        low, high = outline.min(0), outline.max(0)
        for _attempt in range(20):
            # Place the shape's extent inside the image, then check the overlap.
            corner = rng.uniform(0, image_size - (high - low))
            points = outline - low + corner
            box = np.concatenate([points.min(0), points.max(0)])
            if all(_shared(box, other) <= max_overlap for _, other in objects):
                break
        else:
            continue
        x1, y1, x2, y2 = (int(v) for v in box)
        under = texture[y1 : y2 + 1, x1 : x2 + 1].reshape(-1, 3).mean(0)
        polygon = [tuple(p) for p in points.tolist()]
        draw.polygon(polygon, fill=_colour(rng, under))
        if mask is not None:
            ImageDraw.Draw(mask).polygon(polygon, fill=shape + 1)
        objects.append((shape, box))
    return image, [(shape, box.tolist()) for shape, box in objects]


def _check_settings(
    num_train, num_val, image_size, max_objects, min_size, max_size, max_overlap, image_format
) -> None:
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise MobileNetsError(
            f"num_train and num_val must be >= 0, not both 0; got {num_train}, {num_val}"
        )
    if not 32 <= image_size <= 4096:
        raise MobileNetsError(f"image_size must be in 32..4096, got {image_size!r}")
    if not 0 < min_size <= max_size <= 1:
        raise MobileNetsError(
            f"need 0 < min_size <= max_size <= 1 (fractions of the image side), "
            f"got {min_size!r}, {max_size!r}"
        )
    if max_objects < 1 or not 0 <= max_overlap < 1:
        raise MobileNetsError(
            f"need max_objects >= 1 and 0 <= max_overlap < 1, got {max_objects!r}, {max_overlap!r}"
        )
    if image_format not in FORMATS:
        raise MobileNetsError(
            f"image_format must be one of {', '.join(FORMATS)}, got {image_format!r}"
        )


def _save_image(image: Image.Image, path: Path, image_format: str) -> None:
    if image_format == "jpg":
        image.save(path, quality=92)
    else:
        image.save(path)


def make_synthetic_coco(
    root: str | os.PathLike,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 128,
    seed: int = 0,
    max_objects: int = 4,
    min_size: float = 0.12,
    max_size: float = 0.5,
    max_overlap: float = 0.3,
    image_format: str = "jpg",
) -> dict[str, tuple[Path, Path]]:
    """Write ``root/{train,val}/*.jpg`` and ``root/annotations/instances_{train,val}.json``.

    Returns ``{split: (images folder, annotation file)}``, the arguments of
    [`mobilenets.data.detection.CocoDetection`][mobilenets.data.detection.CocoDetection]. Category
    ids are 1..len(SHAPES) in the order of [`SHAPES`][mobilenets.data.shapes.SHAPES].
    """
    _check_settings(
        num_train, num_val, image_size, max_objects, min_size, max_size, max_overlap, image_format
    )
    root = Path(root)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)
    ]
    written = {}
    for split, count in (("train", num_train), ("val", num_val)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            image, objects = make_image(
                rng, image_size, max_objects, min_size, max_size, max_overlap
            )
            name = f"{index:06d}.{image_format}"
            _save_image(image, folder / name, image_format)
            images.append(
                {"id": index + 1, "file_name": name, "width": image_size, "height": image_size}
            )
            for shape, (x1, y1, x2, y2) in objects:
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": shape + 1,
                        "bbox": [round(v, 2) for v in (x1, y1, w, h)],
                        "area": round(w * h, 2),
                        "iscrowd": 0,
                    }
                )
        annotation_file = root / "annotations" / f"instances_{split}.json"
        dataset = {
            "info": {"description": f"mobilenets synthetic shapes, seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with atomic_path(annotation_file) as temporary:
            Path(temporary).write_text(json.dumps(dataset))
        written[split] = (folder, annotation_file)
    return written


def make_synthetic_segmentation(
    root: str | os.PathLike,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 128,
    seed: int = 0,
    max_objects: int = 4,
    min_size: float = 0.12,
    max_size: float = 0.5,
    max_overlap: float = 0.3,
    image_format: str = "png",
) -> dict[str, tuple[Path, Path]]:
    """Write ``root/{train,val}/images/*.png``, ``root/{train,val}/masks/*.png`` and
    ``root/classes.txt``: the folder layout
    [`mobilenets.data.segmentation.FolderSegmentation`][mobilenets.data.segmentation.FolderSegmentation]
    reads.

    The images are [`make_synthetic_coco`][mobilenets.data.shapes.make_synthetic_coco]'s for the
    same arguments. A mask holds 0 for background and shape index + 1 where a shape is drawn
    (classes ``background`` and [`SHAPES`][mobilenets.data.shapes.SHAPES]); masks are PNG
    (lossless). Images are PNG too by default: a JPEG's blurred edges would disagree with the
    mask. Returns ``{split: (images folder, masks folder)}``.
    """
    _check_settings(
        num_train, num_val, image_size, max_objects, min_size, max_size, max_overlap, image_format
    )
    root = Path(root)
    written = {}
    for split, count in (("train", num_train), ("val", num_val)):
        images, masks = root / split / "images", root / split / "masks"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            mask = Image.new("L", (image_size, image_size), 0)
            image, _ = make_image(
                rng, image_size, max_objects, min_size, max_size, max_overlap, mask=mask
            )
            _save_image(image, images / f"{index:06d}.{image_format}", image_format)
            mask.save(masks / f"{index:06d}.png")
        written[split] = (images, masks)
    with atomic_path(root / "classes.txt") as temporary:
        Path(temporary).write_text("\n".join(("background", *SHAPES)) + "\n")
    return written
