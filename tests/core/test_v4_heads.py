"""Every task on MobileNetV4: SSDLite reads the taps C4 and C5, DeepLabv3 reads C3 and C5; the
counts are analysed, built and measured alike; a hybrid stops at output stride 16; BN folding
and the layer-scale fold keep a V4's outputs."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mobilenets import MobileNetsError, cost
from mobilenets.core.blocks_v4 import LayerScale
from mobilenets.core.detection_spec import resolve_detection
from mobilenets.core.models import MobileNetV4
from mobilenets.core.segmentation_spec import resolve_segmentation
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
# no ASPP; 91 and 21 classes), then at 128 px, where the built model is measured (cheaper)
V4_TASKS = {
    "ssdlite_mobilenet_v4_conv_small": (3_119_615, 482_483_904, 77_244_736),
    "ssdlite_mobilenet_v4_hybrid_medium": (10_439_887, 2_134_925_504, 327_872_832),
    "deeplabv3_mobilenet_v4_conv_small": (1_891_189, 2_130_791_776, 126_480_384),
    "deeplabv3_mobilenet_v4_hybrid_medium": (9_191_813, 13_800_826_128, 644_354_048),
}


@pytest.mark.parametrize("name", list(V4_TASKS))
def test_v4_task_models_are_analysed_as_built_and_measured(name):
    params, macs, macs_at_128 = V4_TASKS[name]
    report = cost(name)
    assert (report.params, report.macs) == (params, macs)
    assert cost(name, resolution=128).macs == macs_at_128
    build = create_detector if name.startswith("ssdlite_") else create_segmenter
    with torch.device("meta"):
        model = build(name, resolution=128).eval()
    assert built_and_measured(model, 128) == (params, macs_at_128)


def test_ssdlite_on_v4_reads_c4_and_c5_and_deeplabv3_c3_and_c5():
    for name, channels in (("conv_small", 96), ("hybrid_medium", 160)):
        config = get_entry(f"ssdlite_mobilenet_v4_{name}").config
        maps = resolve_detection(config).maps
        assert [(m.tap, m.channels, m.size) for m in maps[:2]] == [
            ("C4", channels, 20),
            ("C5", 960, 10),
        ]
    segmenter = resolve_segmentation(get_entry("deeplabv3_mobilenet_v4_conv_small").config)
    # DeepLabv3 on V4: the auxiliary head reads C3 (stride 8), the head C5 (the 960 head conv)
    stride8 = segmenter.backbone.blocks[segmenter.aux_block]
    assert (stride8.out_channels, stride8.out_size) == (64, 65)
    last = [block for block in segmenter.blocks if block.name.startswith("backbone.")][-1]
    assert (last.name, last.out_channels, last.out_size) == ("backbone.head", 960, 33)


def test_deeplabv3_on_v4_runs_and_a_hybrid_stops_at_output_stride_16():
    model = create_segmenter(
        "deeplabv3_mobilenet_v4_conv_small", num_classes=3, resolution=65, output_stride=8
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 65)).shape == (1, 3, 65, 65)
    assert get_entry("deeplabv3_mobilenet_v4_hybrid_medium").config.backbone.output_stride == 16
    with pytest.raises(MobileNetsError) as error:
        create_segmenter("deeplabv3_mobilenet_v4_hybrid_medium", output_stride=8)
    assert str(error.value).startswith("mobilenet_v4_hybrid_medium at output_stride=8: ")
    assert str(error.value).endswith(
        "allowed output strides for mobilenet_v4_hybrid_medium: 16, or None (32)"
    )


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
    assert not any(
        isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, LayerScale)) for m in folded.modules()
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), folded(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert any(isinstance(m, LayerScale) for m in reference.modules()) == (model != "conv_small")
