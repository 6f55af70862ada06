"""The training run: one loop for every task.

[`fit`][mobilenets.engine.run.fit] trains a task's model into an output folder and leaves:

    train_config.json        the task, the resolved config, model config, preprocessing, classes
    metrics.jsonl            one JSON line per epoch
    last.safetensors         weights after the last epoch (EMA weights when EMA is on)
    best.safetensors         weights of the epoch with the best validation score
    state/last.pt            everything resume needs (torch.load(weights_only=True) reads it)
    eval.json, plots         the final evaluation, written by the task

Every file is written atomically. The state is also written mid-epoch (every ``state_every``
steps or ``state_minutes``), with the RNG state and the position in the epoch, and the data
order and augmentation of an epoch are fixed by (seed, epoch, index): a run killed at any point
and resumed finishes with the same weights and metrics as one that was never interrupted.

A task plugs in with a [`Task`][mobilenets.engine.run.Task]: it builds the model and data of a run
(a [`Job`][mobilenets.engine.run.Job]: the model, the training split, the loss function, the
evaluation), names the metric that picks the best checkpoint, and writes its final files. The loop,
the state, DDP and the checkpoints are the same for every task.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import write_json
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.engine.checkpoint import (
    BEST,
    LAST,
    STATE_FILE,
    load_state,
    save_checkpoint,
    save_state,
)
from mobilenets.engine.device import (
    Distributed,
    all_sum,
    autocast_dtype,
    init_distributed,
    run_device,
)
from mobilenets.engine.loop import (
    EpochState,
    LossFn,
    Trainer,
    flush,
    make_loader,
    make_trainer,
    train_epoch,
)
from mobilenets.engine.settings import PLACEMENT, TrainSettings

log = logging.getLogger("mobilenets")


@dataclass
class RunContext:
    """Where a run executes, for the task that sets it up."""

    device: torch.device
    dtype: torch.dtype | None
    distributed: Distributed
    progress: bool  # progress bars here: asked for, and this is the main process

    def evaluation(self, config: TrainSettings) -> dict[str, Any]:
        """Where a task's evaluation of the run's model runs, as the keyword arguments that every
        task's evaluation takes: the run's device, autocast dtype and processes, and the
        config's memory format."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "channels_last": config.channels_last,
            "distributed": self.distributed,
        }


@dataclass
class Job:
    """What a task sets up for one run (see [`Task`][mobilenets.engine.run.Task])."""

    model: torch.nn.Module  # built and initialised, on the CPU
    train: torch.utils.data.Dataset  # the training split, with its augmentation
    loss_fn: LossFn  # loss_fn(model, batch, trainer) -> (loss, count, sums)
    evaluate: Callable[[torch.nn.Module], Any]  # the shipped weights -> the task's evaluation
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    record: dict  # recorded in train_config.json beside the train config (the model config, ...)
    checkpoint_info: dict = field(default_factory=dict)  # more checkpoint metadata (category ids)
    collate: Callable | None = None  # the training loader's collate function


def train_batches(job: Job, sampler, config: TrainSettings, device: torch.device):
    """The batches of an epoch (from ``sampler``'s position): the training split's own, if it
    makes them (``job.train.batches(sampler, batch_size, device)``, an iterable with a length,
    of batches already on ``device``), else a DataLoader's."""
    batches = getattr(job.train, "batches", None)
    if callable(batches):
        return batches(sampler, config.batch_size, device)
    return make_loader(
        job.train, sampler, config.batch_size, config.workers, device, job.collate, config.seed
    )


class Task(Protocol):
    """What a task brings to [`fit`][mobilenets.engine.run.fit]."""

    name: str  # "classification", "detection": recorded in the run
    config_type: type[TrainSettings]
    score: str  # the metrics row key whose highest value picks best.safetensors

    def prepare(self, config, saved_run: dict | None, context: RunContext) -> Job:
        """The model and data of a run; ``saved_run`` is the resumed run's record, or None."""

    def train_metrics(self, sums: dict[str, float], seen: float) -> dict:
        """Row entries from the epoch's sums besides the loss (``train_top1``, ...)."""

    def val_metrics(self, evaluation) -> dict:
        """Row entries from an evaluation (``val_top1``, ``val_AP``, ...)."""

    def describe(self, row: dict, epochs: int) -> str:
        """The line logged for an epoch's metrics row."""

    def finish(self, out: Path, evaluation, history: list[dict], run: dict) -> None:
        """The final files of a run (eval.json, plots), on the main process."""


@dataclass
class FitResult:
    out: Path
    best: float  # the best validation score (the task's ``score``) of any epoch
    final: Any  # the task's evaluation of the shipped weights after the last epoch
    epochs: int
    history: list[dict]
    main_process: bool = True  # False on the other ranks of a torchrun job


