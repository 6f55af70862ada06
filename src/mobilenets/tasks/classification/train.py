"""Training a classifier: the settings, the recipes, and the task that plugs into the engine.

[`TrainConfig`][mobilenets.tasks.classification.train.TrainConfig] holds every setting (the shared
ones of [`TrainSettings`][mobilenets.engine.settings.TrainSettings] and the classifier's own);
[`PRESETS`][mobilenets.tasks.classification.train.PRESETS] are named recipes that arguments
override. [`fit`][mobilenets.tasks.classification.train.fit] runs a whole job into an output folder
through [`mobilenets.engine.run.fit`][mobilenets.engine.run.fit] (what a run leaves is described
there; a classifier also leaves ``curves.png``, ``confusion.png`` and the final ``eval.json``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import write_json
from mobilenets.core.models import build_model
from mobilenets.core.preprocessing import imagenet_preprocessing
from mobilenets.core.spec import DEFAULT_RESOLUTION, ModelConfig
from mobilenets.core.weights import PARITY_FIELDS
from mobilenets.data.classification import Splits, load_splits
from mobilenets.data.common import ImageFiles, TensorImages
from mobilenets.data.device_data import DeviceImages
from mobilenets.data.jpeg_device import JpegFolderOnDevice
from mobilenets.data.transforms import eval_transform, train_transform
from mobilenets.engine.device import Distributed, autocast, to_device
from mobilenets.engine.evaluate import Evaluation, evaluate
from mobilenets.engine.loop import Trainer, ordered_loader
from mobilenets.engine.plots import figure_class, plot_confusion, plot_curves
from mobilenets.engine.run import FitResult, Job, RunContext, log
from mobilenets.engine.run import fit as fit_task
from mobilenets.engine.settings import TrainSettings
from mobilenets.zoo.pretrained import default_preprocessing, looks_like_source
from mobilenets.zoo.registry import resolve_config
from mobilenets.zoo.transfer import source_model, transfer_weights

AUGMENTS = ("basic", "trivial")
DEVICE_DATA = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Every classification training setting. Stored beside the outputs and in every
    checkpoint."""

    data: str = "fashion-mnist"
    model: str = "mobilenet_v2"
    preset: str = "modern"
    small_input: bool | None = None  # None: on for images of at most 64 px
    dropout: float | None = None
    # V3's variants (ModelConfig's fields of the same names); None: the model's
    width_rule: str | None = None
    minimalistic: bool | None = None
    reduced_tail: bool | None = None
    # Start from these weights (fine-tuning): keras, torchvision, timm (SOURCE:TAG) or a file;
    # None: from scratch. See mobilenets.zoo.transfer.
    weights: str | None = None
    label_smoothing: float = 0.1
    augment: str = "basic"
    random_erasing: float = 0.0
    skip_bad_images: bool = False
    # Augment in-memory datasets on the training device in batches (data.device_data): "auto"
    # on a CUDA device, "on" anywhere, "off" through the DataLoader's per-image transforms.
    device_data: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choices(augment=AUGMENTS, preset=tuple(PRESETS), device_data=DEVICE_DATA)
        self.check_unit_interval("label_smoothing", "random_erasing")
        allowed = "'keras', 'torchvision', 'timm' (or SOURCE:TAG) or a file path"
        object.__setattr__(self, "weights", self.path_or_name(self.weights, "weights", allowed))
        if self.variant_fields():  # a V3 field on another model is refused before the run starts
            resolve_config(self.model).replace(**self.variant_fields())

    def variant_fields(self) -> dict:
        """The V3 variant fields that are set, as ModelConfig takes them."""
        fields = ("width_rule", "minimalistic", "reduced_tail")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


PRESETS: dict[str, dict] = {
    # V2 paper section 6.1: RMSProp with decay and momentum 0.9, weight decay 4e-5, lr 0.045
    # decayed 0.98 per epoch; TF-slim's training adds label smoothing 0.1 and weight EMA 0.9999.
    "paper": dict(
        optimizer="rmsprop",
        lr=0.045,
        momentum=0.9,
        rmsprop_decay=0.9,
        weight_decay=4e-5,
        schedule="exponential",
        lr_decay=0.98,
        warmup_epochs=0.0,
        label_smoothing=0.1,
        ema_decay=0.9999,
        augment="basic",
        random_erasing=0.0,
    ),
    # Current practice for small nets: SGD with nesterov, warmup then cosine, label smoothing,
    # EMA, TrivialAugment and random erasing.
    "modern": dict(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=1.0,
        label_smoothing=0.1,
        ema_decay=0.999,
        augment="trivial",
        random_erasing=0.25,
    ),
}


