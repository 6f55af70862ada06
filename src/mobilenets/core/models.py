"""MobileNetV1, V2, V3 and V4 as nn.Modules, built from a resolved NetSpec.

[`MobileNet`][mobilenets.core.models.MobileNet] builds any registered family from its spec with the
block classes of ``blocks.py`` (one per paper figure); ``MobileNetV1``, ``MobileNetV2``,
``MobileNetV3Large``, ``MobileNetV3Small`` and ``MobileNetV4`` (one of its five models) fix the
architecture.
"""

from __future__ import annotations

import torch
from torch import nn

# the block classes, named here too: models are where users look them up
from mobilenets.core.blocks import BLOCK_CLASSES, PreLogits
from mobilenets.core.blocks import Conv2dSame as Conv2dSame
from mobilenets.core.blocks import ConvBNAct as ConvBNAct
from mobilenets.core.blocks import DepthwiseSeparable as DepthwiseSeparable
from mobilenets.core.blocks import InvertedResidual as InvertedResidual
from mobilenets.core.blocks import SqueezeExcite as SqueezeExcite
from mobilenets.core.blocks import init_weights as init_weights
from mobilenets.core.blocks import make_bn as make_bn
from mobilenets.core.blocks import make_conv as make_conv
from mobilenets.core.blocks_v4 import V4_BLOCK_CLASSES, PreLogitsBN
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import get_family
from mobilenets.core.spec import ModelConfig, NetSpec, pick_resolution, resolve