def open_run(
    out: Path, config: TrainSettings | None, resume: bool, task: Task, placement: dict | None = None
) -> tuple[TrainSettings, dict | None]:
    """The config of the run in ``out`` and, with ``resume``, its saved state.

    A resumed run must be given its own config or none, and may change the ``placement`` settings
    ([`PLACEMENT`][mobilenets.engine.run.PLACEMENT]) of the saved one; a new run needs a config and
    an ``out`` that holds no run yet.
    """
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise MobileNetsError(f"resume=True: no training state at {str(state_path)!r}")
        saved = load_state(state_path)
        kind = saved["run"].get("task")
        if kind != task.name:
            raise MobileNetsError(
                f"resume=True: {str(out)!r} holds a {kind} run, not a "
                f"{task.name} run; resume it as {kind} training"
            )
        restored = task.config_type.from_dict(saved["run"]["train_config"])
        if placement:
            other = sorted(set(placement) - set(PLACEMENT))
            if other:
                raise MobileNetsError(
                    f"resume=True may change only {', '.join(PLACEMENT)}; not {', '.join(other)}"
                )
            restored = dataclasses.replace(restored, **placement)
        if config is not None and config != restored:
            differ = [
                f"{key}={value!r} (saved {getattr(restored, key)!r})"
                for key, value in config.to_dict().items()
                if value != getattr(restored, key)
            ]
            raise MobileNetsError(
                f"resume=True: the run in {str(out)!r} was started with other "
                f"settings: {', '.join(differ)}"
            )
        return restored, saved
    if config is None:
        raise MobileNetsError(
            f"{task.name} training needs a {task.config_type.__name__} unless "
            "it resumes a saved run"
        )
    if state_path.is_file():
        raise MobileNetsError(
            f"{str(out)!r} already holds a run; pass resume=True to continue it, or choose "
            "another folder"
        )
    return config, None


def moved(saved: dict, config: TrainSettings) -> str:
    """What a resumed run changed of the saved run's placement, as words for the log."""
    changes = [
        f"{name} {getattr(config, name)!r} (saved {saved[name]!r})"
        for name in PLACEMENT
        if saved[name] != getattr(config, name)
    ]
    return f", with {', '.join(changes)}" if changes else ""


def check_resumed_model(saved, built, data: str, *fields: str) -> None:
    """A resumed run rebuilds the model it saved: ``built``, the model config that the data
    spec ``data`` gives now, must have the ``saved`` config's name, number of classes and any
    other ``fields`` (detection and segmentation configs)."""
    names = ("name", "num_classes", *fields)
    if any(getattr(saved, name) != getattr(built, name) for name in names):
        raise MobileNetsError(
            f"resume=True: the data {data!r} gives {built.name} with {built.num_classes} "
            f"classes; the saved run has {saved.name} with {saved.num_classes} classes"
        )


@dataclass
class StateSaver:
    """Writes a run's state (``snapshot()``) to ``path``: `write` at an epoch's end, and, as the
    ``on_step`` of [`train_epoch`][mobilenets.engine.run.train_epoch], mid-epoch every
    ``state_every`` steps and every ``state_minutes`` of the trainer's config. Only the main process
    writes."""

    path: Path
    snapshot: Callable[[], dict]
    trainer: Trainer
    steps_per_epoch: int
    last: float = field(default_factory=time.monotonic)

    def __call__(self, state: EpochState) -> None:
        if not self.trainer.distributed.main:  # the others neither write nor read back here
            return
        config = self.trainer.config
        every = config.state_every and self.trainer.step % config.state_every == 0
        late = time.monotonic() - self.last > 60 * config.state_minutes
        if not (every or late):
            return
        # The state holds the device's sums as plain floats, and a run that met a non-finite
        # loss stops here (TrainingDiverged) instead of saving the state after it.
        flush(self.trainer, state)
        if state.batch < self.steps_per_epoch:  # the epoch's end writes
            self.write()

    def write(self) -> None:
        if self.trainer.distributed.main:
            save_state(self.path, self.snapshot())
            self.last = time.monotonic()


