"""BN folding: each BatchNorm merged into the conv before it, for export and quantization, the
affine part of V3's squeeze-and-excite gate merged into the conv before it, and V4's layer scale
merged into the projection before it.

The (conv, BN) pairs are found by the part names the blocks give them
([`FOLD_PAIRS`][mobilenets.deploy.folding.FOLD_PAIRS]), in classifiers, detectors and segmenters
alike: a transform of the same modules, not a parallel class tree.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from mobilenets.core.blocks_v4 import FusedIB, MobileMQA, PreLogitsBN, UniversalInvertedBottleneck
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
    FusedIB: (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
    UniversalInvertedBottleneck: (
        ("conv_dw_start", "bn_start"),
        ("conv_pw", "bn1"),
        ("conv_dw", "bn2"),
        ("conv_pwl", "bn3"),
    ),
    # the input norm comes before the convs it feeds: see fold_attention_norms
    MobileMQA: (("key_down", "key_norm"), ("value_down", "value_norm")),
    PreLogitsBN: (("fc", "bn"),),  # a Linear and a BatchNorm1d
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
            fuse = fuse_linear_bn_eval if isinstance(conv, nn.Linear) else fuse_conv_bn_eval
            setattr(block, conv_name, fuse(conv, bn))
            setattr(block, bn_name, nn.Identity())
            count += 1
    count += fold_attention_norms(folded)
    left = [
        name
        for name, module in folded.named_modules()
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d))
    ]
    if left:
        raise MobileNetsError(
            f"cannot fold BN layers outside {', '.join(c.__name__ for c in FOLD_PAIRS)}: "
            f"{', '.join(left[:5])}{', ...' if len(left) > 5 else ''}"
        )
    fold_se_gates(folded)
    fold_layer_scales(folded)
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


def fold_attention_norms(model: nn.Module) -> int:
    """Turn the input BN of every Mobile MQA block of ``model`` (in place) into a per-channel
    affine 1x1 depthwise conv with bias, and the number turned.

    This BN comes before the convs it feeds (query, and the key/value reductions or projections),
    so it cannot merge into a conv's output channels. Merging it into their inputs would be exact
    for the 1x1 projections but not for the padded 3x3 reductions, whose zero padding would then
    see the BN's shift; a depthwise 1x1 conv computes the same y = x * s + (beta - mean * s) on
    every pixel and lowers and quantizes as every other conv does. One already turned (not a
    BatchNorm2d) is left as it is."""
    count = 0
    for block in model.modules():
        if not isinstance(block, MobileMQA) or not isinstance(block.norm, nn.BatchNorm2d):
            continue
        bn = block.norm
        channels = bn.num_features
        conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
        conv = conv.to(bn.running_mean.device, bn.running_mean.dtype)
        with torch.no_grad():
            scale = (bn.running_var + bn.eps).rsqrt() * bn.weight
            conv.weight.copy_(scale.view(-1, 1, 1, 1))
            conv.bias.copy_(bn.bias - bn.running_mean * scale)
        block.norm = conv
        count += 1
    return count


def fold_layer_scales(model: nn.Module) -> int:
    """Fold every layer scale of ``model`` (V4's UIB and Mobile MQA blocks, in place) into the 1x1
    conv before it, and the number folded.

    gamma * (W x + b) = (gamma W) x + gamma b per output channel: ``conv_pwl`` (UIB, its BN
    folded first) or ``output`` (Mobile MQA) takes the product and the layer scale is removed.
    Besides saving a multiplication, the int8 graph then quantizes the block's output once,
    at its real range, instead of quantizing the projection's ~1e5 times larger range and then
    multiplying by gamma ~1e-5. A block without one is left as it is."""
    count = 0
    for block in model.modules():
        scale = getattr(block, "layer_scale", None)
        if not isinstance(block, (UniversalInvertedBottleneck, MobileMQA)) or scale is None:
            continue
        conv = block.conv_pwl if isinstance(block, UniversalInvertedBottleneck) else block.output
        with torch.no_grad():
            gamma = scale.weight.detach()
            conv.weight.mul_(gamma.view(-1, 1, 1, 1))
            if conv.bias is not None:
                conv.bias.mul_(gamma)
        block.layer_scale = None
        count += 1
    return count
