"""The small-input variant (``ModelConfig.small_input``): a stride-1 stem and a stride-1 first
stride-2 row, so 28-32 px images end at 4x4 instead of 1x1, with the standard net's parameters."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from test_cost import measured  # built-model params and torch's FLOP count, on meta

from mobilenets import MobileNetsError, ModelConfig, cost, create_model, resolve
from mobilenets.cli import main

ARCHS = ("mobilenet_v1", "mobilenet_v2")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("alpha", [1.0, 0.35])
def test_same_parameters_as_the_standard_net(arch, alpha):
    def shapes(spec):
        return [(x.name, x.in_channels, x.out_channels, x.kernel, x.groups) for x in spec.layers]

    config = ModelConfig(arch, alpha=alpha, resolution=32, num_classes=10)
    assert shapes(resolve(config.replace(small_input=True))) == shapes(resolve(config))
    params = cost(config).params
    assert cost(config.replace(small_input=True)).params == params
    built, _ = measured(arch, alpha=alpha, resolution=32, num_classes=10, small_input=True)
    assert built == params


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("resolution", [32, 28])
def test_output_stride_8(arch, resolution):
    config = ModelConfig(arch, alpha=0.35, resolution=resolution, small_input=True)
    last = resolve(config).feature_blocks[-1]
    assert (last.out_stride, last.out_size) == (8, 4)  # 32 / 8 = 4; ceil(28 / 8) = 4
    standard = resolve(config.replace(small_input=False, resolution=32))
    assert standard.feature_blocks[-1].out_stride == 32
    model = create_model(arch, alpha=0.35, resolution=resolution, small_input=True).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, resolution, resolution))
    assert features.shape == (1, model.num_features, 4, 4)
    # Taps are named by output stride (C_k at 2**k), so the deepest one here is C3.
    assert (model.spec.taps[-1].name, model.spec.taps[-1].size) == ("C3", 4)


@pytest.mark.parametrize("arch, changed_channels", [("mobilenet_v1", 128), ("mobilenet_v2", 24)])
def test_stem_and_the_first_stride_2_row_become_stride_1(arch, changed_channels):
    standard = resolve(ModelConfig(arch))
    small = resolve(ModelConfig(arch, small_input=True))
    strides = [block.stride for block in standard.blocks]
    small_strides = [block.stride for block in small.blocks]
    first_stride_2 = strides.index(2, 1)  # the first stride-2 block after the stem
    changed = [i for i, (a, b) in enumerate(zip(strides, small_strides, strict=True)) if a != b]
    assert changed == [0, first_stride_2]
    assert small.blocks[0].name == "stem" and small_strides[0] == 1
    assert small_strides[first_stride_2] == 1
    # The first block of V1 Table 1's "Conv dw / s2, 1x1 to 128" row, of V2 Table 2's c=24 row.
    assert small.blocks[first_stride_2].out_channels == changed_channels
    assert (strides.count(2), small_strides.count(2)) == (5, 3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("resolution", [28, 32])
def test_macs_equal_the_flop_counter(arch, resolution):
    overrides = dict(resolution=resolution, in_chans=1, num_classes=10, small_input=True)
    report = cost(arch, **overrides)
    assert (report.params, report.macs) == measured(arch, **overrides)


def v2_small_input_macs(resolution: int, in_chans: int, num_classes: int) -> int:
    """MACs of the small-input V2 at alpha 1.0, straight from V2 Table 2 (t, c, n, s), with
    output sides ceil(side / stride): independent of mobilenets.core.spec."""
    rows = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    side, channels = resolution, 32  # stem: 3x3 conv to 32 at stride 1 (not 2)
    macs = side * side * 32 * in_chans * 9
    first_stride_2 = True
    for t, c, n, s in rows:
        if s == 2 and first_stride_2:
            s, first_stride_2 = 1, False
        for repeat in range(n):
            hidden = channels * t
            if t != 1:
                macs += side * side * channels * hidden  # 1x1 expansion
            side = math.ceil(side / (s if repeat == 0 else 1))
            macs += side * side * hidden * 9  # 3x3 depthwise
            macs += side * side * hidden * c  # 1x1 linear projection
            channels = c
    macs += side * side * channels * 1280  # head: 1x1 conv to 1280
    return macs + 1280 * num_classes  # classifier


def test_v2_small_input_golden_figures():
    report = cost("mobilenet_v2", resolution=28, num_classes=10, small_input=True)
    assert report.macs == v2_small_input_macs(28, in_chans=3, num_classes=10) == 73_390_208
    # torchvision's 3,504,872 at 1000 classes, less 990 classes of the 1280-wide classifier.
    assert report.params == 3_504_872 - 990 * 1281 == 2_236_682


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_and_gradients_at_28_with_one_channel(arch):
    model = create_model(
        arch, alpha=0.35, resolution=28, in_chans=1, num_classes=10, small_input=True, dropout=0.0
    ).train()
    logits = model(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([3, 7])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("arch", ARCHS)
def test_resolution_limits(arch):
    smallest = resolve(ModelConfig(arch, resolution=8, small_input=True))
    assert smallest.feature_blocks[-1].out_size == 1
    with pytest.raises(MobileNetsError, match="resolution must be an integer >= 8, got 7"):
        ModelConfig(arch, resolution=7, small_input=True)
    with pytest.raises(MobileNetsError, match=r">= 32, got 28 \(small_input=True allows"):
        ModelConfig(arch, resolution=28)
    with pytest.raises(MobileNetsError, match="small_input must be True or False, got 1"):
        ModelConfig(arch, resolution=32, small_input=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_name_and_config_round_trip(arch):
    config = ModelConfig(
        arch, alpha=0.5, resolution=28, in_chans=1, num_classes=10, small_input=True
    )
    assert config.name == f"{arch}_0.5_28_small"
    assert ModelConfig(arch, alpha=0.5, resolution=32).name == f"{arch}_0.5_32"
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert create_model(arch, alpha=0.5, resolution=28, small_input=True).name.endswith("_small")


def test_create_model_from_a_grid_name():
    model = create_model("mobilenet_v2_1.0_224", small_input=True, resolution=32).eval()
    assert (model.name, model.config.small_input) == ("mobilenet_v2_1.0_32_small", True)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 1280, 4, 4)


def test_cost_command_small_input(capsys):
    code = main(
        ["cost", "mobilenet_v2", "--resolution", "28", "--small-input", "--num-classes", "10"]
    )
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert out.startswith("mobilenet_v2_1.0_28_small: alpha 1.0, 28x28 input, 10 classes\n")
    assert "small-input variant: stride-1 stem and first stride-2 stage (output stride 8)" in out
    total = re.search(r"^total: ([\d,]+) params, ([\d,]+) MACs", out, re.MULTILINE)
    params, macs = (int(group.replace(",", "")) for group in total.groups())
    assert params == cost("mobilenet_v2", num_classes=10).params == 2_236_682
    assert macs == v2_small_input_macs(28, in_chans=3, num_classes=10)


def test_cost_command_below_32_without_small_input(capsys):
    code = main(["cost", "mobilenet_v2", "--resolution", "28"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.strip().count("\n") == 0
    assert err.startswith("mobilenets cost: error: resolution must be an integer >= 32, got 28")
    assert "--small-input allows down to 8" in err
