"""Where each of our tensors lives in torchvision, timm and Keras: key maps generated from the spec.

[`key_map`][mobilenets.zoo.keymaps.key_map] walks the resolved spec of a config (one
[`Slot`][mobilenets.zoo.keymaps.Slot] per conv, SE conv, pre-logits layer and classifier) and names
the foreign tensor each of ours is read from, with the layout change it needs (the layouts are
listed in one place, [`mobilenets.zoo.convert.LAYOUTS`][mobilenets.zoo.convert.LAYOUTS]). Every
variant the spec can express gets its map without a hand-written table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import V1_TABLE, V2_TABLE, V4_ROWS, Bneck, get_family
from mobilenets.core.models import build_model
from mobilenets.core.spec import BlockSpec, LayerSpec, ModelConfig, resolve

SOURCES = ("torchvision", "timm", "keras")


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise MobileNetsError(f"weights source must be one of {', '.join(SOURCES)}, got {source!r}")


def is_v3(arch: str) -> bool:
    """A family of ``Bneck`` rows (MobileNetV3 Large and Small): the families with width rules."""
    return bool(get_family(arch).width_rules)


def is_v4(arch: str) -> bool:
    """A family of V4 rows (FusedIB, UIB, MQA): the five MobileNetV4 models."""
    return any(isinstance(row, V4_ROWS) for row in get_family(arch).table)


@dataclass(frozen=True)
class Entry:
    """One tensor of ours and where it comes from."""

    ours: str
    theirs: str
    layout: str = "same"


@dataclass(frozen=True)
class Slot:
    """A layer of ours with a weight (conv, SE conv, pre-logits, classifier), with what a foreign
    naming needs to know about it."""

    block: BlockSpec
    layer: LayerSpec
    role: str  # stem, dw, pw, pwl, se_reduce, se_expand, head, pre_logits, classifier
    index: int  # block index (0-based), -1 for stem, head, pre-logits and classifier
    stage: int  # timm's stage (a paper row for V2; V1 and V3 start one as timm's tables do)
    repeat: int  # position inside the stage


ROLE_OF_LAYER = {
    "conv_dw": "dw",
    "conv_pw": "pw",
    "conv_pwl": "pwl",
    "se.conv_reduce": "se_reduce",
    "se.conv_expand": "se_expand",
}
OUR_BN = {
    ("depthwise_separable", "dw"): "bn1",
    ("depthwise_separable", "pw"): "bn2",
    ("inverted_residual", "pw"): "bn1",
    ("inverted_residual", "dw"): "bn2",
    ("inverted_residual", "pwl"): "bn3",
}
HAS_BIAS = ("se_reduce", "se_expand", "pre_logits", "classifier")  # no BN after these


def _stages(config: ModelConfig) -> list[tuple[int, int]]:
    """(stage, repeat) of every block, from the paper table (not from the resolved strides, so
    the small-input and reduced-tail variants key like the standard net)."""
    positions = []
    if is_v4(config.arch):
        # timm's V4 tables start a stage at each stride-2 row (the stem is no stage; the 960
        # head conv is one more); the body rows lie between the stem and the head conv.
        stage, repeat = -1, 0
        for row in get_family(config.arch).table[1:-2]:
            for first in [True] + [False] * (getattr(row, "n", 1) - 1):
                if first and row.s == 2:
                    stage, repeat = stage + 1, 0
                positions.append((stage, repeat))
                repeat += 1
        return positions
    if config.arch == "mobilenet_v2":
        for stage, row in enumerate(V2_TABLE[1:-1]):
            positions += [(stage, repeat) for repeat in range(row.n)]
        return positions
    if is_v3(config.arch):
        # timm's V3 tables start a stage at each stride-2 row and where the width changes
        # (Large: 16 | 24 24 | 40 x3 | 80 x4 | 112 x2 | 160 x3; the head conv is one more).
        rows = [row for row in get_family(config.arch).table if isinstance(row, Bneck)]
        stage, repeat, width = -1, 0, None
        for row in rows:
            if row.s == 2 or row.c != width:
                stage, repeat, width = stage + 1, 0, row.c
            positions.append((stage, repeat))
            repeat += 1
        return positions
    stage, repeat = -1, 0
    for row in V1_TABLE[1:]:
        for _ in range(row.n):
            if row.s == 2 or stage < 0:  # timm's V1 stages begin at each stride-2 row
                stage, repeat = stage + 1, 0
            positions.append((stage, repeat))
            repeat += 1
    return positions


def _role(block: BlockSpec, layer: LayerSpec) -> str:
    """``blocks.3.se.conv_reduce`` in ``blocks.3`` -> ``se_reduce``."""
    return ROLE_OF_LAYER[layer.name.removeprefix(f"{block.name}.")]


def slots(config: ModelConfig) -> list[Slot]:
    """Every layer with a weight of the resolved spec, in order, with naming facts."""
    positions = iter(_stages(config))
    result = []
    for block in resolve(config).blocks:
        if block.name.startswith("blocks."):
            index = int(block.name.split(".")[1])
            stage, repeat = next(positions)
            for layer in block.layers:
                result.append(Slot(block, layer, _role(block, layer), index, stage, repeat))
        else:
            (layer,) = block.layers
            result.append(Slot(block, layer, block.name, -1, -1, -1))
    return result


def _our_bn(slot: Slot) -> str:
    if slot.role in ("stem", "head"):
        return f"{slot.block.name}.bn"
    return f"{slot.block.name}.{OUR_BN[slot.block.kind, slot.role]}"


def _last_stage(config: ModelConfig) -> int:
    return _stages(config)[-1][0]


# --- torchvision --------------------------------------------------------------------------------


def _torchvision_names(slot: Slot, config: ModelConfig) -> tuple[str, str | None]:
    """torchvision's mobilenet_v2 and mobilenet_v3_*: features.0 the stem, features.1..N the
    blocks, features.N+1 the head conv; V3's classifier is [Linear (pre-logits), Hardswish,
    Dropout, Linear]."""
    last = len(_stages(config)) + 1
    if slot.role == "stem":
        return "features.0.0", "features.0.1"
    if slot.role == "head":
        return f"features.{last}.0", f"features.{last}.1"
    if slot.role == "pre_logits":
        return "classifier.0", None
    if slot.role == "classifier":
        return ("classifier.3" if is_v3(config.arch) else "classifier.1"), None
    if is_v3(config.arch):
        # InvertedResidual.block: [expand], depthwise, [SqueezeExcitation fc1/fc2], project.
        # SE's two convs are one module of the block: its index is conv_reduce's
        parts = [_role(slot.block, layer) for layer in slot.block.layers]
        parts = [part for part in parts if part != "se_expand"]
        part = parts.index("se_reduce" if slot.role == "se_expand" else slot.role)
        prefix = f"features.{slot.index + 1}.block.{part}"
        if slot.role in ("se_reduce", "se_expand"):
            return f"{prefix}.{'fc1' if slot.role == 'se_reduce' else 'fc2'}", None
        return f"{prefix}.0", f"{prefix}.1"
    prefix = f"features.{slot.index + 1}.conv"
    if slot.block.expansion == 1:  # [dw conv+bn], pwl conv, bn
        return {"dw": (f"{prefix}.0.0", f"{prefix}.0.1"), "pwl": (f"{prefix}.1", f"{prefix}.2")}[
            slot.role
        ]
    return {
        "pw": (f"{prefix}.0.0", f"{prefix}.0.1"),
        "dw": (f"{prefix}.1.0", f"{prefix}.1.1"),
        "pwl": (f"{prefix}.2", f"{prefix}.3"),
    }[slot.role]


# --- timm ---------------------------------------------------------------------------------------


def _timm_names(slot: Slot, config: ModelConfig) -> tuple[str, str | None]:
    """timm's efficientnet-builder MobileNets: conv_stem/bn1, blocks.STAGE.I, conv_head/bn2. In
    V3 the head conv is a last stage of its own (blocks.N.0.conv/bn1) and conv_head (a 1x1 conv
    with bias) is the pre-logits layer."""
    if slot.role == "stem":
        return "conv_stem", "bn1"
    if slot.role == "head":
        if is_v3(config.arch):
            return (
                f"blocks.{_last_stage(config) + 1}.0.conv",
                f"blocks.{_last_stage(config) + 1}.0.bn1",
            )
        return "conv_head", "bn2"
    if slot.role == "pre_logits":
        return "conv_head", None
    if slot.role == "classifier":
        return "classifier", None
    prefix = f"blocks.{slot.stage}.{slot.repeat}"
    if slot.role in ("se_reduce", "se_expand"):
        return f"{prefix}.se.{'conv_reduce' if slot.role == 'se_reduce' else 'conv_expand'}", None
    if slot.block.kind == "depthwise_separable" or slot.block.expansion == 1:
        # timm's DepthwiseSeparableConv: conv_dw/bn1 then conv_pw/bn2 (V2's and V3's first block).
        names = {"dw": ("conv_dw", "bn1"), "pw": ("conv_pw", "bn2"), "pwl": ("conv_pw", "bn2")}
    else:
        names = {"pw": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"), "pwl": ("conv_pwl", "bn3")}
    conv, bn = names[slot.role]
    return f"{prefix}.{conv}", f"{prefix}.{bn}"


# --- Keras --------------------------------------------------------------------------------------


def _keras_names(slot: Slot, config: ModelConfig) -> tuple[str, str | None]:
    """Keras applications layer names (mobilenet.py, mobilenet_v2.py, mobilenet_v3.py)."""
    if config.arch == "mobilenet_v1":
        if slot.role == "stem":
            return "conv1", "conv1_bn"
        if slot.role == "classifier":
            return "conv_preds", None
        layer = f"conv_{slot.role}_{slot.index + 1}"
        return layer, f"{layer}_bn"
    if is_v3(config.arch):
        return _keras_v3_names(slot)
    if slot.role == "stem":
        return "Conv1", "bn_Conv1"
    if slot.role == "head":
        return "Conv_1", "Conv_1_bn"
    if slot.role == "classifier":
        return "predictions", None
    prefix = "expanded_conv" if slot.index == 0 else f"block_{slot.index}"
    suffix = {"pw": "expand", "dw": "depthwise", "pwl": "project"}[slot.role]
    return f"{prefix}_{suffix}", f"{prefix}_{suffix}_BN"


KERAS_V3_LAYERS = {
    "stem": "conv",
    "head": "conv_1",
    "pre_logits": "conv_2",
    "classifier": "logits",
    "pw": "expand",
    "dw": "depthwise",
    "pwl": "project",
    "se_reduce": "squeeze_excite_conv",
    "se_expand": "squeeze_excite_conv_1",
}


def _keras_v3_names(slot: Slot) -> tuple[str, str | None]:
    """Keras 3's mobilenet_v3.py: conv, expanded_conv[_I]_{expand,depthwise,project}[_bn],
    ..._squeeze_excite_conv[_1], conv_1 (head), conv_2 (pre-logits), logits."""
    layer = KERAS_V3_LAYERS[slot.role]
    if slot.index >= 0:
        layer = (
            f"expanded_conv_{layer}" if slot.index == 0 else f"expanded_conv_{slot.index}_{layer}"
        )
    return layer, (None if slot.role in HAS_BIAS else f"{layer}_bn")


# Keras 2 (tf.keras, which wrote the official V3 files) named the same layers with "/":
# Conv, Conv/BatchNorm, expanded_conv_3/squeeze_excite/Conv_1, Conv_2, Logits. Keras 3 forbids
# "/" in names and renamed them; a Keras 2 name is read as its Keras 3 name.
KERAS2_V3_RENAMES = (
    (re.compile(r"^Conv(_\d)?/BatchNorm/"), lambda m: f"conv{m.group(1) or ''}_bn/"),
    (re.compile(r"^Conv(_\d)?/"), lambda m: f"conv{m.group(1) or ''}/"),
    (re.compile(r"^Logits/"), lambda m: "logits/"),
    (
        re.compile(r"^(expanded_conv(?:_\d+)?)/(expand|depthwise|project)/BatchNorm/"),
        lambda m: f"{m.group(1)}_{m.group(2)}_bn/",
    ),
    (
        re.compile(r"^(expanded_conv(?:_\d+)?)/(expand|depthwise|project)/"),
        lambda m: f"{m.group(1)}_{m.group(2)}/",
    ),
    (
        re.compile(r"^(expanded_conv(?:_\d+)?)/squeeze_excite/Conv(_1)?/"),
        lambda m: f"{m.group(1)}_squeeze_excite_conv{m.group(2) or ''}/",
    ),
)


def keras3_v3_name(key: str) -> str:
    """A Keras 2 MobileNetV3 weight key as Keras 3 names it (other keys unchanged)."""
    for pattern, rename in KERAS2_V3_RENAMES:
        match = pattern.match(key)
        if match:
            return rename(match) + key[match.end() :]
    return key


NAMERS = {"torchvision": _torchvision_names, "timm": _timm_names, "keras": _keras_names}


def _torch_bn(ours: str, theirs: str) -> list[Entry]:
    names = ("weight", "bias", "running_mean", "running_var")
    return [Entry(f"{ours}.{name}", f"{theirs}.{name}") for name in names]


def _keras_bn(ours: str, theirs: str) -> list[Entry]:
    names = (
        ("weight", "gamma"),
        ("bias", "beta"),
        ("running_mean", "moving_mean"),
        ("running_var", "moving_variance"),
    )
    return [Entry(f"{ours}.{a}", f"{theirs}/{b}") for a, b in names]


def _layout(slot: Slot, config: ModelConfig, source: str) -> str:
    """The layout change of a slot's weight (see convert.LAYOUTS)."""
    linear = slot.role in ("pre_logits", "classifier")
    if source == "keras":
        if slot.role == "dw":
            return "depthwise_hwc1"
        if linear:
            # V1 and V3 end in 1x1 convs (conv_preds; conv_2 and logits), V2 in a Dense layer.
            return "dense" if config.arch == "mobilenet_v2" else "conv1x1_linear"
        return "conv_hwio"
    if source == "timm" and slot.role == "pre_logits":
        return "conv1x1_oihw_linear"  # timm's V3 conv_head is a 1x1 conv with bias
    return "same"


