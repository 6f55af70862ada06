"""One epoch of training, for any model, loader and loss.

[`Trainer`][mobilenets.engine.loop.Trainer] holds what a step needs besides the model (optimizer,
per-step schedule, grad scaler, weight EMA); [`train_epoch`][mobilenets.engine.loop.train_epoch]
runs the steps of one epoch and keeps its running sums in an
[`EpochState`][mobilenets.engine.loop.EpochState], which a run's state saves mid-epoch. A task plugs
in through its ``loss_fn(model, batch, trainer) -> (loss, count, sums)``.

A step never waits for the device: the sums add up there (a
[`Tally`][mobilenets.engine.loop.Tally]) and [`read_back`][mobilenets.engine.loop.read_back], the
one host synchronisation, brings them into the epoch's state every few seconds. A non-finite loss
is found on the device too: its update is skipped there (see
[`apply_update`][mobilenets.engine.loop.apply_update]) and the next read-back stops the run.
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
    tally: Tally | None = None  # the device's running sums, between read-backs

    def state_dict(self, model: torch.nn.Module) -> dict:
        """What a resumed run needs of the model and the trainer, RNG state included."""
        return {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "step": self.step,
            "rng": rng_state(),
        }

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
    model: torch.nn.Module,
    train_size: int,
    config: TrainSettings,
    device: torch.device,
    dtype: torch.dtype | None,
    distributed: Distributed,
) -> tuple[Trainer, EpochSampler]:
    """The optimizer, schedule (per step), EMA and grad scaler of a run, and the sampler of its
    training split."""
    optimizer = make_optimizer(model, config)
    sampler = EpochSampler(
        train_size,
        seed=config.seed,
        batch_size=config.batch_size,
        drop_last=True,
        rank=distributed.rank,
        world_size=distributed.world_size,
    )
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
        optimizer,
        scheduler,
        torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        config,
        device,
        dtype,
        ema,
        distributed,
    )
    return trainer, sampler


def make_loader(
    dataset,
    sampler,
    batch_size: int,
    workers: int,
    device: torch.device,
    collate_fn=None,
    seed: int = 0,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_fn,
        # A private generator: creating the loader must not draw from the global RNG, or a
        # resumed run's dropout masks would shift.
        generator=torch.Generator().manual_seed(seed),
    )


def ordered_loader(
    dataset,
    batch_size: int,
    workers: int = 0,
    device: torch.device | str = "cpu",
    collate_fn=None,
    distributed: Distributed = Distributed(),
) -> DataLoader:
    """The whole dataset once, in order, in batches: what an evaluation reads (this process's
    share of it in a torchrun job)."""
    sampler = EpochSampler(
        len(dataset),
        shuffle=False,
        batch_size=batch_size,
        rank=distributed.rank,
        world_size=distributed.world_size,
    )
    return make_loader(dataset, sampler, batch_size, workers, torch.device(device), collate_fn)


READ_BACK_SECONDS = 2.0
# Under torchrun the processes read back at the same steps, every this many, so that after a
# non-finite loss they all stop at the same step (their clocks differ).
READ_BACK_STEPS = 100


def read_back(tensor: torch.Tensor) -> list:
    """A device tensor's values on the host: the only place the training loop waits for the
    device (every [`READ_BACK_SECONDS`][mobilenets.engine.loop.READ_BACK_SECONDS], at an epoch's
    end and before a state is saved)."""
    return tensor.tolist()


class Tally:
    """What the steps since the last read-back leave on the device: the loss and the task's sums
    (float64, this process's), and the first non-finite loss of the run (the step and the loss
    summed over the processes; step -1 while there is none)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] | None = None
        self.values: torch.Tensor | None = None
        self.seen = self.steps = 0
        self.seconds = 0.0
        self.bad = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=device)

    def healthy(self) -> torch.Tensor:
        """No non-finite loss yet: every update is applied only under this flag."""
        return self.bad[0] < 0

    def check(self, total: torch.Tensor, step: int) -> None:
        """Record ``step`` if its loss ``total`` (summed over the processes) is the first that
        is not finite."""
        first = self.healthy() & ~total.isfinite()
        self.bad.copy_(
            torch.stack(
                [
                    torch.where(first, float(step), self.bad[0]),
                    torch.where(first, total, self.bad[1]),
                ]
            )
        )

    def add(self, loss: torch.Tensor, count: int, sums: dict, seconds: float) -> None:
        if self.names is None:
            self.names = list(sums)
        elif list(sums) != self.names:
            raise MobileNetsError(
                f"loss_fn returned the sums {list(sums)}; earlier steps returned {self.names}"
            )
        # Sums may be tensors or Python numbers; float64 keeps an epoch's sum exact enough that
        # where the read-backs fall does not change it (a resumed run reads back elsewhere).
        parts = [loss.detach().double() * count]
        parts += [torch.as_tensor(v, device=self.device).double() for v in sums.values()]
        step = torch.stack([p.reshape(()) for p in parts])
        self.values = step if self.values is None else self.values.add_(step)
        self.seen += count
        self.steps += 1
        self.seconds += seconds


