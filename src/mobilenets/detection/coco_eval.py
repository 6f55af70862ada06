"""COCO box mAP with pycocotools' COCOeval.

Detections are ours (pixel (x1, y1, x2, y2) boxes, contiguous labels 1..C-1); they become COCO
results (``[x, y, width, height]``, original category ids) here. The summary keeps COCOeval's
numbers: AP at IoU 0.50:0.95, AP50, AP75, AP for small / medium / large objects and AR at 100
detections, each in [0, 1], or -1 where the ground truth has no object of that size.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence

import torch

from mobilenets.detection.datasets import load_coco_api
from mobilenets.errors import MobileNetsError

# COCOeval.stats positions of the metrics reported.
METRICS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def coco_results(
    detections: Mapping[int, Mapping[str, torch.Tensor]], category_ids: Sequence[int]
) -> list[dict]:
    """COCO result records from ``{image_id: {"boxes", "scores", "labels"}}``;
    ``category_ids[label]`` is the category a label is written as."""
    results = []
    for image_id, found in detections.items():
        boxes = torch.as_tensor(found["boxes"], dtype=torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(found["scores"]).reshape(-1).tolist()
        labels = torch.as_tensor(found["labels"]).reshape(-1).tolist()
        if not len(boxes) == len(scores) == len(labels):
            raise MobileNetsError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                f"{len(labels)} labels (one each per detection)"
            )
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores, labels, strict=True):
            if not 1 <= label < len(category_ids):
                raise MobileNetsError(
                    f"image {image_id}: label {label} is not in 1..{len(category_ids) - 1}"
                )
            results.append({
                "image_id": int(image_id), "category_id": int(category_ids[label]),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
            })  # fmt: skip
    return results


def evaluate_coco(
    coco_gt,
    detections: Mapping[int, Mapping[str, torch.Tensor]],
    category_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO box metrics of ``detections`` against ``coco_gt``.

    ``coco_gt``: an annotation file path or a ``pycocotools.coco.COCO``. ``detections``:
    ``{image_id: {"boxes" [K, 4] pixel (x1, y1, x2, y2), "scores" [K], "labels" [K]}}`` with an
    entry for every evaluated image, also those with no detections: the images evaluated are
    exactly its keys. ``category_ids[label]`` maps labels to category ids; by default labels
    number the ground truth's categories sorted by id (as :class:`CocoDetection` does).
    No detections at all scores 0.0 everywhere.
    """
    if isinstance(coco_gt, (str, os.PathLike)):
        coco_gt = load_coco_api(coco_gt)
    if category_ids is None:
        category_ids = (0, *sorted(coco_gt.cats))
    unknown = sorted(set(detections) - set(coco_gt.imgs))
    if unknown:
        raise MobileNetsError(
            f"detections for image ids {unknown[:5]} that the ground truth does not have"
        )
    results = coco_results(detections, category_ids)
    if not results:
        return {name: 0.0 for name in METRICS}
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(int(i) for i in detections)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(evaluator.stats[index]) for name, index in METRICS.items()}