# --- MobileNetV4 (timm's mobilenetv4_*, the only published V4 weights) --------------------------

# Our module of each V4 block kind (core/blocks_v4.py) -> timm's (timm _efficientnet_blocks.py:
# ConvBnAct, EdgeResidual, UniversalInvertedResidual, MobileAttention with MultiQueryAttention2d).
V4_TIMM_MODULES = {
    "conv": {"conv": "conv", "bn": "bn1"},
    "fused_ib": {"conv_exp": "conv_exp", "bn1": "bn1", "conv_pwl": "conv_pwl", "bn2": "bn2"},
    "universal_ib": {
        "conv_dw_start": "dw_start.conv",
        "bn_start": "dw_start.bn",
        "conv_pw": "pw_exp.conv",
        "bn1": "pw_exp.bn",
        "conv_dw": "dw_mid.conv",
        "bn2": "dw_mid.bn",
        "conv_pwl": "pw_proj.conv",
        "bn3": "pw_proj.bn",
        "layer_scale": "layer_scale",
    },
    "mobile_mqa": {
        "norm": "norm",
        "query": "attn.query.proj",
        "key_down": "attn.key.down_conv",
        "key_norm": "attn.key.norm",
        "key": "attn.key.proj",
        "value_down": "attn.value.down_conv",
        "value_norm": "attn.value.norm",
        "value": "attn.value.proj",
        "output": "attn.output.proj",
        "layer_scale": "layer_scale",
    },
}
# Outside the blocks; timm's V4 pre-logits layer is a bias-free 1x1 conv (conv_head) + norm_head.
V4_TIMM_TOP = {
    "stem.conv": "conv_stem",
    "stem.bn": "bn1",
    "pre_logits.fc": "conv_head",
    "pre_logits.bn": "norm_head",
    "classifier": "classifier",
}


