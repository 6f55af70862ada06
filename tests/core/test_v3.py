"""MobileNetV3 (Howard et al. 2019, Tables 1 and 2): our resolved and built networks against
torchvision's and timm's, module by module, and the contracts of the built model.

Each stack's V3 is the reference for the width rule it defines (families.V3_WIDTH_RULES):
torchvision's ``mobilenet_v3_large(width_mult=a, reduced_tail=...)`` for "torchvision", timm's
``tf_mobilenetv3_*`` and ``mobilenetv3_*`` (TF-slim's and Keras's widths) for "tf". The models
are built on the meta device: only their parameter shapes are read.
"""

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from mobilenets import MobileNetsError, MobileNetV3Large, MobileNetV3Small, ModelConfig, resolve
from mobilenets.core.models import build_model

LARGE, SMALL = "mobilenet_v3_large", "mobilenet_v3_small"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Small nets at small sizes: one intra-op thread (see conftest)."""


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def parameter_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    """The shapes of the parameters in registration order; a 1x1 conv's weight as the linear
    layer it computes on a pooled tensor (timm's head is a 1x1 conv, ours and torchvision's a
    Linear: the same weights)."""
    shapes = []
    for parameter in model.parameters():
        shape = tuple(parameter.shape)
        shapes.append(shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape)
    return shapes


def torchvision_v3(arch: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return getattr(torchvision.models, arch)(**kwargs)


def timm_v3(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def ours(**fields) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(ModelConfig(**fields))


# (our config, the reference that defines it). torchvision's width_mult scales the absolute
# widths: width_rule="torchvision"; timm's names are TF-slim's models: the default "tf" rule.
REFERENCES = {
    "tv-large-1.0": ({"arch": LARGE}, lambda: torchvision_v3(LARGE)),
    "tv-small-1.0": ({"arch": SMALL}, lambda: torchvision_v3(SMALL)),
    "tv-large-0.75": (
        {"arch": LARGE, "alpha": 0.75, "width_rule": "torchvision"},
        lambda: torchvision_v3(LARGE, width_mult=0.75),
    ),
    "tv-small-0.75": (
        {"arch": SMALL, "alpha": 0.75, "width_rule": "torchvision"},
        lambda: torchvision_v3(SMALL, width_mult=0.75),
    ),
    "tv-large-reduced-tail": (
        {"arch": LARGE, "reduced_tail": True},
        lambda: torchvision_v3(LARGE, reduced_tail=True),
    ),
    "tv-small-reduced-tail": (
        {"arch": SMALL, "reduced_tail": True},
        lambda: torchvision_v3(SMALL, reduced_tail=True),
    ),
    "tv-large-0.75-reduced-tail": (
        {"arch": LARGE, "alpha": 0.75, "width_rule": "torchvision", "reduced_tail": True},
        lambda: torchvision_v3(LARGE, width_mult=0.75, reduced_tail=True),
    ),
    "timm-tf_mobilenetv3_large_100": ({"arch": LARGE}, lambda: timm_v3("tf_mobilenetv3_large_100")),
    "timm-tf_mobilenetv3_small_100": ({"arch": SMALL}, lambda: timm_v3("tf_mobilenetv3_small_100")),
    "timm-tf_mobilenetv3_large_075": (
        {"arch": LARGE, "alpha": 0.75},
        lambda: timm_v3("tf_mobilenetv3_large_075"),
    ),
    "timm-tf_mobilenetv3_small_075": (
        {"arch": SMALL, "alpha": 0.75},
        lambda: timm_v3("tf_mobilenetv3_small_075"),
    ),
    "timm-tf_mobilenetv3_large_minimal_100": (
        {"arch": LARGE, "minimalistic": True},
        lambda: timm_v3("tf_mobilenetv3_large_minimal_100"),
    ),
    "timm-tf_mobilenetv3_small_minimal_100": (
        {"arch": SMALL, "minimalistic": True},
        lambda: timm_v3("tf_mobilenetv3_small_minimal_100"),
    ),
    "timm-mobilenetv3_large_075": (
        {"arch": LARGE, "alpha": 0.75},
        lambda: timm_v3("mobilenetv3_large_075"),
    ),
    "timm-mobilenetv3_small_050": (
        {"arch": SMALL, "alpha": 0.5},
        lambda: timm_v3("mobilenetv3_small_050"),
    ),
}


@pytest.mark.parametrize("key", list(REFERENCES))
def test_parameter_shapes_equal_the_reference_in_order(key):
    fields, reference = REFERENCES[key]
    mine, theirs = ours(**fields), reference()
    assert parameter_shapes(mine) == parameter_shapes(theirs)
    total = sum(p.numel() for p in mine.parameters())
    assert total == sum(p.numel() for p in theirs.parameters())
    assert total == sum(layer.params for layer in mine.spec.layers)


def test_golden_parameter_counts_of_torchvision():
    """torchvision's documented counts, pinned as integers."""
    assert sum(p.numel() for p in ours(arch=LARGE).parameters()) == 5_483_032
    assert sum(p.numel() for p in ours(arch=SMALL).parameters()) == 2_542_856


