"""Training and evaluation as plain functions of (model, loader, config).

:class:`TrainConfig` holds every setting; :data:`PRESETS` are named recipes that flags override.
:func:`fit` runs a whole training job into an output folder; :func:`train_epoch` and
:func:`evaluate` are its parts and work on any model and loader.

What a run leaves in its folder::

    train_config.json        the resolved config, model config, preprocessing and classes
    metrics.jsonl            one JSON line per epoch
    last.safetensors         weights after the last epoch (EMA weights when EMA is on)
    best.safetensors         weights of the epoch with the best validation top-1
    checkpoints/state.pt     everything --resume needs (torch.load(weights_only=True) reads it)
    curves.png, confusion.png, eval.json   written at the end

Every file is written atomically. The state file is also written mid-epoch (every
``checkpoint_every`` steps or ``checkpoint_minutes``), with the RNG state and the position in
the epoch, and the data order and augmentation of an epoch are fixed by (seed, epoch, index): a
run killed at any point and resumed finishes with the same weights and metrics as one that was
never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from mobilenets import data as datasets
from mobilenets.errors import MobileNetsError
from mobilenets.models import build_model
from mobilenets.plots import plot_confusion, plot_curves
from mobilenets.pretrained import default_preprocessing, looks_like_source
from mobilenets.registry import resolve_config
from mobilenets.spec import DEFAULT_RESOLUTION, ModelConfig
from mobilenets.transfer import source_model, transfer_weights
from mobilenets.weights import PARITY_FIELDS, atomic_path, save_weights

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("cosine", "exponential")
AUGMENTS = ("basic", "trivial")
AMPS = ("auto", "off", "bf16", "fp16")
TTA_PASSES = {"none": 1, "flip": 2}  # test-time augmentation: forward passes per image
TTA_MODES = tuple(TTA_PASSES)
STATE_FILE = Path("checkpoints") / "state.pt"
METADATA_PREFIX = "mobilenets."


class TrainingDiverged(MobileNetsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --- Configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting. Stored beside the outputs and inside every checkpoint."""

    model: str = "mobilenet_v2"
    data: str = "fashion-mnist"
    preset: str = "modern"
    alpha: float | None = None  # None: the registered model's
    resolution: int | None = None  # None: the dataset's image side (small) or the model's
    small_input: bool | None = None  # None: on for images of at most 64 px
    dropout: float | None = None
    # Start from these weights (fine-tuning): keras, torchvision, timm (SOURCE:TAG) or a file;
    # None: from scratch. See mobilenets.transfer.
    weights: str | None = None
    epochs: int = 10
    batch_size: int = 128  # per process
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on conv and linear weights; BN and biases are not decayed
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1.0  # TF-slim's opt_epsilon; keeps RMSProp's first steps bounded
    schedule: str = "cosine"
    lr_decay: float = 0.98  # per epoch, for the exponential schedule
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    ema_decay: float = 0.0  # 0 turns weight EMA off
    augment: str = "basic"
    random_erasing: float = 0.0
    amp: str = "auto"  # auto: bf16 on a CUDA GPU that has it, off on CPU
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    workers: int = 0
    skip_bad_images: bool = False
    checkpoint_every: int = 0  # steps between mid-epoch state saves; 0: time-based only
    checkpoint_minutes: float = 10.0
    device: str = "auto"

    def __post_init__(self) -> None:
        choices = {
            "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS, "amp": AMPS,
            "preset": tuple(PRESETS),
        }  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MobileNetsError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        positive = ("epochs", "batch_size", "lr")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise MobileNetsError(f"{name} must be positive, got {value!r}")
        unit = ("momentum", "rmsprop_decay", "label_smoothing", "ema_decay", "random_erasing")
        for name in (*unit, "lr_decay"):
            value = getattr(self, name)
            if not 0 <= value <= 1 or (name != "lr_decay" and value == 1):
                raise MobileNetsError(f"{name} must be in [0, 1), got {value!r}")
        if isinstance(self.weights, os.PathLike):  # stored as text, for train_config.json
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.weights is not None and not isinstance(self.weights, str):
            raise MobileNetsError(
                "weights must be 'keras', 'torchvision', 'timm' (or SOURCE:TAG) or a file path, "
                f"got {self.weights!r}"
            )
        for name in ("weight_decay", "warmup_epochs", "workers", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise MobileNetsError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict] = {
    # V2 paper section 6.1: RMSProp with decay and momentum 0.9, weight decay 4e-5, lr 0.045
    # decayed 0.98 per epoch; TF-slim's training adds label smoothing 0.1 and weight EMA 0.9999.
    "paper": dict(
        optimizer="rmsprop", lr=0.045, momentum=0.9, rmsprop_decay=0.9, weight_decay=4e-5,
        schedule="exponential", lr_decay=0.98, warmup_epochs=0.0, label_smoothing=0.1,
        ema_decay=0.9999, augment="basic", random_erasing=0.0,
    ),
    # Current practice for small nets: SGD with nesterov, warmup then cosine, label smoothing,
    # EMA, TrivialAugment and random erasing.
    "modern": dict(
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", warmup_epochs=1.0, label_smoothing=0.1, ema_decay=0.999,
        augment="trivial", random_erasing=0.25,
    ),
}  # fmt: skip


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


