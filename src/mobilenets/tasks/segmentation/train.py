"""Training a Mobile DeepLabv3 segmenter: the settings and the task that plugs into the engine.

[`TrainConfig`][mobilenets.tasks.segmentation.train.TrainConfig] holds
every setting (the shared ones of [`TrainSettings`][mobilenets.engine.settings.TrainSettings] and
the segmenter's own); [`fit`][mobilenets.tasks.segmentation.train.fit] runs a
whole job into an output folder through [`mobilenets.engine.run.fit`][mobilenets.engine.run.fit],
with the guarantees of every run there (atomic files, exact resume, torchrun). Besides the
engine's files (``train_config.json``, ``metrics.jsonl``, ``best.safetensors`` by validation mIoU,
``last.safetensors``, ``state/last.pt``) a run leaves:

    eval.json      the final metrics of the shipped weights: mIoU, pixel accuracy, mean class
                   accuracy, frequency-weighted IoU, the IoU of each class and the class names
    curves.png     training loss, validation mIoU and pixel accuracy per epoch
    iou.png        the final IoU of each class
    overlays/      a few validation images, ground truth beside prediction (NAME.png)

``data`` specs: see
[`SEGMENTATION_DATA_HELP`][mobilenets.data.segmentation.SEGMENTATION_DATA_HELP]
(``synthetic-shapes[:N]``, ``voc:ROOT``, ``voc-aug:VOC_ROOT,SBD_ROOT``, ``cityscapes:ROOT``,
``coco:ROOT``, ``folder:ROOT``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import write_json
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.segmentation_spec import (
    SEGMENTATION_OUTPUT_STRIDES,
    SegmentationConfig,
)
from mobilenets.core.segmenter import Segmenter, build_segmenter
from mobilenets.core.spec import MIN_RESOLUTION
from mobilenets.data.detection import SYNTHETIC_SHAPES
from mobilenets.data.segmentation import IGNORE_INDEX, collate_segmentation, load_segmentation_data
from mobilenets.data.segmentation_transforms import (
    CROP,
    eval_transform,
    segmentation_preprocessing,
    train_transform,
)
from mobilenets.engine.device import autocast, to_device
from mobilenets.engine.loop import Trainer
from mobilenets.engine.plots import figure_class
from mobilenets.engine.run import FitResult, Job, RunContext, check_resumed_model, log
from mobilenets.engine.run import fit as fit_task
from mobilenets.engine.settings import TrainSettings
from mobilenets.tasks.segmentation.evaluate import METRIC_NAMES, evaluate_segmenter
from mobilenets.tasks.segmentation.inference import comparison, predict_mask, save_png
from mobilenets.tasks.segmentation.plots import plot_class_iou, plot_segmentation_curves
from mobilenets.zoo.registry import resolve_segmentation_config
from mobilenets.zoo.segmenters import create_segmenter

OVERLAYS = 4  # validation images drawn at the end of a run


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Every segmentation training setting. Stored beside the outputs and in every checkpoint.

    The recipe is TF DeepLab's for PASCAL VOC, which MobileNetV2's section 6.3 follows: SGD with
    momentum 0.9 (not Nesterov), base learning rate 0.007 with the "poly" schedule
    ``(1 - step / steps) ** 0.9`` and no warmup, weight decay 4e-5 (DeepLab's for MobileNet
    backbones), output stride 16, 513 x 513 crops of images scaled by 0.5 to 2.0, flips. DeepLab
    trains 30k steps of 16 images from ImageNet weights (``backbone_weights``); the defaults here
    are 30 epochs of 8 images. The crop suits VOC-sized images (about 500 x 375): for the
    128-pixel ``synthetic-shapes`` set, a crop of 128 wastes less of each step on padding.

    - ``resolution``: the model's nominal input side, recorded in its config, at which its cost
      is given (the model itself takes any size); None: the crop.
    - ``output_stride`` 16 or 8: the backbone's by atrous convolution.
    - ``aspp``: the three atrous branches of ASPP in the head; None: the registered model's
      (off for ``deeplabv3_mobilenet_v2``, as the paper's recommended MNet V2* model, on for
      ``deeplabv3_mobilenet_v1``).
    - ``crop``, ``min_scale``, ``max_scale``, ``flip``: the training augmentation
      ([`train_transform`][mobilenets.data.segmentation_transforms.train_transform]).
    - ``aux_loss``: the weight of an auxiliary cross-entropy on a head over the stride-8
      features; 0 builds no auxiliary head.
    - ``backbone_weights``: start the backbone from a classifier: ``"torchvision"``, ``"timm"``,
      ``"keras"`` (``SOURCE:TAG``) or a file (a classification checkpoint of ours, or a foreign
      one); None: from scratch.
    - ``eval_batch_size``: images per validation batch; 1 scores each image on its own at its
      full size, as DeepLab does (a batch pads its images to the largest, and the model sees
      the padding near their edges).
    """

    data: str = SYNTHETIC_SHAPES
    model: str = "deeplabv3_mobilenet_v2"
    epochs: int = 30
    batch_size: int = 8  # per process
    optimizer: str = "sgd"
    lr: float = 0.007
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5  # on conv weights; BN and biases are not decayed
    schedule: str = "poly"
    warmup_epochs: float = 0.0
    output_stride: int = 16
    aspp: bool | None = None
    crop: int = CROP
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True
    aux_loss: float = 0.0
    backbone_weights: str | None = None  # torchvision, timm, keras or a classification file
    eval_batch_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.data, str) or not self.data:
            raise MobileNetsError(f"data must be a data spec, got {self.data!r}")
        if (
            type(self.output_stride) is not int
            or self.output_stride not in SEGMENTATION_OUTPUT_STRIDES
        ):
            raise MobileNetsError(
                f"output_stride must be one of {', '.join(map(str, SEGMENTATION_OUTPUT_STRIDES))}"
                f", got {self.output_stride!r}"
            )
        for name in ("aspp", "flip"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "aspp" and value is None):
                allowed = "True, False or None (the model's)" if name == "aspp" else "True or False"
                raise MobileNetsError(f"{name} must be {allowed}, got {value!r}")
        self.check_integer("crop", MIN_RESOLUTION)
        self.check_integer("eval_batch_size", 1)
        if self.resolution is not None:
            self.check_integer("resolution", MIN_RESOLUTION)
        for name in ("min_scale", "max_scale", "aux_loss"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value):
                raise MobileNetsError(f"{name} must be a number, got {value!r}")
        self.check_positive("min_scale")
        if self.max_scale < self.min_scale:
            raise MobileNetsError(
                f"max_scale must be >= min_scale ({self.min_scale!r}), got {self.max_scale!r}"
            )
        self.check_non_negative("aux_loss")
        allowed = "'torchvision', 'timm', 'keras' (or SOURCE:TAG) or a file path"
        backbone = self.path_or_name(self.backbone_weights, "backbone_weights", allowed)
        object.__setattr__(self, "backbone_weights", backbone)
        segmentation_config(self, num_classes=None)  # the model name, alpha and sizes

    def check_integer(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise MobileNetsError(f"{name} must be an integer >= {minimum}, got {value!r}")


def segmentation_config(config: TrainConfig, num_classes: int | None) -> SegmentationConfig:
    """The segmenter a training config asks for, with ``num_classes`` (None: the registered
    model's): its output stride and ASPP, an auxiliary head when ``aux_loss`` > 0, and
    ``resolution`` (default: the crop) as its nominal input side."""
    return resolve_segmentation_config(
        config.model,
        num_classes=num_classes,
        alpha=config.alpha,
        resolution=config.resolution or config.crop,
        output_stride=config.output_stride,
        aspp=config.aspp,
        aux=config.aux_loss > 0,
    )


# --- The loss -----------------------------------------------------------------------------------


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels of the batch (``IGNORE_INDEX`` pixels
    are not counted), computed in float32. As TF DeepLab's loss (weights 0 on ignored pixels,
    averaged over the others), and 0 rather than NaN for a batch with no labelled pixel (a crop
    of padding only)."""
    summed = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum")
    return summed / (masks != IGNORE_INDEX).sum().clamp(min=1)


def segmentation_loss(aux_weight: float = 0.0):
    """The ``loss_fn`` of [`mobilenets.engine.loop.train_epoch`][mobilenets.engine.loop.train_epoch]
    for ``(images, masks)`` batches: the pixel cross-entropy of the logits, plus ``aux_weight``
    times that of the auxiliary head's when ``aux_weight`` > 0 (the model must have the head).
    The epoch adds up both parts (``ce_sum``, ``aux_sum``)."""

    def loss_fn(model, batch, trainer: Trainer):
        images, masks = batch
        device = trainer.device
        images = to_device(images, device, trainer.config.channels_last)
        masks = masks.to(device, non_blocking=True)
        count = len(images)
        with autocast(device, trainer.dtype):
            if aux_weight > 0:
                logits, aux_logits = model(images, with_aux=True)
            else:
                logits, aux_logits = model(images), None
        main = pixel_cross_entropy(logits, masks)
        sums = {"ce_sum": main.detach() * count}
        if aux_logits is None:
            return main, count, sums
        aux = pixel_cross_entropy(aux_logits, masks)
        sums["aux_sum"] = aux.detach() * count
        return main + aux_weight * aux, count, sums

    return loss_fn


# --- The task -----------------------------------------------------------------------------------


class Segmentation:
    """DeepLab training on the engine: pixel cross-entropy (with an optional auxiliary head),
    mIoU evaluation on full-size validation images, best by mIoU."""

    name = "segmentation"
    config_type = TrainConfig
    score = "val_mIoU"

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shipped: torch.nn.Module | None = None  # the weights last evaluated: the final ones
        self.val = None
        self.preprocessing: Preprocessing | None = None
        self.context: RunContext | None = None

    def prepare(self, config: TrainConfig, saved_run: dict | None, context: RunContext) -> Job:
        figure_class()  # the run ends with plots: without matplotlib, fail before it starts
        data = load_segmentation_data(config.data)
        model_config = segmentation_config(config, len(data.class_names))
        if saved_run is not None:
            # The saved config, which has the padding and BN eps of the backbone weights.
            saved = SegmentationConfig.from_dict(saved_run["segmentation_config"])
            check_resumed_model(saved, model_config, config.data, "aux")
            model = build_segmenter(saved)
        elif config.backbone_weights is not None:
            model = create_segmenter(
                model_config, backbone_weights=config.backbone_weights, progress=context.progress
            )
            if context.distributed.main:
                log.info(f"backbone from {config.backbone_weights!r}")
        else:
            model = build_segmenter(model_config)
        preprocessing = segmentation_preprocessing(config.backbone_weights, config.crop)
        data.train.transform = train_transform(
            preprocessing, config.crop, (config.min_scale, config.max_scale), config.flip
        )
        data.val.transform = eval_transform(preprocessing)
        self.val, self.preprocessing, self.context = data.val, preprocessing, context

        def evaluate_model(model: Segmenter) -> dict:
            self.shipped = model
            return evaluate_segmenter(
                model,
                data.val,
                batch_size=config.eval_batch_size,
                workers=config.workers,
                progress=context.progress,
                **context.evaluation(config),
            )

        return Job(
            model,
            data.train,
            segmentation_loss(config.aux_loss),
            evaluate_model,
            data.class_names,
            preprocessing,
            record={"segmentation_config": model.config.to_dict()},
            collate=collate_segmentation,
        )

    def train_metrics(self, sums: dict[str, float], seen: float) -> dict:
        metrics = {"train_ce_loss": sums["ce_sum"] / seen}
        if "aux_sum" in sums:
            metrics["train_aux_loss"] = sums["aux_sum"] / seen
        return metrics

    def val_metrics(self, evaluation: dict) -> dict:
        return {f"val_{name}": evaluation[name] for name in METRIC_NAMES}

    def describe(self, row: dict, epochs: int) -> str:
        aux = f" (aux {row['train_aux_loss']:.4f})" if "train_aux_loss" in row else ""
        return (
            f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}{aux}, val mIoU "
            f"{100 * row['val_mIoU']:.2f}%, pixel accuracy {100 * row['val_pixel_accuracy']:.2f}%"
            f", {row['images_per_s']:.1f} images/s"
        )

    def finish(self, out: Path, evaluation: dict, history: list[dict], run: dict) -> None:
        model = self.shipped
        write_json(
            out / "eval.json",
            {"data": run["train_config"]["data"], "model": model.name, **evaluation},
        )
        plot_segmentation_curves(history, out / "curves.png")
        plot_class_iou(
            evaluation["IoU"],
            evaluation["classes"],
            out / "iou.png",
            title=f"IoU per class ({model.name})",
        )
        save_overlays(
            model,
            self.val,
            self.preprocessing,
            out / "overlays",
            device=self.context.device,
            dtype=self.context.dtype,
        )
        log.info(f"done in {time.monotonic() - self.started:.0f} s")


def save_overlays(
    model: torch.nn.Module,
    dataset,
    preprocessing: Preprocessing,
    folder: Path,
    count: int = OVERLAYS,
    *,
    device=None,
    dtype: torch.dtype | None = None,
) -> list[Path]:
    """The first ``count`` images of ``dataset`` (a
    [`SegmentationFiles`][mobilenets.data.segmentation.SegmentationFiles]) as
    [`comparison`][mobilenets.tasks.segmentation.inference.comparison] PNGs, ground truth beside
    prediction, named after the image files: ``folder/NAME.png``."""
    written = []
    for index in range(min(count, len(dataset))):
        image, truth = dataset.load(index)
        prediction = predict_mask(model, image, preprocessing, device=device, dtype=dtype)
        name = Path(dataset.files[index][0]).stem
        written.append(save_png(comparison(image, truth, prediction), folder / f"{name}.png"))
    return written


def fit(config: TrainConfig | None, out: str | os.PathLike, **options) -> FitResult:
    """Train a segmenter with ``config`` into the folder ``out``; ``options`` are
    [`mobilenets.engine.run.fit`][mobilenets.engine.run.fit]'s (``resume``, ``placement``,
    ``progress``). ``result.best`` is the best validation mIoU and
    ``result.final`` the metrics of the shipped weights (the dict of
    [`evaluate_segmenter`][mobilenets.tasks.segmentation.evaluate.evaluate_segmenter])."""
    return fit_task(Segmentation(), config, out, **options)