def flush(trainer: Trainer, state: EpochState) -> None:
    """Read the device's running sums back into ``state`` (which then holds plain floats, as a
    saved state must) and stop the run if a loss was not finite: raises
    [`TrainingDiverged`][mobilenets.engine.loop.TrainingDiverged], naming the first such step,
    whose update and every later one were skipped, so the model, optimizer and EMA are those of
    the step before it."""
    tally = trainer.tally
    if tally is None or tally.steps == 0:  # the last read-back found the run healthy
        return
    numbers = read_back(torch.cat([tally.bad, tally.values]))
    (bad_step, bad_loss), sums = numbers[:2], numbers[2:]
    if bad_step >= 0:
        step = int(bad_step)
        batch = state.batch + tally.steps - (trainer.step - step)
        raise TrainingDiverged(
            f"loss is {bad_loss} at step {step} (epoch batch {batch}); its update and the later "
            "ones were skipped and nothing after it is saved: the last good checkpoint is kept "
            "(try a lower lr)"
        )
    state.batch += tally.steps
    state.loss_sum += sums[0]
    for name, number in zip(tally.names, sums[1:], strict=True):
        state.sums[name] = state.sums.get(name, 0.0) + number
    state.seen += tally.seen
    state.seconds += tally.seconds
    tally.values, tally.seen, tally.steps, tally.seconds = None, 0, 0, 0.0