# --- Parts: optimizer, schedule, EMA, precision ----------------------------------------------


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer; weight decay on conv and linear weights only (not BN, bias)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach: one kernel per operation over all parameters. PyTorch picks it only for CUDA
    # tensors; on the CPU the per-parameter loop cost SSDLite 0.35's AdamW about 10 ms a step.
    if config.optimizer == "sgd":
        nesterov = config.nesterov and config.momentum > 0
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=nesterov,
                               foreach=True)  # fmt: skip
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=config.lr, alpha=config.rmsprop_decay, eps=config.rmsprop_eps,
            momentum=config.momentum, foreach=True,
        )  # fmt: skip
    return torch.optim.AdamW(groups, lr=config.lr, foreach=True)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """The learning rate at ``step`` as a fraction of ``config.lr``: linear warmup, then cosine
    to zero or the paper's staircase decay of ``lr_decay`` per epoch."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "exponential":
        return config.lr_decay ** (step // steps_per_epoch)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """Weight EMA as TF's ExponentialMovingAverage with num_updates: the decay starts low,
    (1 + n) / (10 + n), and rises to ``decay``. BN statistics are averaged too; BN's update
    counters are copied.

    One update is a few multi-tensor operations, with the rate computed where the weights are:
    reading ``n`` back for every tensor would make a GPU wait for each of them in turn.
    """

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor],
                num_averaged: torch.Tensor) -> None:  # fmt: skip
        if not averaged[0].is_floating_point():  # one group per dtype: the counters
            torch._foreach_copy_(averaged, current)
            return
        rate = torch.clamp((1 + num_averaged) / (10 + num_averaged), max=decay)
        torch._foreach_mul_(averaged, rate.to(averaged[0].dtype))
        torch._foreach_add_(averaged, torch._foreach_mul(current, (1 - rate).to(averaged[0].dtype)))

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None runs in fp32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise MobileNetsError(f"device must be auto, cpu or cuda[:N], got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MobileNetsError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


# --- Distributed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (if any): NCCL
    on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


def all_sum(tensor: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    if distributed.enabled:
        dist.all_reduce(tensor)
    return tensor


# --- Evaluation ---------------------------------------------------------------------------------


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
            "loss": self.loss, "top1": self.top1, "top5": self.top5, "count": self.count,
            "per_class": dict(zip(classes, self.per_class, strict=True)),
            "confusion": self.confusion.tolist(),
        }  # fmt: skip


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


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=memory_format)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --- One epoch ----------------------------------------------------------------------------------


@dataclass
class EpochState:
    """Running sums of the epoch in progress: saved with mid-epoch checkpoints."""

    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class Trainer:
    """What a training step needs besides the model: built by :func:`fit`, usable alone."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: TrainConfig
    device: torch.device
    dtype: torch.dtype | None = None
    ema: AveragedModel | None = None
    distributed: Distributed = field(default_factory=Distributed)
    step: int = 0


