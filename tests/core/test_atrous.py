"""Atrous convolution (ModelConfig.output_stride): where the strides stop and how much each later
3x3 conv is dilated, against TF-slim's rule and timm's implementation of it.

TF-slim's ``mobilenet_v1_base`` (research/slim/nets/mobilenet_v1.py) walks its conv defs with

    if output_stride is not None and current_stride == output_stride:
        layer_stride = 1
        layer_rate = rate
        rate *= conv_def.stride
    else:
        layer_stride = conv_def.stride
        layer_rate = 1
        current_stride *= conv_def.stride

and ``mobilenet_base`` (nets/mobilenet/mobilenet.py, V2) does the same per op, never giving a 1x1
conv a rate. So the unit that would pass the target runs at stride 1 with the rate so far (1 for the
first one), and only the units after it are dilated by the stride it skipped.
"""

import pytest
import timm
import torch
from random_weights import randomize_torch
from torch import nn

from mobilenets import MobileNetsError, MobileNetV1, MobileNetV2, ModelConfig, cost, resolve
from mobilenets.core.models import build_model
from mobilenets.zoo.convert import convert_state_dict


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Small nets at small sizes: one intra-op thread (see conftest)."""


ARCHS = ("mobilenet_v1", "mobilenet_v2")

# (stride, dilation) of each ``blocks.i.conv_dw``, by the rule above. Block indices are ours:
# V1's blocks.i is TF-slim's Conv2d_{i+1}, V2's is expanded_conv_{i}.
V1_PLAIN = [(s, 1) for s in (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)]
V2_PLAIN = [(s, 1) for s in (1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)]
EXPECTED = {
    # V1 reaches 16 after blocks.5 (512, s2): blocks.11 (1024, s2) runs at stride 1 rate 1, then
    # blocks.12 at rate 2.
    ("mobilenet_v1", 16): V1_PLAIN[:11] + [(1, 1), (1, 2)],
    # V1 reaches 8 after blocks.3 (256, s2): blocks.5 (512, s2) stride 1 rate 1; blocks.6-10 at
    # rate 2; blocks.11 (s2) stride 1 at rate 2, which doubles to 4 for blocks.12.
    ("mobilenet_v1", 8): V1_PLAIN[:5] + [(1, 1)] + [(1, 2)] * 5 + [(1, 2), (1, 4)],
    # V2 reaches 16 after blocks.6 (first of the 64 stage): blocks.13, first of the 160 stage,
    # stride 1 rate 1; blocks.14, 15 (160) and 16 (320) at rate 2.
    ("mobilenet_v2", 16): V2_PLAIN[:13] + [(1, 1)] + [(1, 2)] * 3,
    # V2 reaches 8 after blocks.3 (first of the 32 stage): blocks.6 stride 1 rate 1; blocks.7-12
    # at rate 2; blocks.13 stride 1 at rate 2; blocks.14-16 at rate 4.
    ("mobilenet_v2", 8): V2_PLAIN[:6] + [(1, 1)] + [(1, 2)] * 6 + [(1, 2)] + [(1, 4)] * 3,
}
PLAIN = {"mobilenet_v1": V1_PLAIN, "mobilenet_v2": V2_PLAIN}


def depthwise(spec) -> list[tuple[int, int]]:
    return [(layer.stride, layer.dilation) for layer in spec.layers if layer.kind == "depthwise"]


def tensor_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in build_model(config).state_dict().items()}


# --- The config --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [4, 12, 64, 0, "16", True])
def test_bad_output_stride_names_the_allowed_values(value):
    with pytest.raises(
        MobileNetsError, match=f"output_stride must be None or one of 8, 16, 32, got {value!r}"
    ):
        ModelConfig(arch="mobilenet_v2", output_stride=value)


def test_name_has_the_output_stride_suffix():
    assert ModelConfig(arch="mobilenet_v2", output_stride=16).name == "mobilenet_v2_1.0_224_os16"
    assert ModelConfig(arch="mobilenet_v1", alpha=0.5, resolution=513, output_stride=8).name == (
        "mobilenet_v1_0.5_513_os8"
    )
    assert ModelConfig(arch="mobilenet_v2").name == "mobilenet_v2_1.0_224"
    assert MobileNetV2(alpha=0.35, output_stride=16).name == "mobilenet_v2_0.35_224_os16"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_same_parameters_more_macs(arch, output_stride):
    plain, atrous = cost(arch), cost(arch, output_stride=output_stride)
    assert atrous.params == plain.params
    if output_stride == 32:  # the classification network as it is
        assert atrous.macs == plain.macs
        assert (
            resolve(ModelConfig(arch=arch, output_stride=32)).blocks
            == resolve(ModelConfig(arch=arch)).blocks
        )
    else:
        assert atrous.macs > plain.macs
    # The same tensors under the same names: ImageNet weights fit every output stride.
    config = ModelConfig(arch=arch, alpha=0.35)
    assert tensor_shapes(config.replace(output_stride=output_stride)) == tensor_shapes(config)


# --- The resolved spec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resolution, output_stride, side",
    [(513, 16, 33), (513, 8, 65), (513, 32, 17), (513, None, 17), (224, 16, 14), (224, 8, 28)],
)
@pytest.mark.parametrize("arch", ARCHS)
def test_last_feature_map_side(arch, resolution, output_stride, side):
    spec = resolve(ModelConfig(arch=arch, resolution=resolution, output_stride=output_stride))
    assert spec.feature_blocks[-1].out_size == side
    assert max(block.out_stride for block in spec.feature_blocks) == (output_stride or 32)


@pytest.mark.parametrize("arch, output_stride", list(EXPECTED))
def test_dilated_layers_follow_tfslim(arch, output_stride):
    spec = resolve(ModelConfig(arch=arch, resolution=513, output_stride=output_stride))
    assert depthwise(spec) == EXPECTED[arch, output_stride]
    assert depthwise(resolve(ModelConfig(arch=arch, resolution=513))) == PLAIN[arch]
    # The stem keeps its stride; no 1x1 conv is dilated (V2's head conv included).
    assert (spec.layers[0].name, spec.layers[0].stride, spec.layers[0].dilation) == (
        "stem.conv",
        2,
        1,
    )
    assert all(layer.dilation == 1 for layer in spec.layers if layer.kernel == 1)
    # The residuals are the plain net's: every block whose stride became 1 changes channels.
    plain = resolve(ModelConfig(arch=arch, resolution=513))
    assert [b.residual for b in spec.blocks] == [b.residual for b in plain.blocks]


@pytest.mark.parametrize("arch, output_stride", list(EXPECTED))
def test_built_convs_and_output_shape_follow_the_spec(arch, output_stride):
    config = ModelConfig(
        arch=arch, alpha=0.35, resolution=97, output_stride=output_stride, num_classes=0
    )
    model = build_model(config).eval()
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for layer in model.spec.layers:
        conv = convs[layer.name]
        assert (conv.stride, conv.dilation) == ((layer.stride,) * 2, (layer.dilation,) * 2)
        assert conv.padding == (layer.dilation * (layer.kernel // 2),) * 2  # keeps the size
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 97, 97))
        taps = model.forward_taps(torch.randn(1, 3, 97, 97))
    last = model.spec.feature_blocks[-1]
    assert tuple(features.shape) == (1, last.out_channels, last.out_size, last.out_size)
    assert last.out_size == -(-97 // output_stride)
    assert {name: tuple(x.shape[1:]) for name, x in taps.items()} == {
        tap.name: (tap.channels, tap.size, tap.size) for tap in model.spec.taps
    }
    # Taps are named by output stride: none deeper than the target.
    assert max(tap.stride for tap in model.spec.taps) == output_stride


# --- Parity with timm ----------------------------------------------------------------------------

# timm's EfficientNetBuilder (timm/models/_efficientnet_builder.py, timm 1.0) applies the same rule:
# for a block with stride > 1 whose output would pass output_stride, it sets stride 1, builds the
# block with the current dilation, and multiplies the dilation by the stride for the blocks after
# it; only conv_dw takes the dilation (1x1 convs do not). Its MobileNetV1 and V2 use that builder.
# ``features_only=True, out_indices=(4,)`` gives the same 320-channel map (reduction 16 or 8), but
# its state dict lacks conv_head and classifier, which the conversion maps; so the full model is
# built and its stem and blocks run by hand.
TIMM_NAMES = {"mobilenet_v1": "mobilenetv1_100", "mobilenet_v2": "mobilenetv2_100"}
PARITY_SIZE = 97  # odd: symmetric padding at stride 2 on odd sides, as at 513
TOLERANCE = 1e-4


def timm_and_ours(arch: str, output_stride: int) -> tuple[nn.Module, nn.Module]:
    """timm's model at ``output_stride`` with random weights and non-trivial BN statistics, and
    ours with the same weights converted from its state dict."""
    torch.manual_seed(0)
    reference = timm.create_model(TIMM_NAMES[arch], output_stride=output_stride, pretrained=False)
    reference = randomize_torch(reference)
    config = ModelConfig(arch=arch, resolution=PARITY_SIZE, output_stride=output_stride)
    state, numerics, _ = convert_state_dict(reference.state_dict(), config, "timm")
    ours = build_model(numerics).eval()
    ours.load_state_dict(state, strict=True)
    return reference, ours


@pytest.mark.parametrize("arch, output_stride", list(EXPECTED))
def test_features_and_logits_equal_timm(arch, output_stride):
    reference, ours = timm_and_ours(arch, output_stride)
    images = torch.randn(2, 3, PARITY_SIZE, PARITY_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # timm's forward_features ends with V2's 1x1 conv to 1280; the map DeepLab reads (320
        # channels for V2, 1024 for V1) is the output of its blocks.
        theirs = reference.blocks(reference.bn1(reference.conv_stem(images)))
        mine = ours.blocks(ours.stem(images))
        their_logits, my_logits = reference(images), ours(images)
    side = -(-PARITY_SIZE // output_stride)
    channels = {"mobilenet_v1": 1024, "mobilenet_v2": 320}[arch]
    assert mine.shape == theirs.shape == (2, channels, side, side)
    assert (theirs[0] - theirs[1]).abs().max() > 1e-2  # the weights carry the input through
    assert (mine - theirs).abs().max() < TOLERANCE
    assert (my_logits - their_logits).abs().max() < TOLERANCE


def test_parity_sees_the_dilation():
    """The comparison above would catch a misplaced rate: the same weights with blocks.14-16
    undilated compute other features."""
    reference, ours = timm_and_ours("mobilenet_v2", 16)
    images = torch.randn(1, 3, PARITY_SIZE, PARITY_SIZE)
    with torch.no_grad():
        theirs = reference.blocks(reference.bn1(reference.conv_stem(images)))
        for block in ours.blocks[14:]:
            block.conv_dw.dilation, block.conv_dw.padding = (1, 1), (1, 1)
        undilated = ours.blocks(ours.stem(images))
    assert (undilated - theirs).abs().max() > 1e-2


def test_v1_and_v2_classes_take_output_stride():
    assert MobileNetV1(alpha=0.25, output_stride=8).config.output_stride == 8
    assert (
        depthwise(MobileNetV1(alpha=0.25, resolution=513, output_stride=8).spec)
        == EXPECTED["mobilenet_v1", 8]
    )