def apply_update(trainer: Trainer, model: torch.nn.Module) -> None:
    """The optimizer step and the EMA update, both skipped on the device once a loss was not
    finite (the flag of ``trainer.tally``), as GradScaler skips a step with inf gradients.

    Fused SGD and AdamW skip through their ``found_inf`` input. With GradScaler on (fp16), the
    gradients are made NaN instead, so that the scaler's own check skips the step. RMSprop
    (foreach) steps and then puts back, tensor by tensor, what it changed.
    """
    optimizer, healthy = trainer.optimizer, trainer.tally.healthy()
    if trainer.scaler.is_enabled():
        grads = [
            p.grad
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if grads:
            torch._foreach_mul_(grads, torch.where(healthy, 1.0, math.nan).to(grads[0].dtype))
        trainer.scaler.step(optimizer)
        trainer.scaler.update()
    elif any(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = (~healthy).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    else:
        masked_step(optimizer, healthy)
    if trainer.ema is not None:
        trainer.ema.update_parameters(unwrap(model), healthy)


def masked_step(optimizer: torch.optim.Optimizer, healthy: torch.Tensor) -> None:
    """``optimizer.step()`` kept only where ``healthy``: the parameters and the optimizer state
    are put back otherwise (state the step created goes back to zeros, RMSprop's initial
    value). ``torch.where`` and not arithmetic, because the step's values may be NaN."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    kept = [p for p in params if optimizer.state.get(p)]
    created = [p for p in params if not optimizer.state.get(p)]
    before = [(p, p.detach().clone()) for p in params]
    before += [
        (v, v.clone())
        for p in kept
        for v in optimizer.state[p].values()
        if isinstance(v, torch.Tensor)
    ]
    optimizer.step()
    with torch.no_grad():
        for tensor, old in before:
            tensor.copy_(torch.where(healthy, tensor, old))
        for p in created:
            for value in optimizer.state[p].values():
                if isinstance(value, torch.Tensor):
                    value.copy_(torch.where(healthy, value, 0))


def train_epoch(
    model,
    loader,
    trainer: Trainer,
    state: EpochState,
    *,
    loss_fn: LossFn,
    on_step=None,
    progress: bool = True,
    description: str = "train",
) -> EpochState:
    """Train over ``loader`` (which starts at ``state.batch``), updating ``state``.

    ``loss_fn(model, batch, trainer)`` runs the forward pass and returns the batch's loss, its
    number of samples and the sums that ``state.sums`` adds up, by name. ``on_step(state)`` runs
    after every optimizer step (state saving hooks in here; it calls
    [`flush`][mobilenets.engine.loop.flush] before it saves).

    No step waits for the device: the sums add up there, and are read back into ``state`` every
    [`READ_BACK_SECONDS`][mobilenets.engine.loop.READ_BACK_SECONDS] (the progress display updates
    then) and at the epoch's end. A NaN or infinite loss skips its update on the device, and every
    later one; the next read-back raises
    [`TrainingDiverged`][mobilenets.engine.loop.TrainingDiverged].
    """
    model.train()
    if trainer.tally is None:
        trainer.tally = Tally(trainer.device)
    tally = trainer.tally
    # CUDA graphs replay into the same output memory: a new step must be marked as such.
    graphs = trainer.device.type == "cuda" and trainer.config.compile
    total = state.batch + len(loader)
    # A bar redraws itself with carriage returns: right on a terminal, but in a log file (a run
    # under nohup) every redraw would stay. There, tqdm's meter is logged as a line instead.
    terminal = sys.stderr.isatty()
    bar = tqdm(
        loader,
        desc=description,
        total=total,
        initial=state.batch,
        unit="batch",
        disable=not (progress and terminal),
        dynamic_ncols=True,
    )
    lines = ProgressLines(description, total, state.batch) if progress and not terminal else None
    started = read = time.perf_counter()
    for batch in bar:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, count, sums = loss_fn(model, batch, trainer)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        # Summed over the ranks (on the device), so that all of them skip the same steps.
        tally.check(all_sum(loss.detach().double().clone(), trainer.distributed), trainer.step)
        apply_update(trainer, model)
        trainer.scheduler.step()
        trainer.step += 1
        now = time.perf_counter()
        tally.add(loss, count, sums, now - started)
        started = now
        if trainer.distributed.enabled:
            due = tally.steps >= READ_BACK_STEPS
        else:
            due = now - read >= READ_BACK_SECONDS or (lines is not None and lines.due())
        if due or tally.steps + state.batch == total:
            flush(trainer, state)
            read = time.perf_counter()
            postfix = {
                "loss": f"{state.loss_sum / state.seen:.4f}",
                "lr": f"{trainer.optimizer.param_groups[0]['lr']:.4g}",
                "img_s": f"{state.seen * trainer.distributed.world_size / state.seconds:.1f}",
            }
            bar.set_postfix(postfix, refresh=False)
            if lines is not None:
                lines.update(state.batch, postfix)
        if on_step is not None:
            on_step(state)
    flush(trainer, state)
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

    def due(self) -> bool:
        """Whether a line is due (the loop then reads its figures back from the device)."""
        return time.monotonic() - self.written >= PROGRESS_LINE_SECONDS

    def update(self, batch: int, postfix: dict[str, str]) -> None:
        now = time.monotonic()
        if now - self.written < PROGRESS_LINE_SECONDS and batch < self.total:
            return
        self.written = now
        meter = tqdm.format_meter(
            batch,
            self.total,
            now - self.started,
            prefix=self.description,
            unit="batch",
            initial=self.initial,
            postfix=", ".join(f"{k}={v}" for k, v in postfix.items()),
            bar_format="{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, "
            "{rate_fmt}{postfix}]",
        )
        progress_log.info(meter)