@dataclass
class StateSaver:
    """Writes a run's state (``snapshot()``) to ``path``: :meth:`write` at an epoch's end, and,
    as the ``on_step`` of :func:`train_epoch`, mid-epoch every ``checkpoint_every`` steps and
    every ``checkpoint_minutes`` of the trainer's config. Only the main process writes."""

    path: Path
    snapshot: Callable[[], dict]
    trainer: Trainer
    steps_per_epoch: int
    last: float = field(default_factory=time.monotonic)

    def __call__(self, state) -> None:
        config = self.trainer.config
        every = config.checkpoint_every and self.trainer.step % config.checkpoint_every == 0
        late = time.monotonic() - self.last > 60 * config.checkpoint_minutes
        if (every or late) and state.batch < self.steps_per_epoch:  # the epoch's end writes
            self.write()

    def write(self) -> None:
        if self.trainer.distributed.main:
            save_state(self.path, self.snapshot())
            self.last = time.monotonic()


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


def train_epoch(model, loader, trainer: Trainer, state, *, loss_fn=classification_loss,
                on_step=None, progress: bool = True, description: str = "train"):  # fmt: skip
    """Train over ``loader`` (which starts at ``state.batch``), updating ``state``.

    ``loss_fn(model, batch, trainer)`` runs the forward pass and returns the batch's loss, its
    number of samples and the sums that ``state`` adds up besides the loss, by field name
    (:func:`classification_loss` and :class:`EpochState` by default; the detector passes its
    own). ``on_step(state)`` runs after every optimizer step (checkpointing hooks in here). A
    NaN or infinite loss raises :class:`TrainingDiverged` before the step is applied.
    """
    model.train()
    total = state.batch + len(loader)
    # A bar redraws itself with carriage returns: right on a terminal, but in a log file (a run
    # under nohup) every redraw would stay. There, tqdm's meter is written as a line instead.
    terminal = sys.stderr.isatty()
    bar = tqdm(loader, desc=description, total=total, initial=state.batch, unit="batch",
               disable=not (progress and terminal), dynamic_ncols=True)  # fmt: skip
    lines = ProgressLines(description, total, state.batch) if progress and not terminal else None
    started = time.perf_counter()
    for batch in bar:
        loss, count, sums = loss_fn(model, batch, trainer)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        # The step's one read from the device, once backward is queued (a GPU need not idle
        # while this process waits): the loss summed over the ranks, so that all of them stop
        # together, then this rank's loss and sums.
        values = (loss.detach(), *sums.values())
        numbers = torch.stack([torch.as_tensor(v, device=loss.device).double() for v in values])
        total = all_sum(numbers[:1].clone(), trainer.distributed)
        loss_value, local_loss, *sum_values = torch.cat([total, numbers]).tolist()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"loss is {loss_value} at step {trainer.step} (epoch batch {state.batch}); "
                "stopped before applying it, the last good checkpoint is kept "
                "(try a lower --lr)"
            )
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.scheduler.step()
        if trainer.ema is not None:
            trainer.ema.update_parameters(unwrap(model))
        trainer.step += 1
        state.batch += 1
        state.loss_sum += local_loss * count
        for name, number in zip(sums, sum_values, strict=True):
            before = getattr(state, name)
            setattr(state, name, before + type(before)(number))  # counts stay integers
        state.seen += count
        state.seconds += time.perf_counter() - started
        started = time.perf_counter()
        postfix = {
            "loss": f"{state.loss_sum / state.seen:.4f}",
            "lr": f"{trainer.optimizer.param_groups[0]['lr']:.4g}",
            "img_s": f"{state.seen * trainer.distributed.world_size / state.seconds:.1f}",
        }
        bar.set_postfix(postfix)
        if lines is not None:
            lines.update(state.batch, postfix)
        if on_step is not None:
            on_step(state)
    bar.close()
    return state


PROGRESS_LINE_SECONDS = 60.0


