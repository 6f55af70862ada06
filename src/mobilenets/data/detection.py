"""Detection datasets: COCO JSON and Pascal VOC XML, with contiguous labels.

Both return ``(image, target)``: a PIL RGB image and a dict with ``boxes`` (a
``tv_tensors.BoundingBoxes``, pixel (x1, y1, x2, y2)), ``labels`` (int64, 1..C-1; 0 is background),
``image_id`` (int) and ``orig_size`` ((height, width)); VOC adds ``difficult`` (bool). Passed
through a transform from
[`mobilenets.data.detection_transforms`][mobilenets.data.detection_transforms], the image becomes
the model's input and the boxes become normalized. An item may be asked for as ``index`` or as
``(index, seed)`` (what [`EpochSampler`][mobilenets.data.common.EpochSampler] yields): the seed
fixes the augmentation.

``class_names[label]`` names a label (``class_names[0]`` is ``"__background__"``);
``category_ids[label]`` is the COCO category id results are written in (``category_ids[0]``
is a placeholder 0). Every annotation is read and checked when the dataset is made: a malformed one
raises an error naming its file, and an image that cannot be read names its file when it is
loaded. Nothing is skipped silently; the only boxes left out are COCO crowd regions (for
training; the evaluation still sees them) and COCO boxes of zero width or height.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mobilenets.data.common import data_dirs, open_image, seeded
from mobilenets.data.shapes import make_synthetic_coco
from mobilenets.zoo.pretrained import default_preprocessing, looks_like_source

BACKGROUND = "__background__"
SYNTHETIC_SHAPES = "synthetic-shapes"
SYNTHETIC_SHAPES_TRAIN = 1000
SYNTHETIC_SHAPES_SIDE = 128
DATA_HELP = (
    f"{SYNTHETIC_SHAPES}[:N] (generated, N training images), coco:DIR (DIR/train, DIR/val, "
    "DIR/annotations/instances_{train,val}.json; 2017 names too), "
    "coco:TRAIN_IMAGES,TRAIN_JSON,VAL_IMAGES,VAL_JSON, or voc:ROOT (a VOC year folder)"
)
IMAGE_FIELDS = {"file_name": str, "width": int, "height": int}
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def load_coco_api(annotations: str | os.PathLike):
    """A ``pycocotools.coco.COCO`` for an annotation file, quietly (it prints progress)."""
    coco_api = require("pycocotools.coco", "reading COCO annotations")
    path = Path(annotations)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_api.COCO(str(path))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MobileNetsError(f"cannot read COCO annotations {str(path)!r}: {error}") from error
    except (KeyError, TypeError, AssertionError) as error:
        raise MobileNetsError(
            f"{str(path)!r} is not a COCO annotation file (needs images, annotations, "
            f"categories): {error!r}"
        ) from error


class _DetectionDataset(Dataset):
    """What both formats share: items by index or (index, seed), the image check, the target."""

    class_names: tuple[str, ...]
    transform = None

    @property
    def num_classes(self) -> int:
        """Classes including background: the C of the model's ``cls_logits``."""
        return len(self.class_names)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, target = self.load(index)
        if self.transform is None:
            return image, target
        if seed is None:
            return self.transform(image, target)
        return seeded(self.transform, (image, target), seed)

    def load(self, index: int):
        raise NotImplementedError

    @staticmethod
    def _read_image(path: Path, width: int, height: int):
        image = open_image(path)
        if image.size != (width, height):
            raise MobileNetsError(
                f"image {str(path)!r} is {image.size[0]}x{image.size[1]} but its annotation "
                f"says {width}x{height}"
            )
        return image.convert("RGB")

    @staticmethod
    def _target(boxes, labels, image_id: int, width: int, height: int, **extra) -> dict:
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": image_id,
            "orig_size": (height, width),
            **extra,
        }