@pytest.mark.parametrize("arch", [LARGE, SMALL])
def test_the_two_width_rules_are_different_networks_at_0_75(arch):
    """At alpha 0.75 each rule matches its own stack only; at 1.0 they are one network."""
    tf = parameter_shapes(ours(arch=arch, alpha=0.75))
    torchvision_rule = parameter_shapes(ours(arch=arch, alpha=0.75, width_rule="torchvision"))
    assert tf != torchvision_rule
    assert torchvision_rule == parameter_shapes(torchvision_v3(arch, width_mult=0.75))
    timm_name = f"tf_{arch.replace('mobilenet_v3', 'mobilenetv3')}_075"
    assert tf == parameter_shapes(timm_v3(timm_name))
    assert resolve(ModelConfig(arch)).blocks == (
        resolve(ModelConfig(arch, width_rule="torchvision")).blocks
    )


def test_large_0_75_widths_by_rule():
    """Where the rules part: the stem, the expansions and the pre-logits layer."""

    def widths(rule):
        spec = resolve(ModelConfig(LARGE, alpha=0.75, width_rule=rule))
        expansions = [b.layers[0].out_channels for b in spec.blocks if b.name == "blocks.1"]
        return spec.blocks[0].out_channels, expansions[0], spec.pre_logits.out_channels

    # tf: stem 16 kept, 64/16 of the scaled 16, pre-logits 1280 kept; torchvision: all x 0.75
    assert widths("tf") == (16, 64, 1280)
    assert widths("torchvision") == (16, 48, 960)


# --- the resolved spec --------------------------------------------------------------------------


