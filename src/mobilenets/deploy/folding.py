"""BN folding: each BatchNorm merged into the conv before it, for export and quantization.

The (conv, BN) pairs are found by the part names the blocks give them
([`FOLD_PAIRS`][mobilenets.deploy.folding.FOLD_PAIRS]), in classifiers, detectors and segmenters
alike: a transform of the same modules, not a parallel class tree.
"""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mobilenets.core.detector import ExtraLayer, PredictionHead
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import ConvBNAct, DepthwiseSeparable, InvertedResidual
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
    "SAME" padding is kept. ``model`` itself is not changed, not even switched to eval mode.
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
    return folded, count
