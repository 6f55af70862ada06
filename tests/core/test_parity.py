"""Architecture parity: with a reference model's weights copied in tensor by tensor, our models
compute the same logits as torchvision's and timm's."""

import pytest
import timm
import torch
import torchvision
from random_weights import randomize_torch
from torch import nn

from mobilenets import MobileNetV1, MobileNetV2, MobileNetV3Large, MobileNetV3Small


def copy_by_position(source: nn.Module, target: nn.Module) -> None:
    """Copy every state tensor in order; the two architectures must agree tensor by tensor."""
    theirs, ours = source.state_dict(), target.state_dict()
    assert len(theirs) == len(ours)
    mapped = {}
    for (their_key, tensor), (our_key, slot) in zip(theirs.items(), ours.items(), strict=True):
        assert tensor.shape == slot.shape, f"{their_key} {tuple(tensor.shape)} -> {our_key}"
        mapped[our_key] = tensor
    target.load_state_dict(mapped, strict=True)


def assert_same_logits(reference: nn.Module, ours: nn.Module, resolution: int = 224) -> None:
    torch.manual_seed(0)
    randomize_torch(reference)
    copy_by_position(reference, ours)
    reference.eval(), ours.eval()
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert actual.shape == expected.shape
    # The weights carry the input through: two images give different logits.
    assert (expected[0] - expected[1]).abs().max().item() > 1e-2
    assert (actual - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.4])
def test_torchvision_mobilenet_v2(alpha):
    assert_same_logits(torchvision.models.mobilenet_v2(width_mult=alpha), MobileNetV2(alpha=alpha))


@pytest.mark.parametrize(
    "builder, ours",
    [
        ("mobilenet_v3_large", {}),
        ("mobilenet_v3_small", {}),
        ("mobilenet_v3_large", {"width_mult": 0.75}),
        ("mobilenet_v3_small", {"reduced_tail": True}),
    ],
    ids=["large", "small", "large-0.75", "small-reduced-tail"],
)
def test_torchvision_mobilenet_v3(builder, ours):
    """h-swish, the SE gate and the pre-logits layer compute what torchvision's do; its V3 uses
    BN eps 1e-3, and its width_mult is our torchvision width rule."""
    reference = getattr(torchvision.models, builder)(**ours)
    alpha = ours.get("width_mult", 1.0)
    model = {"mobilenet_v3_large": MobileNetV3Large, "mobilenet_v3_small": MobileNetV3Small}[
        builder
    ](
        alpha=alpha,
        width_rule="torchvision",
        reduced_tail=ours.get("reduced_tail", False),
        bn_eps=1e-3,
    )
    assert_same_logits(reference, model, resolution=160)


@pytest.mark.parametrize(
    "name, ours",
    [
        ("mobilenetv1_100", lambda: MobileNetV1()),
        ("mobilenetv2_100", lambda: MobileNetV2()),
        ("mobilenetv2_050", lambda: MobileNetV2(alpha=0.5)),
    ],
)
def test_timm(name, ours):
    assert_same_logits(timm.create_model(name, pretrained=False), ours(), resolution=160)