def train_config(preset: str = "modern", **overrides) -> TrainConfig:
    """A preset's settings with ``overrides`` on top (None values are ignored)."""
    if preset not in PRESETS:
        raise MobileNetsError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise MobileNetsError(f"unknown training settings {unknown}; allowed: {sorted(known)}")
    settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(preset=preset, **settings)


# --- The task -------------------------------------------------------------------------------------


def classification_loss(model, batch, trainer: Trainer) -> tuple[torch.Tensor, int, dict]:
    """Cross-entropy with the config's label smoothing over one ``(images, labels)`` batch;
    the epoch also adds up the correct top-1 predictions."""
    config, device = trainer.config, trainer.device
    images, labels = batch
    images = to_device(images, device, config.channels_last)
    labels = labels.to(device, non_blocking=True)
    with autocast(device, trainer.dtype):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    return loss, len(labels), {"correct": (logits.argmax(1) == labels).sum()}


class Classification:
    """Classification on the engine: cross-entropy, top-1/top-5 evaluation, best by top-1."""

    name = "classification"
    config_type = TrainConfig
    score = "val_top1"

    def prepare(self, config: TrainConfig, saved_run: dict | None, context: RunContext) -> Job:
        figure_class()  # the run ends with plots: without matplotlib, fail before it starts
        splits = load_splits(config.data, config.resolution or 224, config.skip_bad_images)
        model_config = model_config_for(config, splits)
        source = None
        if saved_run is not None:  # the numerics of the weights it started from, if any
            saved = saved_run["model_config"]
            model_config = model_config.replace(**{key: saved[key] for key in PARITY_FIELDS})
            if saved != model_config.to_dict():
                raise MobileNetsError(
                    f"resume=True: the data {config.data!r} gives model {model_config.name} "
                    f"with {model_config.num_classes} classes; the saved run has "
                    f"{ModelConfig.from_dict(saved).name} with {saved['num_classes']} classes"
                )
        elif config.weights is not None:
            source = starting_weights(config.weights, model_config, context)
            model_config = model_config.replace(
                **{key: getattr(source.config, key) for key in PARITY_FIELDS}
            )
        preprocessing = splits.preprocessing.replace(resolution=model_config.resolution)
        if not splits.small:
            preprocessing = imagenet_preprocessing(model_config.resolution)
            if config.weights is not None and looks_like_source(config.weights):
                # Published weights expect their own input scaling (Keras: [-1, 1]).
                published = default_preprocessing(config.weights.partition(":")[0], 224)
                preprocessing = preprocessing.replace(mean=published.mean, std=published.std)
        splits.train.transform = train_transform(
            preprocessing, config.augment, config.random_erasing, splits.small
        )
        splits.val.transform = eval_transform(preprocessing)
        train = splits.train
        # A resumed run keeps the augmentation it started with, even if "auto" would now pick
        # the other (a GPU run carried on on a CPU): the two draw different random streams.
        on_device = uses_device_data(config, splits, context.device)
        if saved_run is not None and "device_data" in saved_run:
            on_device = saved_run["device_data"]
        if on_device and isinstance(splits.train, TensorImages):
            train = DeviceImages.from_tensor_images(
                splits.train,
                preprocessing,
                augment=config.augment,
                random_erasing=config.random_erasing,
                channels_last=config.channels_last,
                device=context.device,
            )
        elif on_device:  # JPEG files: decoded, cropped and flipped on the device
            train = JpegFolderOnDevice.from_files(
                splits.train, preprocessing, channels_last=config.channels_last
            )
        if on_device and context.distributed.main:
            log.info(f"augmenting the training images on {context.device} in batches (device_data)")

        model = build_model(model_config)
        if source is not None:
            notes = transfer_weights(model, source)
            if context.distributed.main:
                log.info(
                    f"starting from the weights {config.weights!r}"
                    + "".join(f"; {note}" for note in notes)
                )
        val_loader = ordered_loader(
            splits.val,
            config.batch_size,
            config.workers,
            context.device,
            distributed=context.distributed,
        )

        def evaluate_model(model: torch.nn.Module) -> Evaluation:
            return evaluate(
                model, val_loader, model_config.num_classes, **context.evaluation(config)
            )

        return Job(
            model,
            train,
            classification_loss,
            evaluate_model,
            splits.classes,
            preprocessing,
            record={"model_config": model_config.to_dict(), "device_data": on_device},
        )

    def train_metrics(self, sums: dict[str, float], seen: float) -> dict:
        return {"train_top1": sums["correct"] / seen}

    def val_metrics(self, evaluation: Evaluation) -> dict:
        return {
            "val_loss": evaluation.loss,
            "val_top1": evaluation.top1,
            "val_top5": evaluation.top5,
        }

    def describe(self, row: dict, epochs: int) -> str:
        return (
            f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
            f"val loss {row['val_loss']:.4f}, top-1 {100 * row['val_top1']:.2f}%, "
            f"top-5 {100 * row['val_top5']:.2f}%, {row['images_per_s']:.0f} images/s"
        )

    def finish(self, out: Path, evaluation: Evaluation, history: list[dict], run: dict) -> None:
        write_json(out / "eval.json", evaluation.to_dict(run["classes"]))
        plot_curves(history, out / "curves.png")
        plot_confusion(evaluation.confusion, run["classes"], out / "confusion.png")


