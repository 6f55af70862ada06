"""One epoch of training, for any model, loader and loss.

[`Trainer`][mobilenets.engine.loop.Trainer] holds what a step needs besides the model (optimizer,
per-step schedule, grad scaler, weight EMA); [`train_epoch`][mobilenets.engine.loop.train_epoch]
runs the steps of one epoch and keeps its running sums in an
[`EpochState`][mobilenets.engine.loop.EpochState], which a run's state saves mid-epoch. A task plugs
in through its ``loss_fn(model, batch, trainer) -> (loss, count, sums)``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from mobilenets.core.errors import MobileNetsError
from mobilenets.data.common import EpochSampler
from mobilenets.engine.checkpoint import restore_rng, rng_state
from mobilenets.engine.device import Distributed, all_sum, unwrap
from mobilenets.engine.optim import lr_factor, make_ema, make_optimizer
from mobilenets.engine.settings import TrainSettings

progress_log = logging.getLogger("mobilenets.progress")

LossFn = Callable[..., tuple[torch.Tensor, int, dict]]


class TrainingDiverged(MobileNetsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class EpochState:
    """Running sums of the epoch in progress: saved with a run's state mid-epoch. ``sums`` adds
    up what the task's loss function reports besides the loss (correct predictions, loss
    parts), by name."""

    batch: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class Trainer:
    """What a training step needs besides the model: built by
    [`make_trainer`][mobilenets.engine.loop.make_trainer]."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: TrainSettings
    device: torch.device
    dtype: torch.dtype | None = None
    ema: AveragedModel | None = None
    distributed: Distributed = field(default_factory=Distributed)
    step: int = 0

    def state_dict(self, model: torch.nn.Module) -> dict:
        """What a resumed run needs of the model and the trainer, RNG state included."""
        return {
            "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "step": self.step, "rng": rng_state(),
        }  # fmt: skip

    def load_state_dict(self, model: torch.nn.Module, saved: dict) -> None:
        """Put a saved model, optimizer, schedule, scaler, EMA, step and RNG state back."""
        model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.step = saved["step"]
        restore_rng(saved["rng"])


def make_trainer(
    model: torch.nn.Module, train_size: int, config: TrainSettings, device: torch.device,
    dtype: torch.dtype | None, distributed: Distributed,
) -> tuple[Trainer, EpochSampler]:  # fmt: skip
    """The optimizer, schedule (per step), EMA and grad scaler of a run, and the sampler of its
    training split."""
    optimizer = make_optimizer(model, config)
    sampler = EpochSampler(
        train_size, seed=config.seed, batch_size=config.batch_size, drop_last=True,
        rank=distributed.rank, world_size=distributed.world_size,
    )  # fmt: skip
    steps_per_epoch = sampler.num_batches()
    if steps_per_epoch == 0:
        raise MobileNetsError(
            f"the training set has {train_size} images, fewer than one batch of "
            f"{config.batch_size} x {distributed.world_size} processes; lower batch_size"
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


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device,
                collate_fn=None, seed: int = 0) -> DataLoader:  # fmt: skip
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", collate_fn=collate_fn,
        # A private generator: creating the loader must not draw from the global RNG, or a
        # resumed run's dropout masks would shift.
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def ordered_loader(dataset, batch_size: int, workers: int = 0,
                   device: torch.device | str = "cpu", collate_fn=None,
                   distributed: Distributed = Distributed()) -> DataLoader:  # fmt: skip
    """The whole dataset once, in order, in batches: what an evaluation reads (this process's
    share of it in a torchrun job)."""
    sampler = EpochSampler(len(dataset), shuffle=False, batch_size=batch_size,
                           rank=distributed.rank, world_size=distributed.world_size)  # fmt: skip
    return make_loader(dataset, sampler, batch_size, workers, torch.device(device), collate_fn)


def train_epoch(model, loader, trainer: Trainer, state: EpochState, *, loss_fn: LossFn,
                on_step=None, progress: bool = True,
                description: str = "train") -> EpochState:  # fmt: skip
    """Train over ``loader`` (which starts at ``state.batch``), updating ``state``.

    ``loss_fn(model, batch, trainer)`` runs the forward pass and returns the batch's loss, its
    number of samples and the sums that ``state.sums`` adds up, by name. ``on_step(state)`` runs
    after every optimizer step (state saving hooks in here). A NaN or infinite loss raises
    [`TrainingDiverged`][mobilenets.engine.loop.TrainingDiverged] before the step is applied.
    """
    model.train()
    total = state.batch + len(loader)
    # A bar redraws itself with carriage returns: right on a terminal, but in a log file (a run
    # under nohup) every redraw would stay. There, tqdm's meter is logged as a line instead.
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
                "(try a lower lr)"
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
            state.sums[name] = state.sums.get(name, 0.0) + number
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
    """Progress for a stderr that is not a terminal: tqdm's meter (position, elapsed, ETA, rate and
    the postfix) as one plain line at most every
    [`PROGRESS_LINE_SECONDS`][mobilenets.engine.loop.PROGRESS_LINE_SECONDS], logged to
    ``mobilenets.progress``."""

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
        progress_log.info(meter)
