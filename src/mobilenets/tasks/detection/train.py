"""Training an SSDLite detector: the settings and the task that plugs into the engine.

[`TrainConfig`][mobilenets.tasks.detection.train.TrainConfig] holds every setting
(the shared ones of [`TrainSettings`][mobilenets.engine.settings.TrainSettings] and the detector's
own); [`fit`][mobilenets.tasks.detection.train.fit] runs a whole job into an
output folder through [`mobilenets.engine.run.fit`][mobilenets.engine.run.fit], with the guarantees
of every run there (atomic files, exact resume, torchrun). Its metrics rows hold the train losses
and COCO metrics on the validation split; ``best.safetensors`` is the epoch with the best AP;
``eval.json`` holds the final COCO metrics.

``data`` specs: see [`mobilenets.data.detection.DATA_HELP`][mobilenets.data.detection.DATA_HELP]
(``synthetic-shapes[:N]``, ``coco:DIR``, ``coco:TRAIN_IMAGES,TRAIN_JSON,VAL_IMAGES,VAL_JSON``,
``voc:ROOT``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mobilenets.core.boxes import assign_batch
from mobilenets.core.detection_spec import DetectionConfig
from mobilenets.core.detector import SSDLite
from mobilenets.core.extras import require
from mobilenets.core.files import write_json
from mobilenets.data.detection import (
    SYNTHETIC_SHAPES,
    SYNTHETIC_SHAPES_TRAIN,
    collate_detections,
    detection_preprocessing,
    load_detection_data,
)
from mobilenets.data.detection_transforms import eval_transform, make_train_transform
from mobilenets.engine.device import autocast, to_device
from mobilenets.engine.loop import Trainer
from mobilenets.engine.run import FitResult, Job, RunContext, check_resumed_model, log
from mobilenets.engine.run import fit as fit_task
from mobilenets.engine.settings import TrainSettings
from mobilenets.tasks.detection.evaluate import METRIC_NAMES, SCORING, evaluate_detector
from mobilenets.tasks.detection.loss import CLASSIFICATION_LOSSES, MultiBoxLoss
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.registry import resolve_detection_config

AUGMENTS = ("ssd", "flip")


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Every detection training setting. Stored beside the outputs and in every checkpoint.

    AdamW at 0.003 with a cosine schedule is the default because it is what learned fastest from
    scratch in the short CPU runs of ``benchmarks/detection_synthetic.py`` (which sets its own
    epochs, batch, augmentation and matching); TF's SSDLite config trains with RMSProp at 0.004
    for 200k steps of 24 images.
    """

    data: str = f"{SYNTHETIC_SHAPES}:{SYNTHETIC_SHAPES_TRAIN}"
    model: str = "ssdlite_mobilenet_v2"
    epochs: int = 20
    batch_size: int = 32  # per process
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4  # on conv weights; BN and biases are not decayed
    loss: str = "softmax"  # softmax with 3:1 hard negative mining (SSD), or focal
    neg_pos_ratio: float = 3.0
    match_iou: float = 0.5  # SSD section 2.2: a default box is positive at IoU >= 0.5
    augment: str = "ssd"  # ssd: SSD paper section 2.2; flip: horizontal flips only
    backbone_weights: str | None = None  # torchvision, timm, keras or a classification file

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choices(loss=CLASSIFICATION_LOSSES, augment=AUGMENTS)
        self.check_positive("neg_pos_ratio")
        self.check_interval("match_iou", low_open=True)
        allowed = "'torchvision', 'timm', 'keras' (or SOURCE:TAG) or a file path"
        backbone = self.path_or_name(self.backbone_weights, "backbone_weights", allowed)
        object.__setattr__(self, "backbone_weights", backbone)


class AssignTargets:
    """A collate function that also matches: stacked images, the targets, and each image's anchor
    labels ``[N, A]`` and box offsets ``[N, A, 4]``
    ([`assign_batch`][mobilenets.tasks.detection.train.assign_batch]). Run in the loader's workers,
    the matching overlaps the training step instead of preceding it."""

    def __init__(self, anchors: torch.Tensor, iou_threshold: float = 0.5) -> None:
        self.anchors, self.iou_threshold = anchors.detach().cpu(), iou_threshold

    def __call__(self, batch):
        images, targets = collate_detections(batch)
        return images, targets, *assign_batch(self.anchors, targets, self.iou_threshold)


