"""Mobile DeepLabv3 and V3's LR-ASPP as nn.Modules, built from a resolved SegmentationSpec.

Module paths are the spec's names and the checkpoint keys:

- ``backbone``: the classification [`MobileNet`][mobilenets.core.models.MobileNet] itself at the
  config's output stride (dilated 3x3 convs), without its classifier and without the blocks after
  its family's ``deeplab_features`` tap (for V2, its last 1x1 conv), so a classification
  checkpoint's tensors copy in under the same names.
- ``head.image_pool``, ``head.aspp0`` (1x1), ``head.aspp1..3`` (3x3 atrous, with ``aspp=True``),
  ``head.project``: each a [`HeadConv`][mobilenets.core.segmenter.HeadConv], conv, BN, ReLU.
- ``classifier``: the 1x1 conv with bias to the classes; ``aux`` the optional training head.
- LR-ASPP ([`LRASPP`][mobilenets.core.segmenter.LRASPP]): ``head.branch`` (conv, BN, ReLU) and
  ``head.gate.conv`` (the global branch's 1x1 conv), ``classifier`` on the gated map upsampled to
  stride 8, and ``low_classifier`` on the stride-8 features.

``forward(images)`` returns logits ``[N, num_classes, H, W]`` at the input's size, any size.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import ConvBNAct, build_model, init_weights, make_bn, make_conv
from mobilenets.core.segmentation_spec import (
    SegmentationConfig,
    SegmentationSpec,
    resolve_segmentation,
)
from mobilenets.core.spec import BlockSpec, ModelConfig
from mobilenets.core.weights import (
    load_saved,
    saved_config,
)


class HeadConv(ConvBNAct):
    """A DeepLabv3 head conv: conv, BN, ReLU (TF DeepLab's head uses ReLU, not ReLU6)."""

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__(spec, config, activation=nn.ReLU)


class DeepLabHead(nn.Module):
    """The DeepLabv3 head without its classifier: the image-pooling branch, the 1x1 branch, the
    atrous branches of ASPP when configured, concatenated and projected to 256 channels."""

    def __init__(self, spec: SegmentationSpec, config: ModelConfig) -> None:
        super().__init__()
        blocks = {block.name.removeprefix("head."): block for block in spec.head_blocks}
        self.image_pool = HeadConv(blocks["image_pool"], config)
        self.branch_names = sorted(
            (name for name in blocks if name.startswith("aspp")),
            key=lambda name: int(name.removeprefix("aspp")),
        )
        for name in self.branch_names:
            self.add_module(name, HeadConv(blocks[name], config))
        self.project = HeadConv(blocks["project"], config)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # The pooled branch is 1x1: upsampling it bilinearly to the map is a broadcast.
        pooled = self.image_pool(features.mean((2, 3), keepdim=True))
        branches = [pooled.expand(-1, -1, *features.shape[-2:])]
        branches += [getattr(self, name)(features) for name in self.branch_names]
        return self.project(torch.cat(branches, dim=1))


class AuxHead(nn.Module):
    """The training-time head on the stride-8 features: 3x3 conv, BN, ReLU, 1x1 to classes."""

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        conv, classifier = spec.layers
        self.conv = make_conv(conv, config.padding)
        self.bn = make_bn(conv, config)
        self.act = nn.ReLU(inplace=True)
        self.classifier = make_conv(classifier, config.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.act(self.bn(self.conv(x))))


class Segmenter(nn.Module):
    """What every segmentation head shares: the config, its resolved spec, the backbone at the
    config's output stride ending at its ``deeplab_features`` tap, and the input check.

    Takes any input size (the logits are upsampled to it); ``config.resolution`` is the nominal
    size the cost is given at (513, TF DeepLab's PASCAL crop).
    """

    head_name = ""  # the SegmentationConfig.head a subclass builds

    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(config, SegmentationConfig):
            raise MobileNetsError(f"{name} takes a SegmentationConfig, got {config!r}")
        if config.head != self.head_name:
            raise MobileNetsError(
                f"{name} builds head={self.head_name!r}, got a config with head={config.head!r} "
                f"(build_segmenter picks the class)"
            )
        self.config = config
        self.spec: SegmentationSpec = resolve_segmentation(config)
        self.backbone = build_model(config.backbone)
        # The backbone ends at its deeplab_features tap: for MNet V2* the last inverted residual
        # (TF layer_18), so V2's 1x1 conv to 1280 goes.
        self.backbone.keep_blocks(len(self.spec.backbone_blocks))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_input(self, images: torch.Tensor) -> None:
        channels = self.config.backbone.in_chans
        if images.dim() != 4 or images.shape[1] != channels:
            raise MobileNetsError(
                f"{self.name} takes a (batch, {channels}, height, width) tensor, got shape "
                f"{tuple(images.shape)}"
            )

    def backbone_features(
        self, images: torch.Tensor, with_stride8: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The map the head reads, and with ``with_stride8`` the stride-8 map (the
        ``deeplab_stride8`` tap's block), else None."""
        self.check_input(images)
        x, stride8 = images, None
        # The modules in spec order (the stem is block 0), as keep_blocks left them.
        for index, module in enumerate(self.backbone.feature_modules()):
            x = module(x)
            if with_stride8 and index == self.spec.aux_block:
                stride8 = x
        return x, stride8


class DeepLabV3(Segmenter):
    """Mobile DeepLabv3 (Sandler et al. 2018, section 6.3) on any backbone family.

    With ``config.aux``, ``forward(images, with_aux=True)`` also returns the auxiliary head's
    logits.
    """

    head_name = "deeplabv3"

    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__(config)
        parity = config.backbone
        self.head = DeepLabHead(self.spec, parity)
        self.dropout = nn.Dropout(config.dropout)
        (classifier,) = next(b for b in self.spec.blocks if b.kind == "classifier").layers
        self.classifier = make_conv(classifier, parity.padding)
        self.aux = AuxHead(self.spec.aux, parity) if self.spec.aux is not None else None
        self._init_weights()

    def _init_weights(self) -> None:
        """The backbone keeps MobileNet's initialization; the head gets He init, and the
        classifiers N(0, 0.01) with zero bias, so training starts from near-equal class scores."""
        heads = [self.head, self.classifier, *([self.aux] if self.aux is not None else [])]
        init_weights(module for head in heads for module in head.modules())
        classifiers = [self.classifier, *([self.aux.classifier] if self.aux is not None else [])]
        for conv in classifiers:
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The map the head reads, and the stride-8 map the auxiliary head reads (None without
        it)."""
        return self.backbone_features(images, with_stride8=self.aux is not None)

    def forward(
        self, images: torch.Tensor, with_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features, aux_features = self.forward_features(images)
        logits = self.classifier(self.dropout(self.head(features)))
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if not with_aux:
            return logits
        if self.aux is None:
            raise MobileNetsError(f"{self.name} has no auxiliary head; build it with aux=True")
        aux = F.interpolate(
            self.aux(aux_features), size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return logits, aux


class LRASPPHead(nn.Module):
    """V3 Figure 10 before its classifiers: a 1x1 branch (conv, BN, ReLU) on the last features,
    multiplied channel by channel by the global branch (average pool, 1x1 conv, sigmoid)."""

    def __init__(self, spec: SegmentationSpec, config: ModelConfig) -> None:
        super().__init__()
        blocks = {block.name.removeprefix("head."): block for block in spec.head_blocks}
        self.branch = ConvBNAct(blocks["branch"], config, activation=nn.ReLU)
        (gate,) = blocks["gate"].layers
        self.gate = nn.Sequential()  # a container, so that the key reads head.gate.conv.weight
        self.gate.add_module("conv", make_conv(gate, config.padding))
        self.gate.add_module("act", nn.Sigmoid())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # torchvision's LRASPPHead pools the whole map; the paper's 49x49 pool with stride
        # (16, 20) at 1024x2048 gives a 1x4 map, a difference of a few positions of one 1x1 conv.
        gate = self.gate(features.mean((2, 3), keepdim=True))
        return self.branch(features) * gate


class LRASPP(Segmenter):
    """Lite R-ASPP (Howard et al. 2019, section 6.4, Figure 10) on any backbone family: the gated
    branch upsampled to the stride-8 features, a 1x1 classifier on each, added, and the sum
    upsampled to the input size."""

    head_name = "lraspp"

    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__(config)
        parity = config.backbone
        self.head = LRASPPHead(self.spec, parity)
        layers = {block.name: block.layers[0] for block in self.spec.head_blocks}
        self.classifier = make_conv(layers["classifier"], parity.padding)
        self.low_classifier = make_conv(layers["low_classifier"], parity.padding)
        self.aux = None  # no auxiliary head (SegmentationConfig refuses aux for LR-ASPP)
        init_weights(self.head.modules())
        for conv in (self.classifier, self.low_classifier):
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The map the head reads and the stride-8 map of the low-level skip."""
        return self.backbone_features(images, with_stride8=True)

    def forward(self, images: torch.Tensor, with_aux: bool = False) -> torch.Tensor:
        if with_aux:
            raise MobileNetsError(f"{self.name} has no auxiliary head (LR-ASPP has none)")
        features, low = self.forward_features(images)
        gated = F.interpolate(
            self.head(features), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        logits = self.low_classifier(low) + self.classifier(gated)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


SEGMENTERS: dict[str, type[Segmenter]] = {"deeplabv3": DeepLabV3, "lraspp": LRASPP}


def build_segmenter(config: SegmentationConfig) -> Segmenter:
    """The segmenter of ``config``: its head's class (DeepLabV3 or LRASPP)."""
    if not isinstance(config, SegmentationConfig):
        raise MobileNetsError(f"build_segmenter takes a SegmentationConfig, got {config!r}")
    return SEGMENTERS[config.head](config)


# --- Reading a saved segmenter ----------------------------------------------------------------


def saved_segmentation_config(path: str | os.PathLike) -> SegmentationConfig | None:
    """The segmentation config recorded in a safetensors file that save_weights wrote from a
    segmenter; None for other files."""
    return saved_config(path, SegmentationConfig)


def load_segmenter(path: str | os.PathLike) -> Segmenter:
    """Rebuild a segmenter from a safetensors file that save_weights wrote: config and weights."""
    return load_saved(
        path,
        SegmentationConfig,
        build_segmenter,
        record="segmentation",
        factory="create_segmenter",
        what="segmenter",
    )
