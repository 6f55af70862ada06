"""Scoring a detector: COCO box mAP with pycocotools' COCOeval, of a model or a checkpoint.

Detections are ours (pixel (x1, y1, x2, y2) boxes, contiguous labels 1..C-1); they become COCO
results (``[x, y, width, height]``, original category ids) here. The summary keeps COCOeval's
numbers: AP at IoU 0.50:0.95, AP50, AP75, AP for small / medium / large objects and AR at 100
detections, each in [0, 1], or -1 where the ground truth has no object of that size.
pycocotools is the ``detection`` extra (``pip install 'mobilenets[detection]'``).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.data.detection import CocoDetection, VocDetection, collate_detections, load_coco_api
from mobilenets.engine.device import Distributed, pick_device
from mobilenets.engine.loop import ordered_loader
from mobilenets.tasks.detection.inference import DetectionCheckpoint, checkpoint_data, detect_batch

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
# COCOeval.stats positions of the metrics reported.
METRICS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}
SCORING = "scoring COCO mAP"  # what needs pycocotools' COCOeval


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
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


def evaluate_coco(
    coco_gt,
    detections: Mapping[int, Mapping[str, torch.Tensor]],
    category_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO box metrics of ``detections`` against ``coco_gt``.

    ``coco_gt``: an annotation file path or a ``pycocotools.coco.COCO``. ``detections``:
    ``{image_id: {"boxes" [K, 4] pixel (x1, y1, x2, y2), "scores" [K], "labels" [K]}}`` with an
    entry for every evaluated image, also those with no detections: the images evaluated are exactly
    its keys. ``category_ids[label]`` maps labels to category ids; by default labels number the
    ground truth's categories sorted by id (as
    [`CocoDetection`][mobilenets.tasks.detection.evaluate.CocoDetection] does). No detections at all
    scores 0.0 everywhere.
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
    cocoeval = require("pycocotools.cocoeval", SCORING)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = cocoeval.COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(int(i) for i in detections)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(evaluator.stats[index]) for name, index in METRICS.items()}


# --- Evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_detector(
    model: SSDLite,
    dataset: CocoDetection | VocDetection,
    *,
    loss: str = "softmax",
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    distributed: Distributed | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """COCO metrics (AP, AP50, AP75, APs, APm, APl, AR100) of ``model`` on ``dataset``, whose
    transform must be the evaluation one. With several processes each detects its share and
    every process scores the gathered detections."""
    device = torch.device(device)
    if dataset.num_classes != model.num_classes:
        raise MobileNetsError(
            f"{model.name} has {model.num_classes} classes (background included), the data "
            f"{dataset.num_classes}: {', '.join(dataset.class_names[1:])}"
        )

    def detect(images: torch.Tensor, sizes) -> list[dict]:
        return detect_batch(
            model, images, sizes, loss=loss, dtype=dtype, channels_last=channels_last
        )

    was_training = model.training
    model.eval()
    try:
        return evaluate_detections(
            detect,
            dataset,
            batch_size=batch_size,
            workers=workers,
            device=device,
            distributed=distributed,
            progress=progress,
        )
    finally:
        model.train(was_training)


def evaluate_detections(
    detect: Callable[[torch.Tensor, list[tuple[int, int]]], list[dict]],
    dataset: CocoDetection | VocDetection,
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    distributed: Distributed | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """COCO metrics of the detections ``detect(images, sizes)`` returns for batches of
    ``dataset`` (its evaluation transform applied): a dict per image as
    [`postprocess`][mobilenets.core.boxes.postprocess] gives, boxes in pixels of each image's
    ``(height, width)`` in ``sizes``. What ``evaluate_detector`` does for a PyTorch model, for
    any runtime (an exported file, for one)."""
    distributed = distributed or Distributed()
    if len(dataset) == 0:
        raise MobileNetsError("evaluation data is empty")
    loader = ordered_loader(
        dataset, batch_size, workers, torch.device(device), collate_detections, distributed
    )
    detections = {}
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        found = detect(images, [t["orig_size"] for t in targets])
        for target, result in zip(targets, found, strict=True):
            detections[target["image_id"]] = {k: v.cpu() for k, v in result.items()}
    if distributed.enabled:
        shares = [None] * distributed.world_size
        dist.all_gather_object(shares, detections)
        detections = {key: value for share in shares for key, value in share.items()}
    return evaluate_coco(dataset.coco, detections, dataset.category_ids)


def evaluate(
    checkpoint: DetectionCheckpoint, data: str, *, device: str = "auto", **options
) -> dict[str, float]:
    """COCO metrics of a checkpoint on the validation split of ``data``, on ``device`` (``"auto"``
    picks one); ``options`` are
    [`evaluate_detector`][mobilenets.tasks.detection.evaluate.evaluate_detector]'s
    (``batch_size``, ``workers``, ``dtype``, ``progress``, ...), with its defaults."""
    dataset = checkpoint_data(checkpoint, data, splits=("val",)).val
    device = pick_device(device)
    model = checkpoint.model.to(device)
    return evaluate_detector(model, dataset, loss=checkpoint.loss, device=device, **options)
