"""The tables as data, the width and resolution rules, and the resolved spec."""

import pytest

from mobilenets import MobileNetsError, ModelConfig, resolve
from mobilenets.core.families import make_divisible, v1_width, v2_head_width, v2_width
from mobilenets.core.spec import (
    pick_resolution,
    resolution_from_rho,
)


@pytest.mark.parametrize(
    "channels, alpha, expected",
    [
        (32, 0.25, 8),
        (64, 0.25, 16),
        (32, 0.1, 8),
        (1024, 0.75, 768),
        (100, 0.55, 55),
        (10, 0.99, 9),
    ],
)
def test_v1_width_truncates_with_minimum_8(channels, alpha, expected):
    assert v1_width(channels, alpha) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (16 * 0.35, 8),  # never below the divisor
        (24 * 0.75, 24),  # 16 would be under 90% of 18, so one more step
        (32 * 0.35, 16),  # 8 is under 90% of 11.2
        (96 * 1.4, 136),
        (64 * 1.3, 80),
        (1280, 1280),
    ],
)
def test_make_divisible_rounds_to_8_never_below_90_percent(value, expected):
    assert make_divisible(value) == expected


def test_v2_head_stays_1280_unless_alpha_above_one():
    assert [v2_head_width(1280, a) for a in (0.35, 0.5, 1.0, 1.3, 1.4)] == [
        1280,
        1280,
        1280,
        1664,
        1792,
    ]
    assert v2_width(16, 0.35) == 8


@pytest.mark.parametrize(
    "rho, resolution", [(1, 224), (0.857, 192), (0.714, 160), (0.571, 128), (0.43, 96)]
)
def test_rho_gives_224_rho_rounded_to_multiple_of_32(rho, resolution):
    assert resolution_from_rho(rho) == resolution


@pytest.mark.parametrize("side, resolution", [(112, 128), (144, 160), (80, 96), (208, 224)])
def test_rho_halfway_rounds_up(side, resolution):
    assert resolution_from_rho(side / 224) == resolution


@pytest.mark.parametrize("rho", [0, -0.5, 1.5, "0.5", True, 0.05])
def test_bad_rho_is_refused_with_its_value(rho):
    with pytest.raises(MobileNetsError, match="rho"):
        resolution_from_rho(rho)


def test_resolution_and_rho_together_are_refused():
    with pytest.raises(MobileNetsError, match="not both"):
        pick_resolution(160, 0.5)
    assert pick_resolution() == 224