def test_large_resolves_table_1():
    spec = resolve(ModelConfig(LARGE))
    blocks = [b for b in spec.blocks if b.kind == "inverted_residual"]
    assert [b.out_channels for b in blocks] == [16, 24, 24, 40, 40, 40] + [80] * 4 + [112] * 2 + [
        160
    ] * 3
    assert [b.stride for b in blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
    assert [layer.kernel for b in blocks for layer in b.layers if layer.kind == "depthwise"] == (
        [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    )
    se = [any(layer.kind == "squeeze_excite" for layer in b.layers) for b in blocks]
    assert [i for i, has in enumerate(se) if has] == [3, 4, 5, 10, 11, 12, 13, 14]
    hidden = [b.layers[0].out_channels for b in blocks]
    assert hidden == [16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960]
    # exp == in: the first bneck has no expansion layer
    assert [layer.name for layer in blocks[0].layers] == ["blocks.0.conv_dw", "blocks.0.conv_pwl"]
    # SE squeezes to make_divisible(exp / 4): 72 -> 24, 120 -> 32, 960 -> 240
    squeeze = {
        b.name: b.layers[-3].out_channels for b in blocks if b.layers[-2].kind != "depthwise"
    }
    assert (squeeze["blocks.3"], squeeze["blocks.4"], squeeze["blocks.14"]) == (24, 32, 240)
    activations = [b.layers[0].activation for b in blocks]
    assert activations == ["relu"] * 6 + ["hardswish"] * 9
    assert [b.name for b in spec.blocks[-3:]] == ["head", "pre_logits", "classifier"]
    assert (spec.blocks[-3].out_channels, spec.pre_logits.out_channels) == (960, 1280)
    assert spec.pre_logits.layers[0].activation == "hardswish"
    assert (spec.blocks[0].layers[0].activation, spec.blocks[0].out_channels) == ("hardswish", 16)


def test_small_resolves_table_2_without_se_on_the_last_conv():
    spec = resolve(ModelConfig(SMALL))
    blocks = [b for b in spec.blocks if b.kind == "inverted_residual"]
    assert [b.out_channels for b in blocks] == [16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96]
    assert [b.stride for b in blocks] == [2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1]
    se = [i for i, b in enumerate(blocks) if any(x.kind == "squeeze_excite" for x in b.layers)]
    assert se == [0, 3, 4, 5, 6, 7, 8, 9, 10]
    # Table 2 marks SE on the 576-wide 1x1 conv; the released models have none.
    head = spec.blocks[-3]
    assert (head.name, [layer.kind for layer in head.layers]) == ("head", ["pointwise"])
    assert (head.out_channels, spec.pre_logits.out_channels) == (576, 1024)


def test_minimalistic_has_no_se_no_hswish_and_3x3_depthwise():
    spec = resolve(ModelConfig(LARGE, minimalistic=True))
    assert {layer.kind for layer in spec.layers} == {"conv", "pointwise", "depthwise", "linear"}
    assert {layer.kernel for layer in spec.layers if layer.kind == "depthwise"} == {3}
    assert {layer.activation for layer in spec.layers if layer.act} == {"relu"}
    # the same channels as the full model
    full = resolve(ModelConfig(LARGE))
    assert [b.out_channels for b in spec.blocks] == [b.out_channels for b in full.blocks]


@pytest.mark.parametrize("arch, last_stage, head, pre_logits", [(LARGE, 80, 480, 640)])
def test_reduced_tail_halves_the_last_stage(arch, last_stage, head, pre_logits):
    spec = resolve(ModelConfig(arch, reduced_tail=True))
    blocks = [b for b in spec.blocks if b.kind == "inverted_residual"]
    # the stage's first block keeps its 672 expansion; the expansions it feeds are halved
    assert [b.layers[0].out_channels for b in blocks[-3:]] == [672, 480, 480]
    assert [b.out_channels for b in blocks[-3:]] == [last_stage] * 3
    assert (spec.blocks[-3].out_channels, spec.pre_logits.out_channels) == (head, pre_logits)


def test_config_names_and_round_trip():
    assert ModelConfig(LARGE).name == "mobilenet_v3_large_1.0_224"
    assert ModelConfig(LARGE).width_rule == "tf"
    small = ModelConfig(SMALL, alpha=0.75, minimalistic=True)
    assert small.name == "mobilenet_v3_small_minimalistic_0.75_224"
    assert ModelConfig(LARGE, reduced_tail=True).name == "mobilenet_v3_large_1.0_224_reduced_tail"
    tv = ModelConfig(LARGE, alpha=0.75, width_rule="torchvision")
    assert tv.name == "mobilenet_v3_large_0.75_224_tv"
    assert ModelConfig(LARGE, width_rule="torchvision").name == "mobilenet_v3_large_1.0_224"
    assert ModelConfig.from_dict(tv.to_dict()) == tv
    assert MobileNetV3Small(alpha=0.75, minimalistic=True).config == small


# --- the built model ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch, channels", [(LARGE, 960), (SMALL, 576)])
@pytest.mark.parametrize("resolution, side", [(224, 7), (192, 6), (160, 5), (128, 4), (96, 3)])
def test_last_feature_map_side(arch, channels, resolution, side):
    model = build_model(ModelConfig(arch, alpha=0.75, resolution=resolution)).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, resolution, resolution))
    assert features.shape == (1, model.num_features, side, side)
    assert model.num_features == {LARGE: 720, SMALL: 432}[arch]  # the tf rule's 0.75 x 960, 576
    assert resolve(ModelConfig(arch)).num_features == channels


