"""Classification evaluation: loss, top-1, top-5 and the confusion matrix of a model on a loader.

Training reports it after every epoch; the checkpoint commands and the int8 deployment check
([`mobilenets.deploy.quantize`][mobilenets.deploy.quantize]) score models with the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mobilenets.core.errors import MobileNetsError
from mobilenets.engine.device import Distributed, all_sum, autocast, to_device

TTA_PASSES = {"none": 1, "flip": 2}  # test-time augmentation: forward passes per image
TTA_MODES = tuple(TTA_PASSES)


@dataclass
class Evaluation:
    """Top-1/top-5 and per-class accuracy from a confusion matrix (rows: true class)."""

    loss: float
    top1: float
    top5: float
    count: int
    confusion: torch.Tensor

    @property
    def per_class(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diagonal() / totals).tolist()

    def to_dict(self, classes=None) -> dict:
        classes = classes or [str(i) for i in range(len(self.confusion))]
        return {
            "loss": self.loss,
            "top1": self.top1,
            "top5": self.top5,
            "count": self.count,
            "per_class": dict(zip(classes, self.per_class, strict=True)),
            "confusion": self.confusion.tolist(),
        }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    distributed: Distributed = Distributed(),
    progress: bool = False,
    tta: str = "none",
) -> Evaluation:
    """Loss, top-1, top-5 and the confusion matrix of ``model`` over ``loader``; with several
    processes, each evaluates its share and the sums are all-reduced. ``tta="flip"`` scores
    each image by the mean of the class probabilities of it and its mirror image (test-time
    augmentation, for models trained with horizontal flips; twice the inference cost)."""
    check_tta(tta)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-5 hits, count
    k = min(5, num_classes)
    for images, labels in tqdm(loader, desc="eval", leave=False, disable=not progress):
        images = to_device(images, device, channels_last)
        labels = labels.to(device)
        with autocast(device, dtype):
            scores = tta_log_probabilities(model, images, tta)
        sums[0] += F.nll_loss(scores, labels, reduction="sum")
        sums[1] += (scores.topk(k, 1).indices == labels[:, None]).any(1).sum()
        sums[2] += len(labels)
        confusion += torch.bincount(
            labels * num_classes + scores.argmax(1), minlength=num_classes**2
        ).view(num_classes, num_classes)
    model.train(was_training)
    all_sum(confusion, distributed)
    all_sum(sums, distributed)
    count = int(sums[2].item())
    if count == 0:
        raise MobileNetsError("evaluation data is empty")
    return Evaluation(
        loss=sums[0].item() / count,
        top1=confusion.diagonal().sum().item() / count,
        top5=sums[1].item() / count,
        count=count,
        confusion=confusion.cpu(),
    )


def check_tta(tta: str) -> None:
    if tta not in TTA_MODES:
        raise MobileNetsError(f"tta {tta!r} is not one of {', '.join(TTA_MODES)}")


def tta_log_probabilities(model: torch.nn.Module, images: torch.Tensor, tta: str) -> torch.Tensor:
    """Log of the mean class probabilities of ``images`` and, with ``tta="flip"``, of their
    mirror images. One view is its own log_softmax, so without TTA the loss is plain
    cross-entropy and the ranking that of the logits."""
    views = [images, images.flip(-1)] if tta == "flip" else [images]
    log_probabilities = torch.stack([model(view).float().log_softmax(1) for view in views])
    return torch.logsumexp(log_probabilities, 0) - math.log(len(views))