class CocoDetection(_DetectionDataset):
    """A COCO-format dataset: ``images`` folder and an ``instances_*.json`` file.

    Labels are the categories sorted by id, numbered 1..C-1; ``category_ids`` maps back.
    """

    def __init__(self, images: str | os.PathLike, annotations: str | os.PathLike, transform=None):
        self.images, self.annotations, self.transform = Path(images), Path(annotations), transform
        self.coco = load_coco_api(self.annotations)
        categories = sorted(self.coco.cats.values(), key=lambda category: category["id"])
        self.category_ids: tuple[int, ...] = (0, *(int(c["id"]) for c in categories))
        self.class_names: tuple[str, ...] = (BACKGROUND, *(str(c["name"]) for c in categories))
        self.label_of = {cid: label for label, cid in enumerate(self.category_ids) if label}
        self.image_ids = sorted(self.coco.imgs)
        for image in self.coco.imgs.values():
            if not all(isinstance(image.get(key), kind) for key, kind in IMAGE_FIELDS.items()):
                raise MobileNetsError(
                    f"{str(self.annotations)!r}, image {image.get('id')!r}: needs file_name, "
                    f"width and height, got {image!r}"
                )
        for annotation in self.coco.anns.values():
            self._check(annotation)

    def _check(self, annotation: dict) -> None:
        where = f"{str(self.annotations)!r}, annotation {annotation.get('id')!r}"
        bbox = annotation.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
            and bbox[2] >= 0
            and bbox[3] >= 0
        ):
            raise MobileNetsError(
                f"{where}: bbox must be [x, y, width, height] with width, height >= 0, got {bbox!r}"
            )
        if annotation.get("category_id") not in self.label_of:
            raise MobileNetsError(
                f"{where}: category_id {annotation.get('category_id')!r} is not among the "
                f"categories {list(self.category_ids[1:])}"
            )
        if annotation.get("image_id") not in self.coco.imgs:
            raise MobileNetsError(
                f"{where}: image_id {annotation.get('image_id')!r} is not among the images"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, index: int):
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        width, height = int(info["width"]), int(info["height"])
        image = self._read_image(self.images / info["file_name"], width, height)
        boxes, labels = [], []
        for annotation in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = annotation["bbox"]
            if annotation.get("iscrowd", 0) or w <= 0 or h <= 0:
                continue
            # COCO boxes may reach a fraction of a pixel past the border; clip them.
            boxes.append([max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)])
            labels.append(self.label_of[annotation["category_id"]])
        return image, self._target(boxes, labels, image_id, width, height)


