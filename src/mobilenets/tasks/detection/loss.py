"""The SSD training loss: box regression plus classification, per SSD paper section 2.2.

``L = (L_conf + box_weight * L_loc) / N`` with N the number of positive anchors in the batch.
``L_loc`` is smooth L1 (beta 1) over the positives' offsets. ``L_conf`` is either

- ``"softmax"`` (the paper's): cross-entropy over C classes (0 background) on the positives and
  on the hardest negatives, at most ``neg_pos_ratio`` negatives per positive, chosen per image
  by their cross-entropy (hard negative mining); or
- ``"focal"`` (RetinaNet, Lin et al. 2017): sigmoid focal loss over every anchor and every object
  class, one-hot targets with background as all zeros; the background logit is not used.

An image without objects would get no negatives under the paper's rule and so teach nothing
about background; here it is mined as if it had one object (``neg_pos_ratio`` negatives), and
N is at least 1, so a batch of empty images still trains background.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from mobilenets.core.errors import MobileNetsError

CLASSIFICATION_LOSSES = ("softmax", "focal")


class DetectionLoss(NamedTuple):
    """The loss and its parts, each already divided by the number of positives."""

    total: torch.Tensor
    box: torch.Tensor
    cls: torch.Tensor
    num_positives: int


def hard_negatives(
    cls_loss: torch.Tensor, labels: torch.Tensor, neg_pos_ratio: float
) -> torch.Tensor:
    """Mask ``[N, A]`` of the negatives with the highest loss: ``neg_pos_ratio`` times each
    image's positives (times 1 for an image without positives), or all its negatives if fewer."""
    positive = labels > 0
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = (neg_pos_ratio * num_pos.clamp(min=1)).long()
    num_neg = torch.minimum(num_neg, (~positive).sum(dim=1, keepdim=True))
    mining = cls_loss.detach().masked_fill(positive, -float("inf"))
    # The rank of each anchor in its image's descending order: the double argsort.
    rank = mining.argsort(dim=1, descending=True).argsort(dim=1)
    return rank < num_neg


class MultiBoxLoss(nn.Module):
    """SSD loss over assigned targets (see
    [`mobilenets.core.boxes.assign_batch`][mobilenets.core.boxes.assign_batch]).

    ``forward(cls_logits [N, A, C], box_regression [N, A, 4], labels [N, A] int64 in 0..C-1,
    box_targets [N, A, 4])`` returns a
    [`DetectionLoss`][mobilenets.tasks.detection.loss.DetectionLoss].
    """

    def __init__(
        self,
        neg_pos_ratio: float = 3.0,
        classification: str = "softmax",
        box_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if classification not in CLASSIFICATION_LOSSES:
            raise MobileNetsError(
                f"classification must be one of {', '.join(CLASSIFICATION_LOSSES)}, "
                f"got {classification!r}"
            )
        if not neg_pos_ratio > 0:
            raise MobileNetsError(f"neg_pos_ratio must be positive, got {neg_pos_ratio!r}")
        if not box_weight >= 0:
            raise MobileNetsError(f"box_weight must be >= 0, got {box_weight!r}")
        self.neg_pos_ratio, self.classification = neg_pos_ratio, classification
        self.box_weight, self.focal_alpha, self.focal_gamma = box_weight, focal_alpha, focal_gamma

    def forward(
        self,
        cls_logits: torch.Tensor,
        box_regression: torch.Tensor,
        labels: torch.Tensor,
        box_targets: torch.Tensor,
    ) -> DetectionLoss:
        num_classes = cls_logits.shape[-1]
        if labels.shape != cls_logits.shape[:2] or box_targets.shape != box_regression.shape:
            raise MobileNetsError(
                f"loss inputs disagree: cls_logits {tuple(cls_logits.shape)}, labels "
                f"{tuple(labels.shape)}, box_regression {tuple(box_regression.shape)}, "
                f"box_targets {tuple(box_targets.shape)}"
            )
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise MobileNetsError(
                f"labels must be in 0..{num_classes - 1} for {num_classes} classes, got "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        cls_logits, box_regression = cls_logits.float(), box_regression.float()
        positive = labels > 0
        num_positives = int(positive.sum())
        normalizer = max(num_positives, 1)
        box_loss = F.smooth_l1_loss(
            box_regression[positive], box_targets[positive].float(), reduction="sum"
        )
        if self.classification == "softmax":
            cross_entropy = F.cross_entropy(
                cls_logits.flatten(0, 1), labels.flatten(), reduction="none"
            ).view_as(labels)
            negative = hard_negatives(cross_entropy, labels, self.neg_pos_ratio)
            cls_loss = cross_entropy[positive | negative].sum()
        else:
            one_hot = F.one_hot(labels, num_classes)[..., 1:].to(cls_logits.dtype)
            cls_loss = sigmoid_focal_loss(
                cls_logits[..., 1:], one_hot, self.focal_alpha, self.focal_gamma, reduction="sum"
            )
        box_loss, cls_loss = box_loss / normalizer, cls_loss / normalizer
        total = cls_loss + self.box_weight * box_loss
        return DetectionLoss(total, box_loss, cls_loss, num_positives)