def _v4_timm_name(ours: str, kinds: dict[str, str], config: ModelConfig) -> str:
    """``blocks.7.bn_start.weight`` -> ``blocks.2.1.dw_start.bn.weight``."""
    module, _, tensor = ours.rpartition(".")
    tensor = "gamma" if module.endswith("layer_scale") else tensor  # timm's LayerScale2d
    if module in V4_TIMM_TOP:
        return f"{V4_TIMM_TOP[module]}.{tensor}"
    if module.startswith("head."):  # the 960 conv: a last stage of its own, as in V3
        part = {"conv": "conv", "bn": "bn1"}[module.removeprefix("head.")]
        return f"blocks.{_last_stage(config) + 1}.0.{part}.{tensor}"
    _, index, part = module.split(".", 2)
    stage, repeat = _stages(config)[int(index)]
    theirs = V4_TIMM_MODULES[kinds[f"blocks.{index}"]][part]
    return f"blocks.{stage}.{repeat}.{theirs}.{tensor}"


def _v4_key_map(config: ModelConfig) -> list[Entry]:
    """The V4 map, read off our module names (the built model's, on the meta device: no
    memory), since its BN, layer-scale and K/V reduction modules have no layer of their own in
    the spec."""
    kinds = {block.name: block.kind for block in resolve(config).blocks}
    with torch.device("meta"):
        ours = [key for key in build_model(config).state_dict() if "num_batches_tracked" not in key]
    return [
        Entry(
            key,
            _v4_timm_name(key, kinds, config),
            "conv1x1_oihw_linear" if key == "pre_logits.fc.weight" else "same",
        )
        for key in ours
    ]


def key_map(config: ModelConfig, source: str) -> list[Entry]:
    """Every tensor of the model for ``config`` and the foreign key it is read from."""
    check_source(source)
    if is_v4(config.arch):
        if source != "timm":
            raise MobileNetsError(
                f"{source} has no {config.arch}; MobileNetV4 weights are published by timm only"
            )
        return _v4_key_map(config)
    if source == "torchvision" and config.arch == "mobilenet_v1":
        raise MobileNetsError(
            f"torchvision has no {config.arch}; it ships mobilenet_v2 and mobilenet_v3 only"
        )
    separator = "/" if source == "keras" else "."
    kernel = "kernel" if source == "keras" else "weight"
    entries = []
    for slot in slots(config):
        conv, bn = NAMERS[source](slot, config)
        name = slot.layer.name
        entries.append(
            Entry(f"{name}.weight", f"{conv}{separator}{kernel}", _layout(slot, config, source))
        )
        if slot.role in HAS_BIAS:
            entries.append(Entry(f"{name}.bias", f"{conv}{separator}bias"))
        else:
            bn_entries = _keras_bn if source == "keras" else _torch_bn
            entries += bn_entries(_our_bn(slot), bn)
    return entries
