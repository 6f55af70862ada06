"""The optimizer, the learning-rate schedule and the weight EMA of a training run."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel

from mobilenets.engine.settings import TrainSettings

POLY_POWER = 0.9  # DeepLab's learning_power (Chen et al. 2017, section 4)


def make_optimizer(model: torch.nn.Module, config: TrainSettings) -> torch.optim.Optimizer:
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
