"""SSD box coding, matching and post-processing.

Conventions shared by the whole detection package:

- default boxes (anchors) are a tensor ``[A, 4]`` of ``(cx, cy, w, h)`` normalized to [0, 1];
- ground-truth and predicted boxes are ``(x1, y1, x2, y2)``, normalized to [0, 1] until
  [`postprocess`][mobilenets.core.boxes.postprocess] scales them to pixels;
- class index 0 is background, object classes are 1..C-1;
- box offsets are the SSD / TF object-detection coding (SSD paper, eq. 2, with the variances
  of the released Caffe model): ``tx = (cx - acx) / aw / 0.1``, ``ty = (cy - acy) / ah / 0.1``,
  ``tw = log(w / aw) / 0.2``, ``th = log(h / ah) / 0.2`` (TF's ``scale_factors=(10, 10, 5, 5)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.ops import batched_nms, box_convert, box_iou

from mobilenets.core.errors import MobileNetsError

CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
# Decoded log-sizes are clipped here so an untrained head cannot overflow exp(); the same bound
# torchvision's box coder uses (a box at most 1000/16 times its anchor).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def _check_boxes(name: str, boxes: torch.Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise MobileNetsError(f"{name} must have shape [K, 4], got {tuple(boxes.shape)}")


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Offsets ``[..., A, 4]`` that move each anchor onto its box.

    ``boxes``: ``[..., A, 4]`` (x1, y1, x2, y2) with positive width and height; ``anchors``:
    ``[A, 4]`` (cx, cy, w, h).
    """
    centers = box_convert(boxes, "xyxy", "cxcywh")
    offset_xy = (centers[..., :2] - anchors[:, :2]) / anchors[:, 2:] / CENTER_VARIANCE
    offset_wh = torch.log(centers[..., 2:] / anchors[:, 2:]) / SIZE_VARIANCE
    return torch.cat([offset_xy, offset_wh], dim=-1)