def fit(
    task: Task,
    config: TrainSettings | None,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    placement: dict | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``task`` with ``config`` into the folder ``out``. With ``resume``, continue the run
    saved there with its own config (``config`` may then be None; if given, it must be the
    saved one), on the device and workers that ``placement`` may change (see PLACEMENT)."""
    out = Path(out)
    config, saved = open_run(out, config, resume, task, placement)
    distributed = init_distributed(config.device)
    device = run_device(config.device, distributed)
    dtype = autocast_dtype(config.amp, device)
    if dtype is not None and device.type == "cpu" and distributed.main:
        log.warning(
            f"note: amp={config.amp} on CPU runs through autocast emulation on most "
            "CPUs, often many times slower than fp32 (amp='auto' keeps CPU runs in "
            "fp32)"
        )
    torch.manual_seed(config.seed)

    context = RunContext(device, dtype, distributed, progress and distributed.main)
    job = task.prepare(config, saved["run"] if saved is not None else None, context)
    run = {
        "task": task.name,
        "train_config": config.to_dict(),
        **job.record,
        "preprocessing": job.preprocessing.to_dict(),
        "classes": list(job.classes),
        "world_size": distributed.world_size,
    }
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = job.model.to(device, memory_format=memory_format)
    trainer, train_sampler = make_trainer(model, len(job.train), config, device, dtype, distributed)
    ema = trainer.ema

    epoch, epoch_state, history, best = 0, EpochState(), [], -float("inf")
    if saved is not None:
        trainer.load_state_dict(model, saved)
        epoch, history, best = saved["epoch"], saved["history"], saved["best"]
        epoch_state = EpochState(**saved["epoch_state"])
        if distributed.main:
            log.info(
                f"resuming {str(out)!r} at epoch {epoch + 1}, batch {epoch_state.batch}"
                f"{moved(saved['run']['train_config'], config)}"
            )

    if distributed.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", run)
    trained = compiled(model, device, distributed) if config.compile else model
    if distributed.enabled:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )
    shipped = ema.module if ema is not None else model  # the weights we evaluate and save

    def snapshot() -> dict:
        return {
            "run": run,
            **trainer.state_dict(model),
            "epoch": epoch,
            "epoch_state": dataclasses.asdict(epoch_state),
            "history": history,
            "best": best,
        }

    saver = StateSaver(out / STATE_FILE, snapshot, trainer, train_sampler.num_batches())
    evaluation = None
    while epoch < config.epochs:
        train_sampler.epoch, train_sampler.start_batch = epoch, epoch_state.batch
        loader = train_batches(job, train_sampler, config, device)
        train_epoch(
            trained,
            loader,
            trainer,
            epoch_state,
            loss_fn=job.loss_fn,
            on_step=saver,
            progress=progress and distributed.main,
            description=f"epoch {epoch + 1}/{config.epochs}",
        )
        evaluated = time.perf_counter()
        evaluation = job.evaluate(shipped)
        row = epoch_row(task, epoch, trainer, epoch_state, evaluation, distributed)
        row["eval_seconds"] = time.perf_counter() - evaluated
        history.append(row)
        epoch += 1
        epoch_state = EpochState()
        if distributed.main:
            log.info(task.describe(row, config.epochs))
            with open(out / "metrics.jsonl", "a") as handle:  # appended rows survive a crash
                handle.write(json.dumps(row) + "\n")
            info = dict(
                train_config=run["train_config"], epoch=epoch, metrics=row, **job.checkpoint_info
            )
            save_checkpoint(shipped, out / LAST, job.classes, job.preprocessing, **info)
            if row[task.score] > best:
                best = row[task.score]
                save_checkpoint(shipped, out / BEST, job.classes, job.preprocessing, **info)
            saver.write()
    if evaluation is None:  # resumed a finished run: evaluate what it left
        evaluation = job.evaluate(shipped)
    if distributed.main:
        task.finish(out, evaluation, history, run)
    if distributed.enabled:
        dist.barrier()
    best = max(best, task.val_metrics(evaluation)[task.score])
    return FitResult(out, best, evaluation, epoch, history, distributed.main)


def compiled(
    model: torch.nn.Module, device: torch.device, distributed: Distributed
) -> torch.nn.Module:
    """The model compiled for training: forward and backward (AOTAutograd) as generated kernels.
    On a GPU the step is also captured as a CUDA graph ("reduce-overhead"): training batches all
    have one shape (the last, short one is dropped), so one capture replays every step. Under
    DDP the graphs are left out, the model being split around DDP's gradient buckets.

    The optimizer step is not compiled: SGD and AdamW are fused kernels already (torch.compile
    does not trace them), and the EMA update is a few multi-tensor operations.
    """
    graphs = device.type == "cuda" and not distributed.enabled
    return torch.compile(model, mode="reduce-overhead" if graphs else None)


def epoch_row(
    task: Task,
    epoch: int,
    trainer: Trainer,
    state: EpochState,
    evaluation,
    distributed: Distributed,
) -> dict:
    """An epoch's metrics: the training loss and sums over every process, the evaluation."""
    names = sorted(state.sums)
    totals = torch.tensor(
        [state.seen, state.loss_sum, *(state.sums[n] for n in names)], dtype=torch.float64
    )
    seen, loss, *sums = all_sum(totals, distributed).tolist()
    return {
        "epoch": epoch + 1,
        "step": trainer.step,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "train_loss": loss / seen,
        **task.train_metrics(dict(zip(names, sums, strict=True)), seen),
        **task.val_metrics(evaluation),
        "images_per_s": seen / max(state.seconds, 1e-9),
        "epoch_seconds": state.seconds,
    }