FEATURE_INFO = {
    LARGE: [
        ("C1", "blocks.0", 16, 2),
        ("C1_expansion", "blocks.1.act1", 64, 2),
        ("C2", "blocks.2", 24, 4),
        ("C2_expansion", "blocks.3.act1", 72, 4),
        ("C3", "blocks.5", 40, 8),
        ("C3_expansion", "blocks.6.act1", 240, 8),
        ("C4", "blocks.11", 112, 16),
        ("C4_expansion", "blocks.12.act1", 672, 16),  # SSDLite's first map (V3 section 6.2)
        ("C5_bottleneck", "blocks.14", 160, 32),
        ("C5", "head", 960, 32),
    ],
    SMALL: [
        ("C1", "stem", 16, 2),
        ("C2", "blocks.0", 16, 4),
        ("C2_expansion", "blocks.1.act1", 72, 4),
        ("C3", "blocks.2", 24, 8),
        ("C3_expansion", "blocks.3.act1", 96, 8),
        ("C4", "blocks.7", 48, 16),
        ("C4_expansion", "blocks.8.act1", 288, 16),
        ("C5_bottleneck", "blocks.10", 96, 32),
        ("C5", "head", 576, 32),
    ],
}


@pytest.mark.parametrize("arch", [LARGE, SMALL])
def test_feature_taps(arch):
    model = build_model(ModelConfig(arch, resolution=96)).eval()
    info = [(t["name"], t["module"], t["num_chs"], t["reduction"]) for t in model.feature_info]
    assert info == FEATURE_INFO[arch]
    with torch.no_grad():
        taps = model.forward_taps(torch.randn(1, 3, 96, 96))
    for name, _, channels, stride in FEATURE_INFO[arch]:
        assert taps[name].shape == (1, channels, 96 // stride, 96 // stride), name
    assert model.get_submodule(model.spec.tap("C4_expansion").module).__class__.__name__ == (
        "Hardswish"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"arch": LARGE},
        {"arch": SMALL},
        {"arch": LARGE, "minimalistic": True},
        {"arch": SMALL, "alpha": 0.75, "width_rule": "torchvision", "reduced_tail": True},
    ],
    ids=["large", "small", "large-minimalistic", "small-0.75-tv-reduced-tail"],
)
def test_every_parameter_gets_a_gradient(fields):
    config = ModelConfig(**fields, resolution=64, num_classes=4, dropout=0.0)
    model = build_model(config).train()
    loss = F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("arch", [LARGE, SMALL])
@pytest.mark.parametrize("output_stride, side", [(16, 14), (8, 28)])
def test_output_stride(arch, output_stride, side):
    config = ModelConfig(arch, alpha=0.75, num_classes=0, output_stride=output_stride)
    model = build_model(config).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, model.num_features, side, side)
    assert max(tap.stride for tap in model.spec.taps) == output_stride
    plain = build_model(config.replace(output_stride=None))
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }


