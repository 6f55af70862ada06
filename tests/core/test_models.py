"""Contracts of the built modules: shapes, gradients, names, residuals, taps, padding."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilenets import MobileNetsError, MobileNetV1, MobileNetV2, create_model, list_models
from mobilenets.core.models import Conv2dSame, InvertedResidual

SMALL = [("mobilenet_v1", 0.25), ("mobilenet_v2", 0.35)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("arch, alpha", SMALL)
@pytest.mark.parametrize("resolution, side", [(224, 7), (192, 6), (160, 5), (128, 4), (96, 3)])
def test_last_feature_map_side(arch, alpha, resolution, side):
    model = create_model(arch, alpha=alpha, resolution=resolution).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, resolution, resolution))
    assert features.shape == (1, model.num_features, side, side)
    assert model.spec.feature_blocks[-1].out_size == side


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_at_its_resolution(name):
    """Logits and every named tap have the shapes the spec gives, at the nominal resolution."""
    model = create_model(name).eval()
    side = model.resolution
    with torch.inference_mode():
        taps = model.forward_taps(torch.randn(1, 3, side, side))
        logits = model.forward_head(taps["C5"])
    assert logits.shape == (1, 1000)
    for tap in model.spec.taps:
        assert taps[tap.name].shape == (1, tap.channels, tap.size, tap.size), tap.name
    assert taps["C5"].shape[-1] == -(-side // 32)  # 7 at 224, 8 at 256, 12 at 384


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    model = create_model(name, resolution=64, num_classes=4, dropout=0.0).train()
    loss = F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("arch, alpha", SMALL)
def test_modules_match_the_spec_layer_by_layer(arch, alpha):
    model = create_model(arch, alpha=alpha)
    for layer in model.spec.layers:
        module = model.get_submodule(layer.name)
        if layer.kind == "linear":
            assert module.weight.shape == (layer.out_channels, layer.in_channels)
            continue
        expected = (
            layer.out_channels,
            layer.in_channels // layer.groups,
            layer.kernel,
            layer.kernel,
        )
        assert module.weight.shape == expected, layer.name
        assert (module.stride[0], module.groups) == (layer.stride, layer.groups), layer.name
    assert sum(p.numel() for p in model.parameters()) == sum(
        layer.params for layer in model.spec.layers
    )


def test_checkpoint_keys_name_the_paper_parts():
    v1 = MobileNetV1().state_dict()
    assert {
        "stem.conv.weight",
        "blocks.0.conv_dw.weight",
        "blocks.0.bn2.bias",
        "blocks.12.conv_pw.weight",
        "classifier.weight",
    } <= set(v1)
    v2 = MobileNetV2().state_dict()
    assert {
        "blocks.0.conv_dw.weight",
        "blocks.0.conv_pwl.weight",
        "blocks.1.conv_pw.weight",
        "blocks.1.bn1.running_var",
        "blocks.16.bn3.weight",
        "head.conv.weight",
    } <= set(v2)
    # The t=1 block has no expansion layer at all, not an identity.
    assert not any(key.startswith(("blocks.0.conv_pw.", "blocks.0.bn1.")) for key in v2)
    assert not any(".features." in key or key[0].isdigit() for key in v2)


def test_residual_is_applied_exactly_where_the_spec_says():
    model = MobileNetV2(alpha=0.35).eval()
    blocks = [b for b in model.spec.blocks if b.kind == "inverted_residual"]
    for block_spec, block in zip(blocks, model.blocks, strict=True):
        assert block.use_residual == block_spec.residual
        # Zero the projection's BN: a residual block then passes its input through unchanged,
        # a plain block outputs zeros.
        nn.init.zeros_(block.bn3.weight)
        nn.init.zeros_(block.bn3.bias)
        x = torch.randn(1, block_spec.in_channels, 8, 8)
        with torch.no_grad():
            out = block(x)
        if block.use_residual:
            assert torch.equal(out, x)
        else:
            assert not out.any()


def test_projection_is_linear():
    block = MobileNetV2().blocks[1].eval()
    with torch.no_grad():
        out = block(torch.randn(1, 16, 16, 16))
    assert out.min() < 0  # no ReLU6 after the projection


def test_num_classes_zero_gives_pooled_features():
    model = MobileNetV2(alpha=0.5, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model(x)
        assert pooled.shape == (2, 1280)
        assert torch.allclose(pooled, model.forward_features(x).mean((2, 3)), atol=1e-6)


def test_in_chans_and_num_classes():
    model = MobileNetV1(alpha=0.25, in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)


def test_reset_classifier():
    model = MobileNetV2(alpha=0.35).double()
    model.reset_classifier(3)  # follows the model's dtype
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 3)
    model = MobileNetV2(alpha=0.35)
    model.reset_classifier(7)
    assert model.classifier.out_features == 7 and model.config.num_classes == 7
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_forward_taps_have_the_spec_shapes():
    model = MobileNetV2(alpha=0.5).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        taps = model.forward_taps(x)
        assert list(taps) == [t.name for t in model.spec.taps]
        for tap in model.spec.taps:
            assert taps[tap.name].shape == (1, tap.channels, 96 // tap.stride, 96 // tap.stride)
        assert torch.equal(taps["C5"], model.forward_features(x))
        only = model.forward_taps(x, ["C4_expansion", "C2"])
        assert list(only) == ["C4_expansion", "C2"]
        assert torch.equal(only["C4_expansion"], taps["C4_expansion"])
    with pytest.raises(MobileNetsError, match="unknown feature tap"):
        model.forward_taps(x, ["P3"])


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("side", [33, 97])
def test_odd_inputs_give_the_spec_sizes(arch, padding, side):
    model = create_model(arch, alpha=0.5, resolution=side, padding=padding).eval()
    with torch.no_grad():
        taps = model.forward_taps(torch.randn(1, 3, side, side))
    for tap in model.spec.taps:
        assert taps[tap.name].shape[1:] == (tap.channels, tap.size, tap.size), tap.name
    assert model.spec.tap("C5").size == -(-side // 32)


def test_wrong_inputs_are_named():
    model = MobileNetV2(alpha=0.35).eval()
    with pytest.raises(
        MobileNetsError,
        match="takes a \\(batch, 3, height, width\\) tensor, got shape \\(1, 1, 32, 32\\)",
    ):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(MobileNetsError, match="got shape \\(3, 32, 32\\)"):
        model.forward_taps(torch.randn(3, 32, 32))
    with pytest.raises(MobileNetsError, match="names lists no feature tap"):
        model.forward_taps(torch.randn(1, 3, 32, 32), [])
    with torch.no_grad():
        single = model.forward_taps(torch.randn(1, 3, 32, 32), "C3")
    assert list(single) == ["C3"]


def test_keep_blocks_drops_the_later_blocks_and_their_keys():
    """A segmenter's backbone ends at its tap: keep_blocks drops what follows, tensors too."""
    model = MobileNetV2(alpha=0.35, num_classes=0).eval()
    taps = model.forward_taps(torch.randn(1, 3, 64, 64), ["C3", "C5_bottleneck"])
    model.keep_blocks(model.spec.tap("C5_bottleneck").block + 1)
    assert model.head is None and len(model.blocks) == 17
    assert not [key for key in model.state_dict() if key.startswith("head.")]
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        kept = model.forward_taps(x, "C5_bottleneck")["C5_bottleneck"]
    assert kept.shape == taps["C5_bottleneck"].shape == (1, 112, 2, 2)
    with pytest.raises(MobileNetsError, match=r"feature taps \['C5'\] .*keep_blocks\(18\)"):
        model.forward_taps(x, ["C3", "C5"])
    model.keep_blocks(3)  # the stem and blocks.0, blocks.1
    assert len(model.blocks) == 2
    with pytest.raises(MobileNetsError, match=r"count must be an integer in \[1, 3\], got 4"):
        model.keep_blocks(4)