def decode(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes ``[..., A, 4]`` (x1, y1, x2, y2) from offsets ``[..., A, 4]``; inverse of encode."""
    center = anchors[:, :2] + offsets[..., :2] * CENTER_VARIANCE * anchors[:, 2:]
    log_scale = (offsets[..., 2:] * SIZE_VARIANCE).clamp(max=MAX_LOG_SCALE)
    half = 0.5 * (anchors[:, 2:] * torch.exp(log_scale))
    # box_convert's arithmetic (center -+ 0.5 * size), on slices: its unbind becomes squeeze
    # ops that ExecuTorch's XNNPACK delegate leaves outside (see tasks.detection.export)
    return torch.cat([center - half, center + half], dim=-1)


def match(
    anchors: torch.Tensor, gt_boxes: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """For each anchor, the index of its ground-truth box, or -1 for background.

    SSD paper section 2.2: an anchor is matched to the box it overlaps most when that IoU is at
    least ``iou_threshold``; and every box is first given its own best anchor, even below the
    threshold, so no object goes without a positive. The forced pairs are chosen greedily by
    IoU, highest first, each anchor and box used once: two boxes that want the same anchor
    both get one (the weaker takes its next-best anchor), which the original's loop
    (``best_truth_idx[best_prior_idx[j]] = j``, last box wins) does not promise. A forced pair
    overrides the anchor's threshold match. A box that overlaps no anchor at all (IoU 0) is
    not forced.

    ``anchors``: ``[A, 4]`` (cx, cy, w, h); ``gt_boxes``: ``[G, 4]`` (x1, y1, x2, y2). Returns
    int64 ``[A]``.
    """
    _check_boxes("anchors", anchors)
    _check_boxes("gt_boxes", gt_boxes)
    if not 0 < iou_threshold <= 1:
        raise MobileNetsError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    if gt_boxes.shape[0] == 0:
        return matched
    iou = box_iou(gt_boxes, box_convert(anchors, "cxcywh", "xyxy"))  # [G, A]
    best_iou, best_gt = iou.max(dim=0)
    above = best_iou >= iou_threshold
    matched[above] = best_gt[above]
    free = iou.clone()
    for _ in range(min(free.shape)):
        value, flat = free.flatten().max(dim=0)
        if value <= 0:
            break
        gt, anchor = divmod(int(flat), free.shape[1])
        matched[anchor] = gt
        free[gt, :] = -1
        free[:, anchor] = -1
    return matched


def assign_targets(
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    iou_threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor training targets: labels ``[A]`` (0 background, else the matched box's
    label) and encoded offsets ``[A, 4]`` (zero for background anchors)."""
    if gt_labels.shape != gt_boxes.shape[:1]:
        raise MobileNetsError(
            f"gt_labels must have one label per box: {tuple(gt_labels.shape)} labels for "
            f"{tuple(gt_boxes.shape)} boxes"
        )
    if gt_labels.numel() and int(gt_labels.min()) < 1:
        raise MobileNetsError(
            f"object labels must be >= 1 (0 is background), got {int(gt_labels.min())}"
        )
    if gt_boxes.numel() and not bool((gt_boxes[:, 2:] > gt_boxes[:, :2]).all()):
        bad = gt_boxes[~(gt_boxes[:, 2:] > gt_boxes[:, :2]).all(dim=1)][0].tolist()
        raise MobileNetsError(f"ground-truth boxes need x1 < x2 and y1 < y2, got {bad}")
    matched = match(anchors, gt_boxes, iou_threshold)
    positive = matched >= 0
    labels = torch.zeros(anchors.shape[0], dtype=torch.long, device=anchors.device)
    box_targets = torch.zeros(anchors.shape[0], 4, dtype=anchors.dtype, device=anchors.device)
    labels[positive] = gt_labels[matched[positive]].long()
    box_targets[positive] = encode(gt_boxes[matched[positive]].to(anchors.dtype), anchors[positive])
    return labels, box_targets


def assign_batch(
    anchors: torch.Tensor, targets: Sequence[dict], iou_threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """[`assign_targets`][mobilenets.core.boxes.assign_targets] for each image's
    ``{"boxes", "labels"}``: stacked labels ``[N, A]`` and offsets ``[N, A, 4]``, the inputs
    [`MultiBoxLoss`][mobilenets.tasks.detection.loss.MultiBoxLoss] takes."""
    pairs = [
        assign_targets(
            anchors, t["boxes"].to(anchors), t["labels"].to(anchors.device), iou_threshold
        )
        for t in targets
    ]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def postprocess(
    cls_logits: torch.Tensor,
    box_regression: torch.Tensor,
    anchors: torch.Tensor,
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    image_size: tuple[int, int] | Sequence[tuple[int, int]] = (1, 1),
    pre_nms_top_k: int = 1000,
) -> list[dict[str, torch.Tensor]]:
    """Detections per image from the head's outputs.

    Softmax over classes; each (anchor, object class) pair scoring above ``score_threshold`` is
    a candidate; the ``pre_nms_top_k`` best candidates go through class-wise NMS
    (``torchvision.ops.batched_nms`` at ``nms_iou``); the ``max_detections`` best survivors are
    kept. ``cls_logits``: ``[N, A, C]``; ``box_regression``: ``[N, A, 4]``; ``anchors``:
    ``[A, 4]``. ``image_size`` is ``(height, width)`` in pixels, one for the batch or one per
    image; the default ``(1, 1)`` keeps boxes normalized.

    Returns one dict per image: ``boxes`` float ``[K, 4]`` (x1, y1, x2, y2) in pixels,
    ``scores`` ``[K]`` in decreasing order, ``labels`` int64 ``[K]`` in 1..C-1.
    """
    if cls_logits.dim() != 3 or box_regression.shape != (*cls_logits.shape[:2], 4):
        raise MobileNetsError(
            "postprocess needs cls_logits [N, A, C] and box_regression [N, A, 4], got "
            f"{tuple(cls_logits.shape)} and {tuple(box_regression.shape)}"
        )
    if anchors.shape != (cls_logits.shape[1], 4):
        raise MobileNetsError(
            f"anchors must have shape [{cls_logits.shape[1]}, 4] to match the head, "
            f"got {tuple(anchors.shape)}"
        )
    scores = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]
    boxes = decode(box_regression.float(), anchors.float()).clamp(0, 1)
    return select_detections(
        scores,
        boxes,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        max_detections=max_detections,
        image_size=image_size,
        pre_nms_top_k=pre_nms_top_k,
    )


def select_detections(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    score_threshold: float = 0.01,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    image_size: tuple[int, int] | Sequence[tuple[int, int]] = (1, 1),
    pre_nms_top_k: int = 1000,
) -> list[dict[str, torch.Tensor]]:
    """What [`postprocess`][mobilenets.core.boxes.postprocess] does after the softmax and the
    decoding, for an exported detector whose outputs are already those: ``scores``
    ``[N, A, C-1]``, the object classes' probabilities (background dropped), and ``boxes``
    ``[N, A, 4]``, decoded (x1, y1, x2, y2) clamped to [0, 1]. Returns postprocess's
    detections."""
    if scores.dim() != 3 or boxes.shape != (*scores.shape[:2], 4):
        raise MobileNetsError(
            "select_detections needs scores [N, A, C-1] and boxes [N, A, 4], got "
            f"{tuple(scores.shape)} and {tuple(boxes.shape)}"
        )
    if not 0 <= score_threshold < 1 or not 0 < nms_iou <= 1 or max_detections < 1:
        raise MobileNetsError(
            "detections need 0 <= score_threshold < 1, 0 < nms_iou <= 1, max_detections >= 1; "
            f"got {score_threshold!r}, {nms_iou!r}, {max_detections!r}"
        )
    batch = scores.shape[0]
    sizes = list(image_size) if isinstance(image_size[0], (tuple, list)) else [image_size] * batch
    if len(sizes) != batch:
        raise MobileNetsError(f"image_size gives {len(sizes)} sizes for a batch of {batch}")
    results = []
    for image_scores, image_boxes, (height, width) in zip(
        scores.float(), boxes.float(), sizes, strict=True
    ):
        anchor_index, class_index = torch.nonzero(image_scores > score_threshold, as_tuple=True)
        candidate_scores = image_scores[anchor_index, class_index]
        if candidate_scores.numel() > pre_nms_top_k:
            candidate_scores, top = candidate_scores.topk(pre_nms_top_k)
            anchor_index, class_index = anchor_index[top], class_index[top]
        candidate_boxes = image_boxes[anchor_index]
        # A box clamped to a line at the image border has no area and cannot be evaluated.
        proper = (candidate_boxes[:, 2:] > candidate_boxes[:, :2]).all(dim=1)
        candidate_boxes, candidate_scores = candidate_boxes[proper], candidate_scores[proper]
        labels = class_index[proper] + 1
        keep = batched_nms(candidate_boxes, candidate_scores, labels, nms_iou)[:max_detections]
        scale = candidate_boxes.new_tensor([width, height, width, height])
        results.append(
            {
                "boxes": candidate_boxes[keep] * scale,
                "scores": candidate_scores[keep],
                "labels": labels[keep],
            }
        )
    return results
