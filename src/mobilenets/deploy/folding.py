"""BN folding: each BatchNorm merged into the conv before it, for export and quantization, and
the affine part of V3's squeeze-and-excite gate merged into the conv before it.

The (conv, BN) pairs are found by the part names the blocks give them
([`FOLD_PAIRS`][mobilenets.deploy.folding.FOLD_PAIRS]), in classifiers, detectors and segmenters
alike: a transform of the same modules, not a parallel class tree.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mobilenets.core.detector import ExtraLayer, PredictionHead
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import ConvBNAct, DepthwiseSeparable, InvertedResidual, SqueezeExcite
from mobilenets.core.segmenter import AuxHead, HeadConv

M = TypeVar("M", bound=nn.Module)

# The (conv, BN) pairs of each block class, by the part names the model modules give them.
FOLD_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    ConvBNAct: (("conv", "bn"),),
    DepthwiseSeparable: (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    InvertedResidual: (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    ExtraLayer: (("conv_reduce", "bn1"), ("conv_dw", "bn2"), ("conv_pw", "bn3")),
    PredictionHead: (("conv_dw", "bn"),),
    HeadConv: (("conv", "bn"),),  # DeepLabv3's image pooling, ASPP branches and projection
    AuxHead: (("conv", "bn"),),  # its training-time head; its classifier has a bias, no BN
}


def fold_batch_norm(model: M) -> tuple[M, int]:
    """A copy of ``model`` (eval mode, same device and dtype) whose BN layers are folded into
    the conv before each, and the number folded.

    Per output channel, with s = gamma / sqrt(running_var + eps): w' = w * s and
    b' = beta + (b - running_mean) * s, b = 0 for our bias-free convs (torch's
    fuse_conv_bn_eval); the BN becomes an identity. A Conv2dSame stays a Conv2dSame, so TF
    "SAME" padding is kept. The hard-sigmoid gate of each V3 squeeze-and-excite block is folded
    too (see [`fold_se_gates`][mobilenets.deploy.folding.fold_se_gates]); the count is of BN
    layers. ``model`` itself is not changed, not even switched to eval mode.
    """
    folded = copy.deepcopy(model).eval()
    count = 0
    for block in folded.modules():
        for conv_name, bn_name in FOLD_PAIRS.get(type(block), ()):
            conv, bn = getattr(block, conv_name), getattr(block, bn_name)
            # InvertedResidual with t == 1 has no expansion layer; an Identity is a BN folded
            # already (quantization-aware training fine-tunes the folded model)
            if conv is None or isinstance(bn, nn.Identity):
                continue
            setattr(block, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(block, bn_name, nn.Identity())
            count += 1
    left = [name for name, module in folded.named_modules() if isinstance(module, nn.BatchNorm2d)]
    if left:
        raise MobileNetsError(
            f"cannot fold BN layers outside {', '.join(c.__name__ for c in FOLD_PAIRS)}: "
            f"{', '.join(left[:5])}{', ...' if len(left) > 5 else ''}"
        )
    fold_se_gates(folded)
    return folded, count


def fold_se_gates(model: nn.Module) -> int:
    """Fold the affine part of every squeeze-and-excite gate of ``model`` (in place) into the conv
    before it, and the number folded.

    The gate is ReLU6(y + 3) / 6 (V3 section 5.2) of y = W s + b, which equals
    clamp(W' s + b', 0, 1) with W' = W / 6 and b' = (b + 3) / 6: ``conv_expand`` takes W' and b'
    and the gate becomes a Hardtanh(0, 1). The arithmetic is the same, but the graph is not:
    onnxruntime's QDQ quantizer and runtime have no int8 HardSigmoid (it would run in float on
    dequantized values) while a Clip after a Conv is absorbed in the QLinearConv's output range;
    ExecuTorch's XNNPACK quantizer does not annotate hardsigmoid (float in the delegate, its
    decomposition's constants left outside it) while a hardtanh after a conv shares the conv's
    int8 output. A gate folded already (a Hardtanh) is left as it is."""
    count = 0
    for block in model.modules():
        if not isinstance(block, SqueezeExcite) or not isinstance(block.gate, nn.Hardsigmoid):
            continue
        conv = block.conv_expand
        with torch.no_grad():
            conv.weight.div_(6)
            conv.bias.add_(3).div_(6)
        block.gate = nn.Hardtanh(0.0, 1.0)
        count += 1
    return count