def detection_loss(criterion: MultiBoxLoss):
    """The ``loss_fn`` of [`mobilenets.engine.loop.train_epoch`][mobilenets.engine.loop.train_epoch]
    for the batches of [`AssignTargets`][mobilenets.tasks.detection.train.AssignTargets]; the epoch
    also adds up the box and class parts."""

    def loss_fn(model, batch, trainer: Trainer):
        images, targets, labels, box_targets = batch
        device = trainer.device
        images = to_device(images, device, trainer.config.channels_last)
        with autocast(device, trainer.dtype):
            out = model(images)
        loss = criterion(
            out["cls_logits"],
            out["box_regression"],
            labels.to(device, non_blocking=True),
            box_targets.to(device, non_blocking=True),
        )
        count = len(targets)
        sums = {"box_sum": loss.box.detach() * count, "cls_sum": loss.cls.detach() * count}
        return loss.total, count, sums

    return loss_fn


class Detection:
    """SSD training on the engine: matched default boxes, the multibox loss, COCO evaluation,
    best by AP."""

    name = "detection"
    config_type = TrainConfig
    score = "val_AP"

    def __init__(self) -> None:
        self.started = time.monotonic()

    def prepare(self, config: TrainConfig, saved_run: dict | None, context: RunContext) -> Job:
        require("pycocotools.cocoeval", SCORING)  # every epoch is scored: fail before the first
        data = load_detection_data(config.data)
        model_config = resolve_detection_config(
            config.model,
            alpha=config.alpha,
            resolution=config.resolution,
            num_classes=len(data.class_names),
        )
        if saved_run is not None:
            # The saved config, which has the padding and BN eps of the backbone weights.
            saved = DetectionConfig.from_dict(saved_run["detection_config"])
            check_resumed_model(saved, model_config, config.data)
            model = SSDLite(saved)
        elif config.backbone_weights is not None:
            model = create_detector(
                model_config, backbone_weights=config.backbone_weights, progress=context.progress
            )
        else:
            model = SSDLite(model_config)
        preprocessing = detection_preprocessing(model.config.resolution, config.backbone_weights)
        data.train.transform = make_train_transform(preprocessing, config.augment)
        data.val.transform = eval_transform(preprocessing)
        criterion = MultiBoxLoss(neg_pos_ratio=config.neg_pos_ratio, classification=config.loss)

        scoring = dict(loss=config.loss, batch_size=config.batch_size, workers=config.workers)

        def evaluate_model(model: SSDLite) -> dict[str, float]:
            return evaluate_detector(model, data.val, **scoring, **context.evaluation(config))

        category_ids = list(data.category_ids)
        return Job(
            model,
            data.train,
            detection_loss(criterion),
            evaluate_model,
            data.class_names,
            preprocessing,
            record={"detection_config": model.config.to_dict(), "category_ids": category_ids},
            checkpoint_info={"category_ids": category_ids},
            collate=AssignTargets(model.anchors(), config.match_iou),
        )

    def train_metrics(self, sums: dict[str, float], seen: float) -> dict:
        return {"train_box_loss": sums["box_sum"] / seen, "train_cls_loss": sums["cls_sum"] / seen}

    def val_metrics(self, metrics: dict[str, float]) -> dict:
        return {f"val_{name}": metrics[name] for name in METRIC_NAMES}

    def describe(self, row: dict, epochs: int) -> str:
        return (
            f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} (box "
            f"{row['train_box_loss']:.4f}, cls {row['train_cls_loss']:.4f}), val AP "
            f"{row['val_AP']:.3f}, AP50 {row['val_AP50']:.3f}, {row['images_per_s']:.1f} images/s"
        )

    def finish(self, out: Path, metrics: dict[str, float], history: list[dict], run: dict) -> None:
        write_json(out / "eval.json", {"data": run["train_config"]["data"], **metrics})
        log.info(f"done in {time.monotonic() - self.started:.0f} s")


def fit(config: TrainConfig | None, out: str | os.PathLike, **options) -> FitResult:
    """Train a detector with ``config`` into the folder ``out``; ``options`` are
    [`mobilenets.engine.run.fit`][mobilenets.engine.run.fit]'s (``resume``, ``placement``,
    ``progress``). ``result.best`` is the best validation AP and ``result.final``
    the COCO metrics of the shipped weights."""
    return fit_task(Detection(), config, out, **options)