class VocDetection(_DetectionDataset):
    """A Pascal VOC tree: ``Annotations/*.xml``, ``JPEGImages/*.jpg``,
    ``ImageSets/Main/{split}.txt``.

    VOC's 1-based inclusive pixel boxes become (xmin - 1, ymin - 1, xmax, ymax), detectron2's
    reading. Difficult objects are kept with ``difficult=True``: `coco` marks them as
    crowd regions, so COCOeval ignores them, as the VOC protocol does.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        class_names: tuple[str, ...] = VOC_CLASSES,
        transform=None,
    ):
        self.root, self.split, self.transform = Path(root), split, transform
        self.class_names = (BACKGROUND, *class_names)
        self.category_ids = tuple(range(len(self.class_names)))
        label_of = {name: label for label, name in enumerate(self.class_names) if label}
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        try:
            ids = split_file.read_text().split()
        except OSError as error:
            raise MobileNetsError(
                f"VOC split {split!r}: cannot read {str(split_file)!r} (a VOC root holds "
                f"Annotations/, JPEGImages/ and ImageSets/Main/{split}.txt): {error}"
            ) from error
        self.records = [self._parse(self.root / "Annotations" / f"{i}.xml", label_of) for i in ids]
        self._coco = None

    def _parse(self, path: Path, label_of: dict[str, int]) -> dict:
        try:
            tree = ET.parse(path)
        except (OSError, ET.ParseError) as error:
            raise MobileNetsError(f"cannot read VOC annotation {str(path)!r}: {error}") from error
        root = tree.getroot()
        try:
            width = int(root.findtext("size/width"))
            height = int(root.findtext("size/height"))
            boxes, labels, difficult = [], [], []
            for obj in root.iter("object"):
                name = (obj.findtext("name") or "").strip()
                if name not in label_of:
                    raise MobileNetsError(
                        f"VOC annotation {str(path)!r}: class {name!r} is not one of "
                        f"{', '.join(self.class_names[1:])}"
                    )
                box = obj.find("bndbox")
                x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                if not (1 <= x1 <= x2 <= width and 1 <= y1 <= y2 <= height):
                    raise MobileNetsError(
                        f"VOC annotation {str(path)!r}: box {[x1, y1, x2, y2]} of {name!r} is "
                        f"not inside the {width}x{height} image (1-based, xmin <= xmax)"
                    )
                boxes.append([x1 - 1, y1 - 1, x2, y2])
                labels.append(label_of[name])
                difficult.append(bool(int(obj.findtext("difficult") or 0)))
        except (TypeError, ValueError, AttributeError) as error:
            raise MobileNetsError(
                f"VOC annotation {str(path)!r} is malformed (needs size/width, size/height and "
                f"objects with name and bndbox xmin, ymin, xmax, ymax): {error}"
            ) from error
        image = self.root / "JPEGImages" / f"{path.stem}.jpg"
        return dict(
            image=image, width=width, height=height, boxes=boxes, labels=labels, difficult=difficult
        )

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int):
        record = self.records[index]
        width, height = record["width"], record["height"]
        image = self._read_image(record["image"], width, height)
        difficult = torch.tensor(record["difficult"], dtype=torch.bool)
        return image, self._target(
            record["boxes"], record["labels"], index, width, height, difficult=difficult
        )

    @property
    def coco(self):
        """The split as a ``pycocotools.coco.COCO`` ground truth (image ids are indices,
        category ids are labels, difficult objects are crowd regions)."""
        if self._coco is None:
            coco_api = require("pycocotools.coco", "scoring VOC data by COCO mAP")
            images, annotations = [], []
            for index, record in enumerate(self.records):
                images.append(
                    dict(
                        id=index,
                        file_name=record["image"].name,
                        width=record["width"],
                        height=record["height"],
                    )
                )
                for box, label, hard in zip(
                    record["boxes"], record["labels"], record["difficult"], strict=True
                ):
                    w, h = box[2] - box[0], box[3] - box[1]
                    annotations.append(
                        dict(
                            id=len(annotations) + 1,
                            image_id=index,
                            category_id=label,
                            bbox=[box[0], box[1], w, h],
                            area=w * h,
                            iscrowd=int(hard),
                        )
                    )
            categories = [dict(id=i, name=n) for i, n in enumerate(self.class_names) if i]
            coco = coco_api.COCO()
            coco.dataset = dict(images=images, annotations=annotations, categories=categories)
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco


def collate_detections(batch):
    """Stack equal-size images into ``[N, 3, H, W]``; targets stay a list (box counts vary)."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(list(images)), list(targets)


# --- data specs -----------------------------------------------------------------------------------


@dataclass
class DetectionData:
    """A dataset's splits (None where not asked for) and its classes."""

    name: str
    train: CocoDetection | VocDetection | None
    val: CocoDetection | VocDetection | None
    class_names: tuple[str, ...]  # class_names[0] is background
    category_ids: tuple[int, ...]  # the id each label is written as in COCO results