class ProgressLines:
    """Progress for a stderr that is not a terminal: tqdm's meter (position, elapsed, ETA, rate
    and the postfix) as one plain line at most every :data:`PROGRESS_LINE_SECONDS`."""

    def __init__(self, description: str, total: int, initial: int):
        self.description, self.total, self.initial = description, total, initial
        self.started = self.written = time.monotonic()

    def update(self, batch: int, postfix: dict[str, str]) -> None:
        now = time.monotonic()
        if now - self.written < PROGRESS_LINE_SECONDS and batch < self.total:
            return
        self.written = now
        meter = tqdm.format_meter(
            batch, self.total, now - self.started, prefix=self.description, unit="batch",
            initial=self.initial, postfix=", ".join(f"{k}={v}" for k, v in postfix.items()),
            bar_format="{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, "
                       "{rate_fmt}{postfix}]",
        )  # fmt: skip
        print(meter, file=sys.stderr, flush=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


# --- Checkpoints --------------------------------------------------------------------------------


def write_json(path: Path, value) -> None:
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(value, indent=2) + "\n")


def weights_metadata(run: dict, extra: dict | None = None) -> dict[str, str]:
    """String metadata for a weights file: classes, preprocessing, training config, metrics."""
    values = {
        "classes": run["classes"], "preprocessing": run["preprocessing"],
        "train_config": run["train_config"], **(extra or {}),
    }  # fmt: skip
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()}


def save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling raises many types; all mean the same here
        raise MobileNetsError(f"cannot read training state {str(path)!r}: {error}") from error


def moved(saved: dict, config) -> str:
    """What a resumed run changed of the saved run's placement, as words for the log."""
    changes = [
        f"{name} {getattr(config, name)!r} (saved {saved[name]!r})"
        for name in PLACEMENT
        if saved[name] != getattr(config, name)
    ]
    return f", with {', '.join(changes)}" if changes else ""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- A whole run ------------------------------------------------------------------------------


# Settings that say where a run executes, not what it learns: a resumed run may change them, to
# carry on on another machine. Augmentation does not depend on the workers, so a resumed run
# stays bit for bit the same on the same kind of device (not from a GPU to a CPU).
PLACEMENT = ("device", "workers", "checkpoint_every", "checkpoint_minutes")


def open_run(out: Path, config, resume: bool, saved_config: Callable[[dict], object], caller: str,
             config_name: str, placement: dict | None = None):  # fmt: skip
    """The config of the run in ``out`` and, with ``resume``, its saved training state.

    ``saved_config`` rebuilds the config from the state's ``run`` entry (raising for a run of
    another kind). A resumed run must be given its own config or none, and may change the
    ``placement`` settings (PLACEMENT) of the saved one; a new run needs a config and an ``out``
    that holds no run yet.
    """
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise MobileNetsError(f"--resume: no training state at {str(state_path)!r}")
        saved = load_state(state_path)
        restored = saved_config(saved["run"])
        if placement:
            other = sorted(set(placement) - set(PLACEMENT))
            if other:
                raise MobileNetsError(f"--resume may change only {', '.join(PLACEMENT)}; "
                                      f"not {', '.join(other)}")  # fmt: skip
            restored = dataclasses.replace(restored, **placement)
        if config is not None and config != restored:
            differ = [
                f"{key}={value!r} (saved {getattr(restored, key)!r})"
                for key, value in config.to_dict().items()
                if value != getattr(restored, key)
            ]
            raise MobileNetsError(f"--resume: the run in {str(out)!r} was started with other "
                                  f"settings: {', '.join(differ)}")  # fmt: skip
        return restored, saved
    if config is None:
        raise MobileNetsError(f"{caller} needs a {config_name} unless it resumes a saved run")
    if state_path.is_file():
        raise MobileNetsError(
            f"{str(out)!r} already holds a run; pass --resume to continue it or choose "
            "another --out"
        )
    return config, None