def test_v1_resolves_table_1():
    spec = resolve(ModelConfig(arch="mobilenet_v1"))
    blocks = spec.feature_blocks
    assert [b.kind for b in blocks] == ["conv"] + ["depthwise_separable"] * 13
    assert [b.out_channels for b in blocks] == [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
    assert [b.out_size for b in blocks] == [112, 112, 56, 56, 28, 28] + [14] * 6 + [7, 7]
    # The last depthwise conv has stride 1 as released, not the s2 Table 1 prints.
    assert blocks[-1].layers[0].stride == 1
    depthwise = [layer for layer in spec.layers if layer.kind == "depthwise"]
    assert all(layer.groups == layer.in_channels == layer.out_channels for layer in depthwise)
    assert spec.layers[-1].kind == "linear" and spec.layers[-1].in_channels == 1024


def test_v2_resolves_table_2():
    spec = resolve(ModelConfig(arch="mobilenet_v2"))
    blocks = [b for b in spec.blocks if b.kind == "inverted_residual"]
    assert len(blocks) == 17
    assert [b.out_channels for b in blocks] == (
        [16] + [24] * 2 + [32] * 3 + [64] * 4 + [96] * 3 + [160] * 3 + [320]
    )
    assert [b.stride for b in blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert [b.expansion for b in blocks] == [1] + [6] * 16
    # t == 1: no expansion layer at all; t == 6: hidden width is 6x the input.
    assert [layer.name for layer in blocks[0].layers] == ["blocks.0.conv_dw", "blocks.0.conv_pwl"]
    assert blocks[1].layers[0].out_channels == 16 * 6
    # Linear bottleneck: the projection has no activation, the other two have ReLU6.
    assert [layer.act for layer in blocks[1].layers] == [True, True, False]
    # Residual exactly when stride is 1 and channels match (worked out by hand from Table 2).
    assert [i for i, b in enumerate(blocks) if b.residual] == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    head = spec.blocks[-2]
    assert (head.name, head.out_channels, head.out_size) == ("head", 1280, 7)


def test_expansion_override_keeps_the_t1_row():
    spec = resolve(ModelConfig(arch="mobilenet_v2", expansion=4))
    blocks = [b for b in spec.blocks if b.kind == "inverted_residual"]
    assert blocks[0].expansion == 1
    assert blocks[1].layers[0].out_channels == 16 * 4


def test_feature_taps_follow_strides():
    v1 = resolve(ModelConfig(arch="mobilenet_v1"))
    assert [(t.name, t.channels, t.stride) for t in v1.taps] == [
        ("C1", 64, 2),
        ("C2", 128, 4),
        ("C3", 256, 8),
        ("C4", 512, 16),
        ("C5", 1024, 32),
    ]
    v2 = resolve(ModelConfig(arch="mobilenet_v2", resolution=320))
    ssd = v2.tap("C4_expansion")  # SSDLite's first map: the paper's "layer 15" expansion
    assert (ssd.module, ssd.channels, ssd.stride, ssd.size) == ("blocks.13.act1", 576, 16, 20)
    assert (v2.tap("C5").module, v2.tap("C5").channels, v2.tap("C5").size) == ("head", 1280, 10)
    with pytest.raises(MobileNetsError, match="unknown feature tap 'C9'"):
        v2.tap("C9")


def test_resolve_is_pure_and_rho_never_changes_channels():
    config = ModelConfig(arch="mobilenet_v2", alpha=0.75)
    assert resolve(config) == resolve(config)
    small = resolve(config.replace(resolution=128))
    assert [x.out_channels for x in small.layers] == [
        x.out_channels for x in resolve(config).layers
    ]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"alpha": 0}, "alpha must be a positive number, got 0"),
        ({"alpha": -1.0}, "got -1.0"),
        ({"alpha": float("nan")}, "got nan"),
        ({"alpha": "1"}, "got '1'"),
        ({"resolution": 31}, "resolution must be an integer >= 32, got 31"),
        ({"resolution": 224.0}, "got 224.0"),
        ({"num_classes": -1}, "num_classes must be an integer >= 0"),
        ({"in_chans": 0}, "in_chans must be an integer >= 1, got 0"),
        ({"dropout": 1.0}, "dropout must be a number in \\[0, 1\\), got 1.0"),
        ({"padding": "valid"}, "padding must be one of symmetric, same, got 'valid'"),
        ({"bn_eps": 0}, "bn_eps must be a positive number"),
        ({"arch": "mobilenet_v3"}, "arch must be one of"),
        ({"expansion": 0, "arch": "mobilenet_v2"}, "expansion must be an integer >= 1, got 0"),
        ({"expansion": 6}, "expansion applies to mobilenet_v2 only"),
    ],
)
def test_bad_config_values_are_named(changes, message):
    with pytest.raises(MobileNetsError, match=message):
        ModelConfig(**{"arch": "mobilenet_v1", **changes})


def test_config_round_trips_through_a_dict_and_names_itself():
    config = ModelConfig(arch="mobilenet_v2", alpha=0.35, resolution=96, padding="same")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.name == "mobilenet_v2_0.35_96"
    assert ModelConfig(arch="mobilenet_v1").dropout == 0.001
    assert ModelConfig(arch="mobilenet_v2").dropout == 0.2
    with pytest.raises(MobileNetsError, match="unknown model config keys \\['width'\\]"):
        ModelConfig.from_dict({**config.to_dict(), "width": 1})
    for bad in ({}, 5, {"alpha": 1.0}):
        with pytest.raises(MobileNetsError, match="a model config is a dict with at least 'arch'"):
            ModelConfig.from_dict(bad)