def synthetic_shapes_root(count: int) -> Path:
    """The folder of ``synthetic-shapes:count``, generated on first use. Every process (of a
    torchrun job, or separate runs) may generate it: each writes a private folder and renames
    it into place, and the one that loses the race uses the winner's identical files."""
    root = data_dirs()[0] / f"{SYNTHETIC_SHAPES}-{count}-{SYNTHETIC_SHAPES_SIDE}px-seed0"
    if (root / "annotations" / "instances_val.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)  # mkdtemp makes 0700; the cache is an ordinary folder
    try:
        make_synthetic_coco(
            temporary,
            num_train=count,
            num_val=max(1, count // 5),
            image_size=SYNTHETIC_SHAPES_SIDE,
            seed=0,
        )
        os.replace(temporary, root)
    except OSError as error:
        if not (root / "annotations" / "instances_val.json").is_file():
            raise MobileNetsError(
                f"cannot write {SYNTHETIC_SHAPES} data into {str(root.parent)!r}: {error} (set "
                "$MOBILENETS_DATA to a writable folder)"
            ) from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return root


def _coco_folder(root: Path) -> dict[str, tuple[Path, Path]]:
    for year in ("", "2017"):
        found = {
            split: (root / f"{split}{year}", root / "annotations" / f"instances_{split}{year}.json")
            for split in ("train", "val")
        }
        if all(images.is_dir() and labels.is_file() for images, labels in found.values()):
            return found
    raise MobileNetsError(
        f"coco:{root} needs train/ and val/ image folders with "
        "annotations/instances_train.json and annotations/instances_val.json (or the 2017 "
        "names: train2017/, annotations/instances_train2017.json, ...)"
    )


def load_detection_data(spec: str, splits: tuple[str, ...] = ("train", "val")) -> DetectionData:
    """The datasets a ``data`` spec names (see [`DATA_HELP`][mobilenets.data.detection.DATA_HELP]),
    without transforms. Only the ``splits`` asked for are read: evaluation need not parse a large
    training file."""
    if not isinstance(spec, str) or not spec:
        raise MobileNetsError(f"data={spec!r} is not one of: {DATA_HELP}")
    kind, _, rest = spec.partition(":")
    if kind == SYNTHETIC_SHAPES:
        count = SYNTHETIC_SHAPES_TRAIN
        if rest:
            try:
                count = int(rest)
            except ValueError:
                count = 0
            if count < 1:
                raise MobileNetsError(
                    f"{SYNTHETIC_SHAPES}:N takes a positive number of training images, got {rest!r}"
                )
        root = synthetic_shapes_root(count)
        paths = {s: (root / s, root / "annotations" / f"instances_{s}.json") for s in splits}
    elif kind == "coco" and rest:
        parts = rest.split(",")
        if len(parts) == 4:
            paths = {
                "train": (Path(parts[0]), Path(parts[1])),
                "val": (Path(parts[2]), Path(parts[3])),
            }
        elif len(parts) == 1:
            paths = _coco_folder(Path(rest))
        else:
            raise MobileNetsError(
                f"coco: takes DIR or TRAIN_IMAGES,TRAIN_JSON,VAL_IMAGES,VAL_JSON, got {rest!r}"
            )
        for images, _ in paths.values():
            if not images.is_dir():
                raise MobileNetsError(f"coco: image folder {str(images)!r} does not exist")
    elif kind == "voc" and rest:
        root = Path(rest)
        main = root / "ImageSets" / "Main"
        names = {"train": "trainval", "val": "test"}
        if not (main / "test.txt").is_file():
            names = {"train": "train", "val": "val"}
        found = {split: VocDetection(root, names[split]) for split in splits}
        first = next(iter(found.values()))
        return DetectionData(
            spec, found.get("train"), found.get("val"), first.class_names, first.category_ids
        )
    else:
        raise MobileNetsError(f"data={spec!r} is not one of: {DATA_HELP}")
    found = {split: CocoDetection(*paths[split]) for split in splits}
    first = next(iter(found.values()))
    for split, dataset in found.items():
        if dataset.category_ids != first.category_ids:
            raise MobileNetsError(
                f"data={spec!r}: the {split} split has categories {list(dataset.category_ids[1:])}"
                f", the other split {list(first.category_ids[1:])}"
            )
    return DetectionData(
        spec, found.get("train"), found.get("val"), first.class_names, first.category_ids
    )


def detection_preprocessing(resolution: int, backbone_weights: str | None) -> Preprocessing:
    """The input normalization: the one the backbone weights were trained with (Keras: [-1, 1]),
    ImageNet's mean and std otherwise. Images are resized straight to the square input."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if isinstance(backbone_weights, str) and looks_like_source(backbone_weights):
        published = default_preprocessing(backbone_weights.partition(":")[0], resolution)
        mean, std = published.mean, published.std
    return Preprocessing(resolution, tuple(mean), tuple(std))