def test_same_padding_pads_bottom_right_at_stride_2():
    conv = Conv2dSame(4, 4, 3, stride=2, padding=0, groups=4, bias=False)
    x = torch.randn(1, 4, 8, 8)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2, groups=4)
    assert torch.equal(conv(x), expected)
    odd = torch.randn(1, 4, 7, 7)  # odd input: TF pads one on each side
    assert torch.equal(
        conv(odd), F.conv2d(F.pad(odd, (1, 1, 1, 1)), conv.weight, stride=2, groups=4)
    )


def test_padding_and_bn_eps_are_part_of_the_model():
    same = MobileNetV2(alpha=0.35, padding="same", bn_eps=1e-3).eval()
    symmetric = MobileNetV2(alpha=0.35).eval()
    symmetric.load_state_dict(same.state_dict())  # the same keys: padding changes no weights
    assert isinstance(same.stem.conv, Conv2dSame) and not isinstance(
        symmetric.stem.conv, Conv2dSame
    )
    assert all(m.eps == 1e-3 for m in same.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert same(x).shape == symmetric(x).shape
        assert not torch.allclose(same.forward_features(x), symmetric.forward_features(x))


def test_constructor_arguments():
    assert MobileNetV1(rho=0.571).resolution == 128
    assert MobileNetV2(alpha=0.75, resolution=160).name == "mobilenet_v2_0.75_160"
    assert isinstance(MobileNetV2().blocks[3], InvertedResidual)
    with pytest.raises(MobileNetsError, match="not both"):
        MobileNetV1(resolution=160, rho=0.5)
    with pytest.raises(MobileNetsError, match="unknown argument\\(s\\) \\['width_mult'\\]"):
        MobileNetV2(width_mult=1.0)
    with pytest.raises(MobileNetsError, match="alpha must be a positive number, got -0.5"):
        MobileNetV1(alpha=-0.5)
