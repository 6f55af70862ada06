"""The optimizer, the learning-rate schedule and the weight EMA of a training run."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel

from mobilenets.engine.settings import TrainSettings

FUSED_DEVICES = ("cpu", "cuda")  # where torch.optim has fused SGD and AdamW kernels
POLY_POWER = 0.9  # DeepLab's learning_power (Chen et al. 2017, section 4)


def make_optimizer(model: torch.nn.Module, config: TrainSettings) -> torch.optim.Optimizer:
    """The configured optimizer; weight decay on conv and linear weights only (not BN, bias)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # SGD and AdamW run fused: one kernel per parameter group, on the CPU as on a GPU, and a
    # step skipped on the device through the optimizer's ``found_inf`` (see
    # mobilenets.engine.loop.apply_update). RMSprop has no fused kernel; foreach is the next best
    # (one kernel per operation over all parameters; PyTorch picks it only for CUDA tensors).
    device = next(model.parameters()).device
    fused = device.type in FUSED_DEVICES
    kernel = {"fused": True} if fused else {"foreach": True}
    if config.optimizer == "sgd":
        nesterov = config.nesterov and config.momentum > 0
        optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=nesterov, **kernel
        )
        if fused and config.momentum > 0:
            # Fused SGD fills the momentum of a first step with empty tensors; a first step that
            # found_inf skips would leave them so. Zeros give the same first step exactly
            # (0 * momentum + grad == grad) and stay zeros when it is skipped.
            for parameter in model.parameters():
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
        return optimizer
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups,
            lr=config.lr,
            alpha=config.rmsprop_decay,
            eps=config.rmsprop_eps,
            momentum=config.momentum,
            foreach=True,
        )
    return torch.optim.AdamW(groups, lr=config.lr, **kernel)


def lr_factor(step: int, steps_per_epoch: int, config: TrainSettings) -> float:
    """The learning rate at ``step`` as a fraction of ``config.lr``: linear warmup, then cosine
    to zero, the paper's staircase decay of ``lr_decay`` per epoch, or DeepLab's "poly" decay,
    ``(1 - progress) ** 0.9``."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "exponential":
        return config.lr_decay ** (step // steps_per_epoch)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if config.schedule == "poly":
        return (1 - progress) ** POLY_POWER
    return 0.5 * (1 + math.cos(math.pi * progress))


def make_ema(model: torch.nn.Module, decay: float) -> WeightEMA:
    """Weight EMA as TF's ExponentialMovingAverage with num_updates: the decay starts low,
    (1 + n) / (10 + n), and rises to ``decay``. BN statistics are averaged too; BN's update
    counters are copied."""
    return WeightEMA(model, decay)


class WeightEMA(AveragedModel):
    """The averaged copy of a model (an AveragedModel, whose state dict it keeps) with an update
    that never reads from the device.

    AveragedModel's own update asks ``n_averaged == 0`` on the host, a wait for the GPU on every
    step; here the first update's plain copy is a rate of 0, and ``healthy`` (a boolean tensor)
    turns an update into none at all (rate 1, counters kept) without leaving the device.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(
        self, model: torch.nn.Module, healthy: torch.Tensor | None = None
    ) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        if len(averaged) != len(current):
            raise ValueError(f"the EMA holds {len(averaged)} tensors, the model {len(current)}")
        n = self.n_averaged
        rate = torch.where(n == 0, 0.0, torch.clamp((1 + n) / (10 + n), max=self.decay))
        if healthy is not None:
            rate = torch.where(healthy, rate, 1.0)
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        counters = [
            (a, c) for a, c in zip(averaged, current, strict=True) if not a.is_floating_point()
        ]
        for dtype in {a.dtype for a, _ in floats}:
            mine = [a for a, _ in floats if a.dtype == dtype]
            theirs = [c.detach() for a, c in floats if a.dtype == dtype]
            # At rate 1 (a skipped update) this is mine * 1 + theirs * 0: unchanged as long as
            # the model's tensors are finite, which they are, the update having been skipped too.
            torch._foreach_mul_(mine, rate.to(dtype))
            torch._foreach_add_(mine, torch._foreach_mul(theirs, (1 - rate).to(dtype)))
        if counters:
            mine = [a for a, _ in counters]
            step = [c - a for a, c in counters]  # integers: exact, no NaN to mask
            if healthy is not None:
                torch._foreach_mul_(step, healthy.long())
            torch._foreach_add_(mine, step)
        self.n_averaged.add_(1 if healthy is None else healthy.long())
