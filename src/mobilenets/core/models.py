"""MobileNetV1 and MobileNetV2 as nn.Modules, built from a resolved NetSpec.

One block class per paper figure, with named parts that read as the figure and become the
checkpoint keys (``blocks.3.conv_dw.weight``, ``blocks.3.bn1.running_var``):

- [`ConvBNAct`][mobilenets.core.models.ConvBNAct]: a full conv, BN, ReLU6 (the stem, and V2's last
  1x1 "head" conv).
- [`DepthwiseSeparable`][mobilenets.core.models.DepthwiseSeparable]: V1 Figure 3 (right): 3x3
  depthwise, BN, ReLU6, 1x1, BN, ReLU6.
- [`InvertedResidual`][mobilenets.core.models.InvertedResidual]: V2 Table 1 / Figure 3b: 1x1
  expansion with ReLU6, 3x3 depthwise with ReLU6, 1x1 linear projection, and a residual when stride
  is 1 and channels match.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.spec import (
    BlockSpec,
    LayerSpec,
    ModelConfig,
    NetSpec,
    pick_resolution,
    resolve,
)


class Conv2dSame(nn.Conv2d):
    """A conv with TensorFlow "SAME" padding: total padding max((ceil(n/s)-1)*s + k - n, 0),
    the odd pixel going to the bottom/right. At stride 2 on an even input that pads only the
    bottom/right, which symmetric padding cannot express; weights trained in TF/Keras need it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def make_conv(layer: LayerSpec, padding: str) -> nn.Conv2d:
    """The conv for one LayerSpec. Stride-1 convs with odd kernels pad the same either way, dilated
    ones too (dilation * (k - 1) / 2 each side keeps the size: atrous layers run at stride 1)."""
    same = padding == "same" and layer.stride > 1
    conv_class = Conv2dSame if same else nn.Conv2d
    return conv_class(
        layer.in_channels,
        layer.out_channels,
        layer.kernel,
        stride=layer.stride,
        padding=0 if same else layer.dilation * (layer.kernel // 2),
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias,
    )


def make_bn(layer: LayerSpec, config: ModelConfig) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(layer.out_channels, eps=config.bn_eps, momentum=config.bn_momentum)


class ConvBNAct(nn.Module):
    """Full conv, BN, ReLU6: the stem (3x3 s2) and V2's head (1x1 to 1280). ``activation`` is
    another class for the heads that use one (DeepLab's ReLU)."""

    def __init__(
        self, spec: BlockSpec, config: ModelConfig, activation: type[nn.Module] = nn.ReLU6
    ) -> None:
        super().__init__()
        (layer,) = spec.layers
        self.conv = make_conv(layer, config.padding)
        self.bn = make_bn(layer, config)
        self.act = activation(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """V1 Figure 3 (right): 3x3 depthwise, BN, ReLU6, then 1x1 pointwise, BN, ReLU6."""

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        depthwise, pointwise = spec.layers
        self.conv_dw = make_conv(depthwise, config.padding)
        self.bn1 = make_bn(depthwise, config)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_pw = make_conv(pointwise, config.padding)
        self.bn2 = make_bn(pointwise, config)
        self.act2 = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self.act2(self.bn2(self.conv_pw(x)))


class InvertedResidual(nn.Module):
    """V2 Table 1: expand 1x1 + ReLU6, depthwise 3x3 + ReLU6, project 1x1 (linear), residual.

    With expansion t == 1 (the first bottleneck) the expansion layer is absent: ``conv_pw``,
    ``bn1`` and ``act1`` are None, and the checkpoint has no keys for them.
    """

    def __init__(self, spec: BlockSpec, config: ModelConfig) -> None:
        super().__init__()
        *expand, depthwise, project = spec.layers
        self.conv_pw = self.bn1 = self.act1 = None
        if expand:
            self.conv_pw = make_conv(expand[0], config.padding)
            self.bn1 = make_bn(expand[0], config)
            self.act1 = nn.ReLU6(inplace=True)
        self.conv_dw = make_conv(depthwise, config.padding)
        self.bn2 = make_bn(depthwise, config)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pwl = make_conv(project, config.padding)
        self.bn3 = make_bn(project, config)
        self.use_residual = spec.residual

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The expansion output (the tensor SSDLite taps); the input itself when t == 1."""
        if self.conv_pw is None:
            return x
        return self.act1(self.bn1(self.conv_pw(x)))

    def project(self, expanded: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.bn2(self.conv_dw(expanded)))
        x = self.bn3(self.conv_pwl(x))
        return x + shortcut if self.use_residual else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.expand(x), x)


BLOCK_CLASSES = {
    "conv": ConvBNAct,
    "depthwise_separable": DepthwiseSeparable,
    "inverted_residual": InvertedResidual,
}


def init_weights(modules: Iterable[nn.Module]) -> None:
    """He init (fan out) for convs, BN as identity, N(0, 0.01) for linear layers; zero biases."""
    for module in modules:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


class MobileNet(nn.Module):
    """A MobileNet built from a ModelConfig; MobileNetV1 and MobileNetV2 fix the architecture.

    Structure: ``stem``, ``blocks`` (one entry per unrolled paper row: ``blocks.i`` is TF-slim's
    ``Conv2d_{i+1}`` for V1 and ``expanded_conv_{i}`` for V2), ``head`` (V2 only), global average
    pool, dropout, ``classifier`` (absent with ``num_classes=0``, where forward returns the
    pooled features). The model is fully convolutional; ``config.resolution`` is the nominal
    input size that the cost model and the weights' preprocessing use.
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
            module = BLOCK_CLASSES[block.kind](block, config)
            if block.name.startswith("blocks."):
                blocks.append(module)
            else:
                modules[block.name] = module
        self.stem = modules["stem"]
        self.blocks = nn.Sequential(*blocks)
        self.head = modules.get("head")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = self._make_classifier()

    def _make_classifier(self) -> nn.Module:
        if self.config.num_classes == 0:
            return nn.Identity()
        return nn.Linear(self.spec.num_features, self.config.num_classes)

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
        x = self.dropout(torch.flatten(self.pool(x), 1))
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


PARITY_ARGUMENTS = ("padding", "bn_eps", "bn_momentum")


def _config(arch: str, resolution, rho, parity: dict, fields: dict) -> ModelConfig:
    """Shared by the two constructors: resolution or rho, and the parity settings."""
    unknown = sorted(set(parity) - set(PARITY_ARGUMENTS))
    if unknown:
        raise MobileNetsError(
            f"unknown argument(s) {unknown} for {arch}; "
            f"allowed extras: {', '.join(PARITY_ARGUMENTS)}"
        )
    return ModelConfig(arch=arch, resolution=pick_resolution(resolution, rho), **fields, **parity)


def build_model(config: ModelConfig) -> MobileNet:
    """The model for a config, as the class a user would construct (MobileNetV1 or V2, and a
    MobileNet for the other registered families)."""
    kwargs = config.to_dict()
    arch = kwargs.pop("arch")
    if arch == "mobilenet_v1":
        kwargs.pop("expansion")
        return MobileNetV1(**kwargs)
    if arch == "mobilenet_v2":
        return MobileNetV2(**kwargs)
    return MobileNet(config)
