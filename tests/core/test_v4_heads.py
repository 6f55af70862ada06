"""Every task on MobileNetV4: SSDLite reads the taps C4 and C5, DeepLabv3 reads C3 and C5; the
counts are analysed, built and measured alike; a hybrid stops at output stride 16; BN folding
and the layer-scale fold keep a V4's outputs."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mobilenets import MobileNetsError, cost
from mobilenets.core.blocks_v4 import LayerScale
from mobilenets.core.models import MobileNetV4
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.registry import get_entry
from mobilenets.zoo.segmenters import create_segmenter


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Small nets at small sizes: one intra-op thread (see conftest)."""


def built_and_measured(model, size):
    """Parameters of a model built on meta and the MACs torch counts (FLOPs / 2)."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device="meta"))
    return params, counter.get_total_flops() // 2


# params and MACs at the task's default size (SSDLite 320, DeepLabv3 513 at output stride 16,
# no ASPP, 91 and 21 classes): analysed, and equal to the model built and measured below
V4_TASKS = {
    "ssdlite_mobilenet_v4_conv_small": (3_119_615, 482_483_904),
    "ssdlite_mobilenet_v4_hybrid_medium": (10_439_887, 2_134_925_504),
    "deeplabv3_mobilenet_v4_conv_small": (1_891_189, 2_130_791_776),
    "deeplabv3_mobilenet_v4_hybrid_medium": (9_191_813, 13_800_826_128),
}


@pytest.mark.parametrize("name", list(V4_TASKS))
def test_v4_task_models_are_analysed_as_built_and_measured(name):
    report = cost(name)
    assert (report.params, report.macs) == V4_TASKS[name]
    config = get_entry(name).config
    build = create_detector if name.startswith("ssdlite_") else create_segmenter
    with torch.device("meta"):
        model = build(name).eval()
    assert built_and_measured(model, config.resolution) == V4_TASKS[name]


def test_ssdlite_on_v4_reads_c4_and_c5():
    small = create_detector("ssdlite_mobilenet_v4_conv_small", resolution=320).spec.maps
    assert [(m.tap, m.channels, m.size) for m in small[:2]] == [("C4", 96, 20), ("C5", 960, 10)]
    with torch.device("meta"):
        hybrid = create_detector("ssdlite_mobilenet_v4_hybrid_medium", resolution=320).spec.maps
    assert [(m.tap, m.channels, m.size) for m in hybrid[:2]] == [("C4", 160, 20), ("C5", 960, 10)]


def test_deeplabv3_on_v4_runs_and_a_hybrid_stops_at_output_stride_16():
    model = create_segmenter(
        "deeplabv3_mobilenet_v4_conv_small", num_classes=3, resolution=65, output_stride=8
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 65)).shape == (1, 3, 65, 65)
    assert get_entry("deeplabv3_mobilenet_v4_hybrid_medium").config.backbone.output_stride == 16
    with pytest.raises(MobileNetsError, match="allowed output strides for") as error:
        create_segmenter("deeplabv3_mobilenet_v4_hybrid_medium", output_stride=8)
    assert "at --output-stride 8" in str(error.value) or "output_stride" in str(error.value)


def randomized(model: nn.Module) -> nn.Module:
    """BN statistics and affine parts, and layer scales, far from their initial values, so that a
    fold that dropped one would show."""
    generator = torch.Generator().manual_seed(0)

    def uniform(tensor, low, high):
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                uniform(module.running_mean, -1, 1)
                uniform(module.running_var, 0.5, 2)
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.5, 0.5)
            elif isinstance(module, LayerScale):
                uniform(module.weight, 0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("model", ["conv_small", "hybrid_medium"])
def test_folding_a_v4_keeps_its_outputs_and_leaves_no_bn_or_layer_scale(model):
    torch.manual_seed(0)
    reference = randomized(MobileNetV4(model, alpha=0.5, resolution=64, num_classes=10))
    folded, count = fold_batch_norm(reference)
    bns = sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in reference.modules())
    assert count == bns
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, LayerScale)) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), folded(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert any(isinstance(m, LayerScale) for m in reference.modules()) == (model != "conv_small")