def make_trainer(
    model: torch.nn.Module, train_size: int, config, device: torch.device,
    dtype: torch.dtype | None, distributed: Distributed,
) -> tuple[Trainer, datasets.EpochSampler]:  # fmt: skip
    """The optimizer, schedule (per step), EMA and grad scaler of a run, and the sampler of its
    training split (``config`` is a TrainConfig or any config with the same training fields)."""
    optimizer = make_optimizer(model, config)
    sampler = datasets.EpochSampler(
        train_size, seed=config.seed, batch_size=config.batch_size, drop_last=True,
        rank=distributed.rank, world_size=distributed.world_size,
    )  # fmt: skip
    steps_per_epoch = sampler.num_batches()
    if steps_per_epoch == 0:
        raise MobileNetsError(
            f"the training set has {train_size} images, fewer than one batch of "
            f"{config.batch_size} x {distributed.world_size} processes; lower --batch-size"
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, config)
    )
    ema = make_ema(model, config.ema_decay) if config.ema_decay > 0 else None
    trainer = Trainer(
        optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        config, device, dtype, ema, distributed,
    )  # fmt: skip
    return trainer, sampler


def trainer_state(model: torch.nn.Module, trainer: Trainer) -> dict:
    """What a resumed run needs of the model and trainer: the entries of the state file that
    :func:`restore_trainer` reads back (RNG state included)."""
    return {
        "model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
        "ema": trainer.ema.state_dict() if trainer.ema is not None else {},
        "step": trainer.step, "rng": rng_state(),
    }  # fmt: skip


def restore_trainer(model: torch.nn.Module, trainer: Trainer, saved: dict) -> None:
    """Put a state file's model, optimizer, schedule, scaler, EMA, step and RNG state back."""
    model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    trainer.scaler.load_state_dict(saved["scaler"])
    if trainer.ema is not None:
        trainer.ema.load_state_dict(saved["ema"])
    trainer.step = saved["step"]
    restore_rng(saved["rng"])


@dataclass
class FitResult:
    out: Path
    best_top1: float
    final: Evaluation
    epochs: int
    history: list[dict]
    main_process: bool = True  # False on the other ranks of a torchrun job


def model_config_for(config: TrainConfig, splits: datasets.Splits) -> ModelConfig:
    """The model for a dataset: its classes and channels; small images get the small-input
    variant at their own side unless the config says otherwise."""
    small = splits.small if config.small_input is None else config.small_input
    resolution = config.resolution
    if resolution is None and splits.small:
        resolution = splits.preprocessing.resolution
    overrides = dict(
        num_classes=len(splits.classes), in_chans=splits.preprocessing.channels,
        small_input=small, alpha=config.alpha, dropout=config.dropout, resolution=resolution,
    )  # fmt: skip
    return resolve_config(config.model, **{k: v for k, v in overrides.items() if v is not None})


def starting_weights(weights: str, model_config: ModelConfig, distributed: Distributed,
                     progress: bool):  # fmt: skip
    """The model that ``weights`` holds (see :func:`mobilenets.transfer.source_model`). In a
    torchrun job the main process reads it first, so that only it downloads published ones."""
    # Keras publishes one file per input size: the model's, or 224 for small images.
    resolution = DEFAULT_RESOLUTION if model_config.small_input else model_config.resolution
    load = functools.partial(
        source_model, weights, model_config.arch, alpha=model_config.alpha,
        expansion=model_config.expansion, resolution=resolution,
        progress=progress and distributed.main,
    )  # fmt: skip
    if not distributed.enabled:
        return load()
    if not distributed.main:
        dist.barrier()  # until the main process has it in the cache
    source = load()
    if distributed.main:
        dist.barrier()
    return source


def make_loader(dataset, sampler, config: TrainConfig, device: torch.device,
                collate_fn=None) -> DataLoader:  # fmt: skip
    return DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
        pin_memory=device.type == "cuda", collate_fn=collate_fn,
        # A private generator: creating the loader must not draw from the global RNG, or a
        # resumed run's dropout masks would shift.
        generator=torch.Generator().manual_seed(config.seed),
    )  # fmt: skip


