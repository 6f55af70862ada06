"""COCO instances as semantic segmentation masks of the 20 PASCAL VOC categories, read as
torchvision's segmentation reference reads them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.data.detection import (
    IMAGE_FIELDS,
    VOC_CLASSES,
    load_coco_api,
)
from mobilenets.data.segmentation_files import IGNORE_INDEX, SegmentationFiles

log = logging.getLogger("mobilenets")

# torchvision references/segmentation/coco_utils.py: the COCO category id of each VOC class
# (0 stands for background; COCO has no category 0).
COCO_VOC_CATEGORY_IDS = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
# torchvision's _coco_remove_images_without_annotations: a training image is kept when its VOC
# category annotations have more than this much area (the sum of their ``area`` fields).
COCO_TRAIN_MIN_AREA = 1000

VOC_SEGMENTATION_CLASSES = ("background", *VOC_CLASSES)


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
