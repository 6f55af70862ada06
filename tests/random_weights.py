"""Random weights that make a mapping mistake visible in the logits."""

import math

from torch import nn


def randomize_batch_norm(model: nn.Module) -> None:
    """Non-trivial BN statistics, so that a mis-mapped BN layer would show in the logits."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight, 1.0, 0.3)
            nn.init.normal_(module.bias, 0.0, 0.3)


def randomize_torch(model: nn.Module) -> nn.Module:
    """He-normal convs (fan-in), a random classifier bias, random BN statistics. torch's fan-out
    init counts a depthwise conv's fan as 9C, which with random BN statistics makes the logits
    almost independent of the input, so a mis-mapped conv would hardly show."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.weight[0].numel()))
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.bias, 0.0, 0.1)
    randomize_batch_norm(model)
    return model.eval()