@pytest.mark.parametrize("arch", [LARGE, SMALL])
@pytest.mark.parametrize("resolution", [28, 32])
def test_small_input(arch, resolution):
    config = ModelConfig(
        arch, resolution=resolution, in_chans=1, num_classes=10, small_input=True, dropout=0.0
    )
    model = build_model(config).train()
    logits = model(torch.randn(2, 1, resolution, resolution))
    assert logits.shape == (2, 10)
    assert model.spec.feature_blocks[-1].out_size == 4  # output stride 8
    F.cross_entropy(logits, torch.tensor([3, 7])).backward()
    assert all(p.grad is not None for p in model.parameters())
    standard = ModelConfig(arch, resolution=32, in_chans=1, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == sum(
        layer.params for layer in resolve(standard).layers
    )


@pytest.mark.parametrize("arch, pooled, pre_logits", [(LARGE, 960, 1280), (SMALL, 576, 1024)])
def test_num_classes_zero_and_the_pre_logits(arch, pooled, pre_logits):
    model = build_model(ModelConfig(arch, resolution=64, num_classes=0)).eval()
    assert model.pre_logits is None and model.spec.pre_logits is None
    assert not [key for key in model.state_dict() if key.startswith(("pre_logits.", "classifier"))]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model(x)
        assert features.shape == (2, pooled)
        assert torch.allclose(features, model.forward_features(x).mean((2, 3)), atol=1e-6)
    model.reset_classifier(10)  # from 0: the pre-logits layer comes back
    assert model.pre_logits.fc.weight.shape == (pre_logits, pooled)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (
            2,
            pre_logits,
        )
    assert sum(p.numel() for p in model.parameters()) == sum(
        layer.params for layer in model.spec.layers
    )
    model.reset_classifier(0)  # and to 0: gone again
    assert model.pre_logits is None
    with torch.no_grad():
        assert model(x).shape == (2, pooled)


def test_reset_classifier_keeps_the_trained_pre_logits():
    model = MobileNetV3Large(resolution=64).double()
    fc = model.pre_logits.fc.weight.clone()
    model.reset_classifier(3)
    assert torch.equal(model.pre_logits.fc.weight, fc)
    assert model.classifier.weight.dtype == torch.float64
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64, dtype=torch.float64)).shape == (1, 3)


def test_checkpoint_keys():
    keys = set(MobileNetV3Small().state_dict())
    assert {
        "stem.conv.weight",
        "blocks.0.conv_dw.weight",
        "blocks.0.se.conv_reduce.bias",
        "blocks.0.se.conv_expand.weight",
        "blocks.1.conv_pw.weight",
        "blocks.1.bn1.running_var",
        "head.conv.weight",
        "pre_logits.fc.bias",
        "classifier.weight",
    } <= keys
    assert not [
        key
        for key in keys
        if key.startswith(("blocks.0.conv_pw.", "blocks.0.bn1.", "blocks.1.se."))
    ]


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"arch": "mobilenet_v2", "width_rule": "tf"},
            "width_rule applies to mobilenet_v3_large, "
            "mobilenet_v3_small only, got width_rule='tf' for mobilenet_v2",
        ),
        (
            {"arch": "mobilenet_v1", "minimalistic": True},
            "minimalistic applies to "
            "mobilenet_v3_large, mobilenet_v3_small only, got minimalistic=True for mobilenet_v1",
        ),
        (
            {"arch": "mobilenet_v2", "reduced_tail": True},
            "reduced_tail applies to "
            "mobilenet_v3_large, mobilenet_v3_small only, got reduced_tail=True for mobilenet_v2",
        ),
        (
            {"arch": LARGE, "width_rule": "keras"},
            "width_rule must be one of tf, torchvision for mobilenet_v3_large, got 'keras'",
        ),
        ({"arch": SMALL, "minimalistic": 1}, "minimalistic must be True or False, got 1"),
        ({"arch": LARGE, "reduced_tail": "yes"}, "reduced_tail must be True or False, got 'yes'"),
        (
            {"arch": LARGE, "expansion": 6},
            "expansion applies to mobilenet_v2 only, got expansion=6 for mobilenet_v3_large",
        ),
    ],
)
def test_bad_v3_fields_are_named(fields, message):
    with pytest.raises(MobileNetsError) as error:
        ModelConfig(**fields)
    assert str(error.value) == message


def test_constructors_refuse_what_they_do_not_take():
    with pytest.raises(MobileNetsError, match=r"unknown argument\(s\) \['width_mult'\]"):
        MobileNetV3Large(width_mult=0.75)
    with pytest.raises(MobileNetsError, match="width_rule must be one of tf, torchvision"):
        MobileNetV3Small(width_rule="timm")