def fit(config: TrainConfig | None, out: str | os.PathLike, **options) -> FitResult:
    """Train a classifier with ``config`` into the folder ``out``; ``options`` are
    [`mobilenets.engine.run.fit`][mobilenets.engine.run.fit]'s (``resume``, ``placement``,
    ``progress``). ``result.best`` is the best validation top-1 and
    ``result.final`` the [`Evaluation`][mobilenets.engine.evaluate.Evaluation] of the shipped
    weights."""
    return fit_task(Classification(), config, out, **options)


def uses_device_data(config: TrainConfig, splits: Splits, device: torch.device) -> bool:
    """Whether the training split is augmented on the device: ``device_data="on"``, or
    ``"auto"`` on a CUDA device. In-memory datasets can be with any augmentation; image folders
    (decoded on the device, data.jpeg_device) with the random-resized crop and flip only."""
    files = isinstance(splits.train, ImageFiles)
    # The device JPEG path has no TrivialAugment or random erasing (docs/training.md).
    extras = [
        name
        for name, used in (
            ("augment='trivial'", config.augment == "trivial"),
            (f"random_erasing={config.random_erasing}", config.random_erasing > 0),
        )
        if used
    ]
    if config.device_data == "on" and files and extras:
        raise MobileNetsError(
            f"device_data='on' decodes image folders on the device with the random-resized "
            f"crop and flip only, not {' and '.join(extras)}; use augment='basic' and "
            "random_erasing=0, or device_data='off'"
        )
    if config.device_data == "auto":
        return device.type == "cuda" and not (files and extras)
    return config.device_data == "on"


def model_config_for(config: TrainConfig, splits: Splits) -> ModelConfig:
    """The model for a dataset: its classes and channels; small images get the small-input
    variant at their own side unless the config says otherwise."""
    small = splits.small if config.small_input is None else config.small_input
    resolution = config.resolution
    if resolution is None and splits.small:
        resolution = splits.preprocessing.resolution
    overrides = dict(
        num_classes=len(splits.classes),
        in_chans=splits.preprocessing.channels,
        small_input=small,
        alpha=config.alpha,
        dropout=config.dropout,
        resolution=resolution,
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return resolve_config(config.model, **overrides).replace(**config.variant_fields())


def starting_weights(weights: str, model_config: ModelConfig, context: RunContext):
    """The model that ``weights`` holds (see
    [`mobilenets.zoo.transfer.source_model`][mobilenets.zoo.transfer.source_model]). In a torchrun
    job the main process reads it first, so that only it downloads published ones."""
    distributed: Distributed = context.distributed
    # Keras publishes one file per input size: the model's, or 224 for small images.
    resolution = DEFAULT_RESOLUTION if model_config.small_input else model_config.resolution
    load = functools.partial(
        source_model,
        weights,
        model_config.arch,
        alpha=model_config.alpha,
        expansion=model_config.expansion,
        resolution=resolution,
        progress=context.progress,
    )
    if not distributed.enabled:
        return load()
    if not distributed.main:
        dist.barrier()  # until the main process has it in the cache
    source = load()
    if distributed.main:
        dist.barrier()
    return source
