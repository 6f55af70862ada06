"""The training settings every task shares, validated in one place.

[`TrainSettings`][mobilenets.engine.settings.TrainSettings] holds the fields of the optimizer, the
schedule, the weight EMA, the precision and the run (seed, loader workers, state saving, device). A
task's config subclasses it, changes the defaults that suit the task and adds its own fields
(classification: augmentation, label smoothing, starting weights; detection: the SSD loss and
matching).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from mobilenets.core.errors import MobileNetsError

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("cosine", "exponential", "poly")
AMPS = ("auto", "off", "bf16", "fp16")
# Settings that say where a run executes, not what it learns: a resumed run may change them, to
# carry on on another machine. Augmentation does not depend on the workers, so a resumed run
# stays bit for bit the same on the same kind of device (not from a GPU to a CPU).
PLACEMENT = ("device", "workers", "state_every", "state_minutes")


@dataclass(frozen=True)
class TrainSettings:
    """Training settings shared by every task. Stored beside a run's outputs and in its
    checkpoints; a task's config subclasses this with its own defaults and fields."""

    data: str = ""
    model: str = ""
    alpha: float | None = None  # None: the registered model's
    resolution: int | None = None  # None: the task's default for the data and model
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
    ema_decay: float = 0.0  # 0 turns weight EMA off
    amp: str = "auto"  # auto: bf16 on a CUDA GPU that has it, off on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the model for training
    seed: int = 0
    workers: int = 0
    state_every: int = 0  # steps between mid-epoch state saves; 0: time-based only
    state_minutes: float = 10.0  # minutes between mid-epoch state saves
    device: str = "auto"

    def __post_init__(self) -> None:
        self.check_choices(optimizer=OPTIMIZERS, schedule=SCHEDULES, amp=AMPS)
        self.check_positive("epochs", "batch_size", "lr")
        self.check_unit_interval("momentum", "rmsprop_decay", "ema_decay")
        self.check_interval("lr_decay", low_open=True)
        self.check_non_negative(
            "weight_decay", "warmup_epochs", "workers", "state_every", "state_minutes"
        )

    # --- validation helpers, for this class and the tasks' subclasses ---------------------------

    def check_choices(self, **choices: tuple[str, ...]) -> None:
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MobileNetsError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )

    def check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise MobileNetsError(f"{name} must be positive, got {value!r}")

    def check_unit_interval(self, *names: str) -> None:
        """Each of ``names`` in [0, 1)."""
        for name in names:
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise MobileNetsError(f"{name} must be in [0, 1), got {value!r}")

    def check_interval(self, *names: str, low_open: bool) -> None:
        """Each of ``names`` in (0, 1] (``low_open``) or [0, 1]."""
        for name in names:
            value = getattr(self, name)
            if not (0 < value <= 1 if low_open else 0 <= value <= 1):
                interval = "(0, 1]" if low_open else "[0, 1]"
                raise MobileNetsError(f"{name} must be in {interval}, got {value!r}")

    def check_non_negative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                raise MobileNetsError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    @staticmethod
    def path_or_name(value: Any, name: str, allowed: str) -> str | None:
        """A weights argument stored as text (for train_config.json): a path becomes a string;
        anything but a string or None is refused, naming what ``allowed`` says."""
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if value is not None and not isinstance(value, str):
            raise MobileNetsError(f"{name} must be {allowed}, got {value!r}")
        return value

    # --- conversions --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict):
        """A config from its `to_dict`; unknown fields are refused, naming the allowed."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MobileNetsError(
                f"unknown training settings {unknown}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**data)