class MobileNet(nn.Module):
    """A MobileNet built from a ModelConfig; MobileNetV1, V2, V3Large and V3Small fix the
    architecture.

    Structure: ``stem``, ``blocks`` (one entry per unrolled paper row: ``blocks.i`` is TF-slim's
    ``Conv2d_{i+1}`` for V1 and ``expanded_conv_{i}`` for V2), ``head`` (V2 and V3), global average
    pool, ``pre_logits`` (V3), dropout, ``classifier`` (absent with ``num_classes=0``, where forward
    returns the pooled features, V3's pre-logits layer dropped too). The model is fully
    convolutional; ``config.resolution`` is the nominal input size that the cost model and the
    weights' preprocessing use.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._build(config)
        self._init_weights()

    def _build(self, config: ModelConfig) -> None:
        self.config = config
        self.spec: NetSpec = resolve(config)
        modules: dict[str, nn.Module] = {}
        blocks = []
        for block in self.spec.feature_blocks:
            module = {**BLOCK_CLASSES, **V4_BLOCK_CLASSES}[block.kind](block, config)
            if block.name.startswith("blocks."):
                blocks.append(module)
            else:
                modules[block.name] = module
        self.stem = modules["stem"]
        self.blocks = nn.Sequential(*blocks)
        self.head = modules.get("head")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pre_logits = self._make_pre_logits()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = self._make_classifier()

    def _make_pre_logits(self) -> nn.Module | None:
        block = self.spec.pre_logits
        if block is None:
            return None
        return PreLogitsBN(block, self.config) if block.layers[0].norm else PreLogits(block)

    def _make_classifier(self) -> nn.Module:
        if self.config.num_classes == 0:
            return nn.Identity()
        (layer,) = self.spec.blocks[-1].layers
        return nn.Linear(layer.in_channels, self.config.num_classes)

    def _init_weights(self) -> None:
        init_weights(self.modules())

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def alpha(self) -> float:
        return self.config.alpha

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def num_features(self) -> int:
        return self.spec.num_features

    @property
    def feature_info(self) -> list[dict]:
        """The named taps: name, module path, channels, stride (timm's feature_info shape)."""
        return [
            {"name": t.name, "module": t.module, "num_chs": t.channels, "reduction": t.stride}
            for t in self.spec.taps
        ]

    def feature_modules(self) -> list[nn.Module]:
        """The feature blocks' modules in spec order: stem, blocks, head (where built)."""
        return [self.stem, *self.blocks, *([self.head] if self.head is not None else [])]

    def keep_blocks(self, count: int) -> None:
        """Keep the first ``count`` feature blocks (stem, ``blocks.i``, head, in spec order) and
        drop the rest, with their tensors: a segmenter's backbone ends at its tap. The spec (and
        so ``forward_taps``) still describes the whole network."""
        built = len(self.feature_modules())
        if not isinstance(count, int) or not 1 <= count <= built:
            raise MobileNetsError(f"count must be an integer in [1, {built}], got {count!r}")
        if count < built and self.head is not None:
            self.head = None
        self.blocks = self.blocks[: count - 1]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (e.g. to fine-tune on another dataset); 0 removes it."""
        reference = next(self.parameters())
        self.config = self.config.replace(num_classes=num_classes)
        self.spec = resolve(self.config)
        if (self.pre_logits is None) != (self.spec.pre_logits is None):  # V3, to or from 0
            self.pre_logits = self._make_pre_logits()
            if self.pre_logits is not None:
                init_weights(self.pre_logits.modules())
                self.pre_logits.to(reference.device, reference.dtype)
        self.classifier = self._make_classifier().to(reference.device, reference.dtype)
        if isinstance(self.classifier, nn.Linear):
            nn.init.normal_(self.classifier.weight, 0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """A clear error for an input of the wrong rank or channel count (any size >= 1 runs)."""
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise MobileNetsError(
                f"{self.name} takes a (batch, {self.config.in_chans}, height, width) tensor, "
                f"got shape {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map: 1024 x 7 x 7 for V1 1.0/224, 1280 x 7 x 7 for V2 (C5; C3 for
        the small-input variant, whose taps are named by their stride as well)."""
        self.check_input(x)
        x = self.blocks(self.stem(x))
        return x if self.head is None else self.head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, V3's pre-logits layer, dropout and the classifier; ``pre_logits`` stops before
        the classifier (timm's convention: 1280 features for V3-Large)."""
        x = torch.flatten(self.pool(x), 1)
        if self.pre_logits is not None:
            x = self.pre_logits(x)
        x = self.dropout(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_taps(
        self, x: torch.Tensor, names: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """The named feature maps (all of ``feature_info`` by default), running only as far as
        the deepest one requested. ``names`` may also be a single name."""
        self.check_input(x)
        if names is None:
            names = [t.name for t in self.spec.taps]
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise MobileNetsError(
                f"names lists no feature tap; {self.name} has "
                f"{', '.join(t.name for t in self.spec.taps)}"
            )
        wanted = [self.spec.tap(name) for name in names]
        taps: dict[str, torch.Tensor] = {}
        last = max(tap.block for tap in wanted)
        modules = self.feature_modules()
        if last >= len(modules):
            dropped = [tap.name for tap in wanted if tap.block >= len(modules)]
            raise MobileNetsError(
                f"feature taps {dropped} of {self.name} come after the blocks this backbone keeps "
                f"(keep_blocks({len(modules)}))"
            )
        for index, module in enumerate(modules[: last + 1]):
            expansion = [t for t in wanted if t.block == index and t.name.endswith("_expansion")]
            if expansion:
                expanded = module.expand(x)
                taps[expansion[0].name] = expanded
                x = module.project(expanded, x)
            else:
                x = module(x)
            for tap in wanted:
                if tap.block == index and not tap.name.endswith("_expansion"):
                    taps[tap.name] = x
        return {name: taps[name] for name in names}


class MobileNetV1(MobileNet):
    """MobileNetV1 (Howard et al. 2017, Table 1) with width multiplier alpha.

    ``small_input=True`` is the variant for 28-32 px images, ``output_stride=16`` or ``8`` the
    atrous one of DeepLab (see ``ModelConfig``). ``padding``, ``bn_eps`` and ``bn_momentum`` may
    be passed too (numerical-parity settings).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float | None = None,
        resolution: int | None = None,
        rho: float | None = None,
        small_input: bool = False,
        output_stride: int | None = None,
        **parity,
    ) -> None:
        fields = dict(
            alpha=alpha,
            num_classes=num_classes,
            in_chans=in_chans,
            dropout=dropout,
            small_input=small_input,
            output_stride=output_stride,
        )
        super().__init__(_config("mobilenet_v1", resolution, rho, parity, fields))


class MobileNetV2(MobileNet):
    """MobileNetV2 (Sandler et al. 2018, Table 2) with width multiplier alpha and expansion t.

    ``small_input=True`` is the variant for 28-32 px images, ``output_stride=16`` or ``8`` the
    atrous one of DeepLab (see ``ModelConfig``). ``padding``, ``bn_eps`` and ``bn_momentum`` may
    be passed too (numerical-parity settings).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float | None = None,
        expansion: int = 6,
        resolution: int | None = None,
        rho: float | None = None,
        small_input: bool = False,
        output_stride: int | None = None,
        **parity,
    ) -> None:
        fields = dict(
            alpha=alpha,
            num_classes=num_classes,
            in_chans=in_chans,
            dropout=dropout,
            expansion=expansion,
            small_input=small_input,
            output_stride=output_stride,
        )
        super().__init__(_config("mobilenet_v2", resolution, rho, parity, fields))


class _MobileNetV3(MobileNet):
    ARCH = ""

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float | None = None,
        resolution: int | None = None,
        rho: float | None = None,
        minimalistic: bool = False,
        reduced_tail: bool = False,
        width_rule: str | None = None,
        small_input: bool = False,
        output_stride: int | None = None,
        **parity,
    ) -> None:
        fields = dict(
            alpha=alpha,
            num_classes=num_classes,
            in_chans=in_chans,
            dropout=dropout,
            minimalistic=minimalistic,
            reduced_tail=reduced_tail,
            width_rule=width_rule,
            small_input=small_input,
            output_stride=output_stride,
        )
        super().__init__(_config(self.ARCH, resolution, rho, parity, fields))


class MobileNetV3Large(_MobileNetV3):
    """MobileNetV3-Large (Howard et al. 2019, Table 1) with width multiplier alpha.

    ``minimalistic`` (no SE, ReLU, 3x3 depthwise), ``reduced_tail`` (the last stage at half
    width), ``width_rule`` ("tf" or "torchvision": how alpha scales the expansions, see
    ``families.V3_WIDTH_RULES``), and ``small_input``, ``output_stride`` and the parity settings
    as for V1 and V2.
    """

    ARCH = "mobilenet_v3_large"


class MobileNetV3Small(_MobileNetV3):
    """MobileNetV3-Small (Howard et al. 2019, Table 2); the arguments of ``MobileNetV3Large``."""

    ARCH = "mobilenet_v3_small"


# the five MobileNetV4 models (Qin et al. 2024, Table 6), by the name MobileNetV4 takes
V4_MODELS = {
    "conv_small": "mobilenet_v4_conv_small",
    "conv_medium": "mobilenet_v4_conv_medium",
    "conv_large": "mobilenet_v4_conv_large",
    "hybrid_medium": "mobilenet_v4_hybrid_medium",
    "hybrid_large": "mobilenet_v4_hybrid_large",
}


class MobileNetV4(MobileNet):
    """MobileNetV4 (Qin et al. 2024): ``model`` one of conv_small, conv_medium, conv_large,
    hybrid_medium, hybrid_large, at its native resolution (224, 256, 384) unless ``resolution``
    or ``rho`` is given, with width multiplier alpha. ``small_input``, ``output_stride`` (16 or 8;
    the hybrids 16 only) and the parity settings as for the other families."""

    def __init__(
        self,
        model: str = "conv_small",
        alpha: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float | None = None,
        resolution: int | None = None,
        rho: float | None = None,
        small_input: bool = False,
        output_stride: int | None = None,
        **parity,
    ) -> None:
        if model not in V4_MODELS:
            raise MobileNetsError(f"model must be one of {', '.join(V4_MODELS)}, got {model!r}")
        fields = dict(
            alpha=alpha,
            num_classes=num_classes,
            in_chans=in_chans,
            dropout=dropout,
            small_input=small_input,
            output_stride=output_stride,
        )
        super().__init__(_config(V4_MODELS[model], resolution, rho, parity, fields))


PARITY_ARGUMENTS = ("padding", "bn_eps", "bn_momentum")


def _config(arch: str, resolution, rho, parity: dict, fields: dict) -> ModelConfig:
    """Shared by the two constructors: resolution or rho, and the parity settings."""
    unknown = sorted(set(parity) - set(PARITY_ARGUMENTS))
    if unknown:
        raise MobileNetsError(
            f"unknown argument(s) {unknown} for {arch}; "
            f"allowed extras: {', '.join(PARITY_ARGUMENTS)}"
        )
    if resolution is None and rho is None:
        resolution = get_family(arch).resolution
    return ModelConfig(arch=arch, resolution=pick_resolution(resolution, rho), **fields, **parity)


def build_model(config: ModelConfig) -> MobileNet:
    """The model for a config, as the class a user would construct (MobileNetV1, V2, V3Large or
    V3Small, and a MobileNet for the other registered families)."""
    classes = {
        "mobilenet_v1": MobileNetV1,
        "mobilenet_v2": MobileNetV2,
        "mobilenet_v3_large": MobileNetV3Large,
        "mobilenet_v3_small": MobileNetV3Small,
    }
    classes.update(dict.fromkeys(V4_MODELS.values(), MobileNetV4))
    if config.arch not in classes:
        return MobileNet(config)
    # the user's class, built from the whole config (its __init__ would take the fields one by one)
    model = classes[config.arch].__new__(classes[config.arch])
    MobileNet.__init__(model, config)
    return model
