"""Quantization-aware fine-tuning: simulate the int8 model of
[`mobilenets.deploy.quantize`][mobilenets.deploy.quantize] in PyTorch, fine-tune through it, then
hand the weights to the same onnxruntime QDQ export.

The transform works on the modules the checkpoint already has (STYLE: no ``Quantizable*``
class tree). BN is folded first, as onnxruntime runs it, so the network that trains is the one
that ships. Then:

- every conv and the classifier get a weight parametrization that rounds the weight to the
  int8 grid the int8 file uses: symmetric, per output channel, scale = max|w| / 64, range
  [-64, 64] (onnxruntime's ``reduce_range``, 7-bit weights, which no CPU's int8 kernels saturate:
  see [`mobilenets.deploy.quantize`][mobilenets.deploy.quantize]);
- every tensor onnxruntime stores in uint8 gets a
  [`FakeQuantize`][mobilenets.deploy.qat.FakeQuantize] on it: the model input, each ReLU6 output
  (onnxruntime drops the Clip and quantizes the conv output with its range), each linear projection,
  each residual sum, the pooled features and the logits.

Rounding passes gradients straight through (``torch.fake_quantize_*``; Jacob et al. 2018,
Krishnamoorthi 2018 section 3). Activation ranges follow a moving min/max for the first half of
fine-tuning and are frozen for the second half, so the weights settle on fixed grids. The result
is exported by removing the hooks and keeping the rounded weights; onnxruntime then quantizes
those weights back onto exactly the grid they trained on, and calibrates the activation ranges
by min/max on the same training images.

The fine-tuning loop, `train_steps`, is also the one of the ExecuTorch program's PT2E
quantization-aware training
([`mobilenets.deploy.executorch_export`][mobilenets.deploy.executorch_export]).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader
from tqdm import tqdm

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import InvertedResidual, MobileNet
from mobilenets.data.common import EpochSampler
from mobilenets.deploy.folding import fold_batch_norm

log = logging.getLogger("mobilenets")

WEIGHT_QMIN, WEIGHT_QMAX = -64, 64  # onnxruntime's symmetric s8 range with reduce_range
ACTIVATION_QMIN, ACTIVATION_QMAX = 0, 255  # uint8, asymmetric (zero point from the range)
RANGE_MOMENTUM = 0.01  # weight of a new batch's min/max in the moving range
OBSERVE_FRACTION = 0.5  # ranges move during this fraction of the steps, then freeze


@dataclass(frozen=True)
class QatConfig:
    epochs: float = 1.0  # fractions allowed: 0.25 trains on a quarter of the training split
    lr: float = 1e-3  # SGD with momentum, cosine to zero; about 1% of a training lr
    momentum: float = 0.9
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int | float):
            raise MobileNetsError(f"QAT epochs must be a number, got {self.epochs!r}")
        if not 0 < self.epochs <= 100:
            raise MobileNetsError(f"QAT epochs must be in (0, 100], got {self.epochs!r}")
        if not isinstance(self.lr, int | float) or not 0 < self.lr < 10:
            raise MobileNetsError(f"QAT learning rate must be in (0, 10), got {self.lr!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise MobileNetsError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise MobileNetsError(f"batch size must be a positive integer, got {self.batch_size!r}")


class FakeQuantize(nn.Module):
    """Per-tensor uint8 fake quantization with a min/max range that moves while ``observing``.

    The range always contains 0 (onnxruntime's ``compute_scale_zp`` widens it the same way), so
    zero is exact and a ReLU6 output's zero point is 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))
        self.observing = True
        self.quantizing = True

    def observe(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
        if not self.seen:
            self.low.copy_(low)
            self.high.copy_(high)
            self.seen.fill_(True)
        else:
            self.low.lerp_(low, RANGE_MOMENTUM)
            self.high.lerp_(high, RANGE_MOMENTUM)

    def scale_and_zero_point(self) -> tuple[float, int]:
        scale = max(float(self.high - self.low), 1e-8) / (ACTIVATION_QMAX - ACTIVATION_QMIN)
        zero_point = round(ACTIVATION_QMIN - float(self.low) / scale)
        return scale, min(max(zero_point, ACTIVATION_QMIN), ACTIVATION_QMAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
        if not self.quantizing or not self.seen:
            return x
        scale, zero_point = self.scale_and_zero_point()
        return torch.fake_quantize_per_tensor_affine(
            x, scale, zero_point, ACTIVATION_QMIN, ACTIVATION_QMAX
        )


class WeightFakeQuantize(nn.Module):
    """A weight parametrization: round to the int8 file's symmetric 7-bit grid per output
    channel (axis 0)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        channels = weight.shape[0]
        absmax = weight.detach().abs().reshape(channels, -1).amax(1)
        scale = (absmax / WEIGHT_QMAX).clamp(min=1e-12).float()
        zero_point = torch.zeros(channels, dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(
            weight, scale, zero_point, 0, WEIGHT_QMIN, WEIGHT_QMAX
        )


class QuantSimulation:
    """``model`` (a folded copy of a MobileNet) with int8 simulated: weight parametrizations on
    every conv and the classifier, FakeQuantize modules on the activations through hooks.
    `finish` takes the simulation off and leaves the rounded weights in place."""

    def __init__(self, model: MobileNet) -> None:
        if not isinstance(model, MobileNet):
            raise MobileNetsError(
                f"quantization-aware training takes a MobileNet, got {type(model).__name__}"
            )
        if not isinstance(model.classifier, nn.Linear):
            raise MobileNetsError("quantization-aware training needs a model with a classifier")
        self.model, _ = fold_batch_norm(model)  # a model folded before stays as it is
        self.model.train()
        self.quantizers = nn.ModuleDict().to(next(self.model.parameters()).device)
        self._hooks = []
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                parametrize.register_parametrization(module, "weight", WeightFakeQuantize())
        self._output(self.model.stem, "input", before=True)
        for name, module in self.model.named_modules():
            if isinstance(module, nn.ReLU6):
                self._output(module, name)
            elif isinstance(module, InvertedResidual):
                self._output(module.bn3, f"{name}.bn3")  # the linear projection (BN folded)
                if module.use_residual:
                    self._output(module, f"{name}.add")
        self._output(self.model.classifier, "pooled", before=True)
        self._output(self.model.classifier, "logits")

    def _output(self, module: nn.Module, name: str, before: bool = False) -> None:
        quantizer = self.quantizers[name.replace(".", "_")] = FakeQuantize()
        if before:
            hook = module.register_forward_pre_hook(lambda _, args: (quantizer(args[0]),))
        else:
            hook = module.register_forward_hook(lambda _, args, output: quantizer(output))
        self._hooks.append(hook)

    def observe(self, enabled: bool) -> None:
        for quantizer in self.quantizers.values():
            quantizer.observing = enabled

    def calibrate(self, batches: Iterable[torch.Tensor]) -> int:
        """Set the activation ranges from ``batches`` run through the float model (weights
        rounded, activations not), as onnxruntime's calibration sees it; the count of images."""
        device = next(self.model.parameters()).device
        training = self.model.training
        for quantizer in self.quantizers.values():
            quantizer.quantizing = False
        seen = 0
        try:
            with torch.no_grad():
                self.model.eval()
                for batch in batches:
                    self.model(batch.to(device))
                    seen += len(batch)
        finally:
            for quantizer in self.quantizers.values():
                quantizer.quantizing = True
            self.model.train(training)
        return seen

    def finish(self) -> MobileNet:
        """The folded model with the int8-rounded weights and no simulation left on it."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module in self.model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self.model.eval()


def fine_tune(
    model: MobileNet,
    train_dataset,
    config: QatConfig,
    calibration_batches: Iterable[torch.Tensor],
    *,
    progress: bool = False,
) -> MobileNet:
    """Quantization-aware fine-tuning of a copy of ``model`` (left unchanged) on ``train_dataset``
    (items indexed by (index, seed), the training augmentation as its transform). Activation ranges
    start from ``calibration_batches``. Returns the folded model with int8-rounded weights, ready
    for [`mobilenets.deploy.quantize.quantize_ptq`][mobilenets.deploy.quantize.quantize_ptq]."""
    simulation = QuantSimulation(model)
    if simulation.calibrate(calibration_batches) == 0:
        raise MobileNetsError("no calibration images were given")
    train_steps(
        simulation.model,
        train_dataset,
        config,
        before_step=lambda step, total: simulation.observe(step < OBSERVE_FRACTION * total),
        progress=progress,
    )
    return simulation.finish()


def total_steps(images: int, config: QatConfig) -> int:
    """The steps `train_steps` takes on a training split of ``images`` (full batches only)."""
    steps_per_epoch = images // config.batch_size
    if steps_per_epoch == 0:
        raise MobileNetsError(
            f"the training split has {images} images, fewer than one batch of {config.batch_size}"
        )
    return max(1, math.ceil(config.epochs * steps_per_epoch))


def train_steps(
    net: nn.Module,
    train_dataset,
    config: QatConfig,
    *,
    before_step: Callable[[int, int], None] | None = None,
    progress: bool = False,
) -> float:
    """The QAT loop, shared by the onnxruntime simulation above and ExecuTorch's PT2E QAT:
    ``config.epochs`` passes over ``train_dataset`` in seeded order (the last partial batch
    dropped), cross-entropy, SGD with momentum and a cosine schedule to zero.
    ``before_step(step, total)`` runs before each step (to freeze the observed ranges); ``net``
    is trained in place and the smoothed final loss returned."""
    device = next(net.parameters()).device
    total = total_steps(len(train_dataset), config)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )
    step, epoch, running = 0, 0, 0.0
    bar = tqdm(total=total, desc="QAT", leave=False, disable=not progress)
    while step < total:
        sampler = EpochSampler(
            len(train_dataset),
            seed=config.seed,
            epoch=epoch,
            batch_size=config.batch_size,
            drop_last=True,
        )
        loader = DataLoader(train_dataset, batch_size=config.batch_size, sampler=sampler)
        for images, labels in loader:
            if before_step is not None:
                before_step(step, total)
            loss = F.cross_entropy(net(images.to(device)), labels.to(device))
            if not torch.isfinite(loss):
                raise MobileNetsError(
                    f"QAT loss became {loss.item()} at step {step + 1}; lower the QAT learning "
                    f"rate (now {config.lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{running:.4f}")
            if step >= total:
                break
        epoch += 1
    bar.close()
    log.info(
        f"QAT: {total} steps ({config.epochs:g} epochs) of {config.batch_size}, "
        f"final loss {running:.4f}"
    )
    return running
