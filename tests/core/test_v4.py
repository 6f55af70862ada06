"""MobileNetV4 (Qin et al. 2024): the five models of Table 6 resolved from their tables, against
timm's ``mobilenetv4_*`` (the reference implementation, built from the TF Model Garden code),
module by module; the cost model against torch's FLOP counter, attention included; the blocks'
forward passes against timm's with the same random weights; and bad input."""

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilenets import MobileNetsError, ModelConfig, resolve
from mobilenets.core.cost import cost_of_spec
from mobilenets.core.families import UIB, get_family
from mobilenets.core.models import MobileNetV4, build_model

# ours, timm's name, native resolution, timm's parameter count (the paper's Table 6 prints 9.2M for
# Conv-M and 31M for Conv-L; the reference code builds what timm builds)
MODELS = {
    "conv_small": ("mobilenetv4_conv_small", 224, 3_774_024),
    "conv_medium": ("mobilenetv4_conv_medium", 256, 9_715_512),
    "conv_large": ("mobilenetv4_conv_large", 384, 32_590_864),
    "hybrid_medium": ("mobilenetv4_hybrid_medium", 256, 11_074_648),
    "hybrid_large": ("mobilenetv4_hybrid_large", 384, 37_764_624),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Small nets at small sizes: one intra-op thread (see conftest)."""


def parameter_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    """Parameter shapes in registration order, a 1x1 conv's weight as the linear layer it is on a
    pooled tensor (timm's 1280 head is a 1x1 conv, ours a Linear)."""
    shapes = []
    for parameter in model.parameters():
        shape = tuple(parameter.shape)
        shapes.append(shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape)
    return shapes


@pytest.mark.parametrize("model", list(MODELS))
def test_parameters_equal_timm_module_by_module(model):
    name, resolution, count = MODELS[model]
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
        built = MobileNetV4(model)
    assert built.resolution == resolution
    assert parameter_shapes(built) == parameter_shapes(reference)
    assert sum(p.numel() for p in built.parameters()) == count
    assert cost_of_spec(built.spec).params == count


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights and BN statistics at scales that keep activations near 1 through the network."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.2, 0.6, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
    return model.eval()


@pytest.mark.parametrize("model", ["conv_small", "hybrid_medium"])
def test_same_weights_give_timms_logits(model):
    """timm's state, copied over in registration order, gives timm's logits: the blocks compute
    what the reference computes (BN placement, activations, attention, layer scale)."""
    name, _, _ = MODELS[model]
    torch.manual_seed(0)
    reference = _randomized(timm.create_model(name, pretrained=False), 1)
    built = MobileNetV4(model).eval()
    theirs = [v for k, v in reference.state_dict().items() if "num_batches" not in k]
    keys = [k for k in built.state_dict() if "num_batches" not in k]
    state = {
        key: value.reshape(built.state_dict()[key].shape)
        for key, value in zip(keys, theirs, strict=True)
    }
    built.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = reference(x), built(x)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "model, resolution, output_stride",
    [("conv_small", 224, None), ("hybrid_medium", 128, None), ("hybrid_medium", 128, 16)],
)
def test_analytic_macs_equal_the_flop_counter(model, resolution, output_stride):
    """Convolutions and the attention's two matrix products, counted from the spec, are what
    torch counts when the built model runs."""
    built = MobileNetV4(model, resolution=resolution, output_stride=output_stride).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        built(torch.randn(1, 3, resolution, resolution))
    cost = cost_of_spec(built.spec)
    assert cost.macs == counter.get_total_flops() // 2
    attention = [layer for layer in cost.layers if layer.kind == "attention"]
    assert bool(attention) == model.startswith("hybrid")


def test_table6_macs_at_native_resolution():
    """The analytic MACs of the five models (the paper's Table 6 rounds them: 0.2, 1.0, 5.9, 1.2,
    7.2 G)."""
    macs = {
        model: cost_of_spec(MobileNetV4(model).spec).macs
        for model in ("conv_small", "conv_medium", "hybrid_medium")
    }
    assert macs == {
        "conv_small": 186_005_568,
        "conv_medium": 1_080_244_224,
        "hybrid_medium": 1_271_183_360,
    }


def test_uib_rows_name_their_instantiation():
    assert [UIB(0, 3, 4, 8).instantiation, UIB(3, 0, 4, 8).instantiation] == ["IB", "ConvNext"]
    assert [UIB(3, 5, 4, 8).instantiation, UIB(0, 0, 4, 8).instantiation] == ["ExtraDW", "FFN"]


def test_hybrid_blocks_and_the_attention_peak():
    spec = resolve(ModelConfig(arch="mobilenet_v4_hybrid_medium", resolution=256))
    kinds = [block.kind for block in spec.blocks]
    assert kinds.count("mobile_mqa") == 8 and kinds.count("fused_ib") == 1
    mqa = next(block for block in spec.blocks if block.kind == "mobile_mqa")
    attention = next(layer for layer in mqa.layers if layer.kind == "attention")
    # 16x16 queries against 8x8 keys and values (the stride-2 reduction), 4 heads of 64
    assert (attention.out_size, attention.kv_size, attention.heads) == (16, 8, 4)
    assert attention.macs == 256 * 64 * (256 + 256)
    assert mqa.stride == 1 and mqa.residual
    layer_scales = [layer for layer in spec.layers if layer.kind == "scale"]
    assert layer_scales and all(layer.params == layer.out_channels for layer in layer_scales)
    assert get_family("mobilenet_v4_hybrid_large").table[-2].nl == "GE"


def test_hybrid_at_output_stride_16_keeps_its_size_and_parameters():
    plain = resolve(ModelConfig(arch="mobilenet_v4_hybrid_medium", resolution=256))
    atrous = resolve(
        ModelConfig(arch="mobilenet_v4_hybrid_medium", resolution=256, output_stride=16)
    )
    assert atrous.num_features == plain.num_features
    assert cost_of_spec(atrous).params == cost_of_spec(plain).params
    assert atrous.blocks[-3].out_size == 16 and plain.blocks[-3].out_size == 8


def test_taps_and_features_of_every_model():
    built = MobileNetV4("conv_small", resolution=96, num_classes=0).eval()
    taps = built.forward_taps(torch.randn(1, 3, 96, 96), ["C3", "C4", "C5"])
    assert [tuple(t.shape[1:]) for t in taps.values()] == [(64, 12, 12), (96, 6, 6), (960, 3, 3)]
    assert built(torch.randn(1, 3, 96, 96)).shape == (1, 960)


def test_small_input_variant_runs_on_28_pixels():
    built = MobileNetV4("conv_small", resolution=28, small_input=True, in_chans=1, num_classes=10)
    assert built.name == "mobilenet_v4_conv_small_1.0_28_small"
    assert built.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_width_multiplier_keeps_the_stem_and_the_1280_layer():
    """timm's mobilenetv4_conv_small_050: the stem stays 32 and the pre-logits 1280 below alpha
    1; every other width is scaled."""
    with torch.device("meta"):
        reference = timm.create_model("mobilenetv4_conv_small_050", pretrained=False)
        built = build_model(ModelConfig(arch="mobilenet_v4_conv_small", alpha=0.5))
    assert parameter_shapes(built) == parameter_shapes(reference)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: MobileNetV4("hybrid_medium", output_stride=8),
            r"output_stride=8: its Mobile MQA block blocks\.7 reduces keys and values .* allowed "
            r"output strides for mobilenet_v4_hybrid_medium: 16, or None",
        ),
        (
            lambda: MobileNetV4("conv_tiny"),
            "model must be one of conv_small, conv_medium, conv_large, hybrid_medium, "
            "hybrid_large, got 'conv_tiny'",
        ),
        (
            lambda: MobileNetV4("conv_small", resolution=16),
            "resolution must be an integer >= 32, got 16",
        ),
        (
            lambda: ModelConfig(arch="mobilenet_v4_conv_small", width_rule="tf"),
            "width_rule applies to mobilenet_v3_large, mobilenet_v3_small only",
        ),
    ],
)
def test_bad_input_names_the_value_and_what_is_allowed(build, message):
    with pytest.raises(MobileNetsError, match=message):
        build()