def ordered_loader(dataset, batch_size: int, workers: int = 0,
                   device: torch.device | str = "cpu") -> DataLoader:  # fmt: skip
    """The whole dataset once, in order, in batches: what an evaluation reads."""
    config = TrainConfig(batch_size=batch_size, workers=workers)
    sampler = datasets.EpochSampler(len(dataset), shuffle=False, batch_size=batch_size)
    return make_loader(dataset, sampler, config, torch.device(device))


def fit(config: TrainConfig | None, out: str | os.PathLike, *, resume: bool = False,
        placement: dict | None = None, progress: bool = True, log=print) -> FitResult:  # fmt: skip
    """Train ``config`` into the folder ``out``. With ``resume``, continue the run saved there
    with its own config (``config`` may then be None; if given, it must be the saved one), on
    the device and workers that ``placement`` may change (see PLACEMENT)."""
    out = Path(out)
    state_path = out / STATE_FILE
    config, saved = open_run(
        out, config, resume, lambda run: TrainConfig(**run["train_config"]), "fit", "TrainConfig",
        placement,
    )  # fmt: skip
    distributed = init_distributed(config.device)
    device = pick_device(config.device)
    if distributed.enabled and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    dtype = autocast_dtype(config.amp, device)
    if dtype is not None and device.type == "cpu" and distributed.main:
        log(f"note: --amp {config.amp} on CPU runs through autocast emulation on most CPUs, "
            "often many times slower than fp32 (--amp auto keeps CPU runs in fp32)")  # fmt: skip
    torch.manual_seed(config.seed)

    splits = datasets.load_splits(config.data, config.resolution or 224, config.skip_bad_images)
    model_config = model_config_for(config, splits)
    source = None
    if saved is not None:  # the numerics of the weights it started from, if any
        saved_model = saved["run"]["model_config"]
        model_config = model_config.replace(**{key: saved_model[key] for key in PARITY_FIELDS})
    elif config.weights is not None:
        source = starting_weights(config.weights, model_config, distributed, progress)
        model_config = model_config.replace(
            **{key: getattr(source.config, key) for key in PARITY_FIELDS}
        )
    if saved is not None and saved["run"]["model_config"] != model_config.to_dict():
        raise MobileNetsError(
            f"--resume: the data {config.data!r} gives model {model_config.name} with "
            f"{model_config.num_classes} classes; the saved run has "
            f"{ModelConfig.from_dict(saved['run']['model_config']).name} with "
            f"{saved['run']['model_config']['num_classes']} classes"
        )
    preprocessing = splits.preprocessing.replace(resolution=model_config.resolution)
    if not splits.small:
        preprocessing = datasets.imagenet_preprocessing(model_config.resolution)
        if config.weights is not None and looks_like_source(config.weights):
            # Published weights expect their own input scaling (Keras: [-1, 1]).
            published = default_preprocessing(config.weights.partition(":")[0], 224)
            preprocessing = preprocessing.replace(mean=published.mean, std=published.std)
    datasets.with_transforms(
        splits,
        preprocessing.train_transform(config.augment, config.random_erasing, splits.small),
        preprocessing.eval_transform(),
    )
    run = {
        "train_config": config.to_dict(), "model_config": model_config.to_dict(),
        "preprocessing": preprocessing.to_dict(), "classes": list(splits.classes),
        "world_size": distributed.world_size,
    }  # fmt: skip

    model = build_model(model_config)
    if source is not None:
        notes = transfer_weights(model, source)
        if distributed.main:
            log(f"starting from the weights {config.weights!r}"
                + "".join(f"; {note}" for note in notes))  # fmt: skip
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    trainer, train_sampler = make_trainer(model, len(splits.train), config, device, dtype,
                                          distributed)  # fmt: skip
    steps_per_epoch = train_sampler.num_batches()
    ema = trainer.ema

    epoch, epoch_state, history, best_top1 = 0, EpochState(), [], -1.0
    if saved is not None:
        restore_trainer(model, trainer, saved)
        epoch, history, best_top1 = saved["epoch"], saved["history"], saved["best_top1"]
        epoch_state = EpochState(**saved["epoch_state"])
        if distributed.main:
            log(f"resuming {str(out)!r} at epoch {epoch + 1}, batch {epoch_state.batch}"
                f"{moved(saved['run']['train_config'], config)}")  # fmt: skip

    if distributed.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", run)
    trained = model
    if config.compile:
        trained = torch.compile(trained)
    if distributed.enabled:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )
    shipped = ema.module if ema is not None else model  # the weights we evaluate and save

    def snapshot() -> dict:
        return {
            "run": run, **trainer_state(model, trainer), "epoch": epoch,
            "epoch_state": dataclasses.asdict(epoch_state), "history": history,
            "best_top1": best_top1,
        }  # fmt: skip

    saver = StateSaver(state_path, snapshot, trainer, steps_per_epoch)

    val_loader = make_loader(
        splits.val,
        datasets.EpochSampler(len(splits.val), shuffle=False, batch_size=config.batch_size,
                              rank=distributed.rank, world_size=distributed.world_size),
        config, device,
    )  # fmt: skip
    evaluation = None
    while epoch < config.epochs:
        train_sampler.epoch, train_sampler.start_batch = epoch, epoch_state.batch
        loader = make_loader(splits.train, train_sampler, config, device)
        train_epoch(trained, loader, trainer, epoch_state, on_step=saver,
                    progress=progress and distributed.main,
                    description=f"epoch {epoch + 1}/{config.epochs}")  # fmt: skip
        evaluation = evaluate(
            shipped, val_loader, model_config.num_classes, device=device, dtype=dtype,
            channels_last=config.channels_last, distributed=distributed,
        )  # fmt: skip
        row = epoch_metrics(epoch, trainer, epoch_state, evaluation, distributed)
        history.append(row)
        epoch += 1
        epoch_state = EpochState()
        if distributed.main:
            log(format_metrics(row, config.epochs))
            with open(out / "metrics.jsonl", "a") as handle:  # appended rows survive a crash
                handle.write(json.dumps(row) + "\n")
            metadata = weights_metadata(run, {"epoch": epoch, "metrics": row})
            save_weights(shipped, out / "last.safetensors", metadata)
            if evaluation.top1 > best_top1:
                best_top1 = evaluation.top1
                save_weights(shipped, out / "best.safetensors", metadata)
            saver.write()
    if evaluation is None:  # resumed a finished run: evaluate what it left
        evaluation = evaluate(
            shipped, val_loader, model_config.num_classes, device=device, dtype=dtype,
            channels_last=config.channels_last, distributed=distributed,
        )  # fmt: skip
    if distributed.main:
        write_json(out / "eval.json", evaluation.to_dict(run["classes"]))
        plot_curves(history, out / "curves.png")
        plot_confusion(evaluation.confusion, run["classes"], out / "confusion.png")
    if distributed.enabled:
        dist.barrier()
    best = max(best_top1, evaluation.top1)
    return FitResult(out, best, evaluation, epoch, history, distributed.main)


def epoch_metrics(epoch, trainer: Trainer, state: EpochState, evaluation: Evaluation,
                  distributed: Distributed) -> dict:  # fmt: skip
    seen = all_sum(torch.tensor([state.seen, state.correct], dtype=torch.float64), distributed)
    loss = all_sum(torch.tensor(state.loss_sum, dtype=torch.float64), distributed).item()
    return {
        "epoch": epoch + 1, "step": trainer.step,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "train_loss": loss / seen[0].item(), "train_top1": seen[1].item() / seen[0].item(),
        "val_loss": evaluation.loss, "val_top1": evaluation.top1, "val_top5": evaluation.top5,
        "images_per_s": seen[0].item() / max(state.seconds, 1e-9),
        "epoch_seconds": state.seconds,
    }  # fmt: skip


def format_metrics(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
        f"val loss {row['val_loss']:.4f}, top-1 {100 * row['val_top1']:.2f}%, "
        f"top-5 {100 * row['val_top5']:.2f}%, {row['images_per_s']:.0f} images/s"
    )
