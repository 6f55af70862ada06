"""Every task on MobileNetV3 (Howard et al. 2019, sections 6.2-6.4): SSDLite and LR-ASPP on the
reduced tail, DeepLabv3 on a V3 backbone; their counts against the paper and torchvision."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilenets import MobileNetsError, ModelConfig, cost, save_weights
from mobilenets.core.detection_spec import SSD_ASPECT_RATIOS, DetectionConfig
from mobilenets.core.segmentation_cost import rectangular_macs, v3_table7
from mobilenets.core.segmentation_spec import SegmentationConfig
from mobilenets.core.segmenter import LRASPP, DeepLabV3, build_segmenter, load_segmenter
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.registry import get_entry
from mobilenets.zoo.segmenters import create_segmenter


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Small nets at small sizes: one intra-op thread (see conftest)."""


def built_and_measured(model, height, width):
    """Parameters of a model built on meta and the MACs torch counts (FLOPs / 2)."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, height, width, device="meta"))
    return params, counter.get_total_flops() // 2


# --- SSDLite on V3: paper Table 6 --------------------------------------------------------------

# 91 classes, 320 px, TF's layout (3 boxes on map 0), the reduced tail: params with BN, without
# BN, and MACs. Table 6: V3-Large 3.22M / 0.51B, V3-Small 1.77M / 0.16B: both figures are the
# params without BN scale and shift, rounded, and our MACs, rounded.
SSDLITE_V3 = {
    "ssdlite_mobilenet_v3_large": (3_248_255, 3_215_311, 506_563_904, 3.22, 0.51),
    "ssdlite_mobilenet_v3_small": (1_785_743, 1_765_279, 162_303_424, 1.77, 0.16),
}


@pytest.mark.parametrize("name", list(SSDLITE_V3))
def test_ssdlite_v3_golden_counts_reproduce_table6(name):
    params, without_bn, macs, paper_params_m, paper_macs_b = SSDLITE_V3[name]
    report = cost(name)
    print(name, report.params, report.params - report.bn_params, report.macs)
    assert (report.params, report.params - report.bn_params, report.macs) == (
        params,
        without_bn,
        macs,
    )
    assert round(without_bn / 1e6, 2) == paper_params_m
    assert round(macs / 1e9, 2) == paper_macs_b
    config = get_entry(name).config
    assert config.backbone.reduced_tail and config.resolution == 320
    assert config.name == f"{name}_1.0_320_reduced_tail"
    with torch.device("meta"):
        model = create_detector(name).eval()
    assert built_and_measured(model, 320, 320) == (params, macs)


def test_ssdlite_v3_reads_the_expansion_of_the_first_stride_32_block_and_the_head_conv():
    maps = create_detector("ssdlite_mobilenet_v3_large", resolution=320).spec.maps
    assert [(m.tap, m.channels, m.size) for m in maps[:2]] == [
        ("C4_expansion", 672, 20),
        ("C5", 480, 10),
    ]
    small = create_detector("ssdlite_mobilenet_v3_small", resolution=320).spec.maps
    assert [(m.channels, m.size) for m in small[:2]] == [(288, 20), (288, 10)]


# torchvision's ssdlite320_mobilenet_v3_large (weights_backbone=None): 3,440,060 parameters. Its
# backbone and extras are ours; its heads put six boxes on every map, TF's three on the first.
TORCHVISION_SSDLITE_V3 = 3_440_060


def test_ssdlite_v3_with_torchvisions_six_boxes_per_map_has_its_parameters():
    config = DetectionConfig(
        ModelConfig(arch="mobilenet_v3_large", reduced_tail=True),
        aspect_ratios=(SSD_ASPECT_RATIOS,) * 6,
        lowest_scale=None,
    )
    assert cost(config).params == TORCHVISION_SSDLITE_V3
    detection = pytest.importorskip("torchvision.models.detection")
    reference = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    assert sum(p.numel() for p in reference.parameters()) == TORCHVISION_SSDLITE_V3


# --- LR-ASPP: V3 section 6.4 and Table 7 -------------------------------------------------------

# 19 classes, output stride 16, the reduced tail, F = 128: params (BN counted, not counted) and
# MACs of one 1024 x 2048 image. Table 7: 1.51M / 9.74B and 0.47M / 2.90B (see the docs page).
V3_TABLE7_OURS = {
    "mobilenet_v3_large": (1_746_878, 1_727_502, 9_915_229_056),
    "mobilenet_v3_small": (515_614, 506_414, 2_831_991_808),
}


def test_v3_table7_rows_ours_pinned():
    rows = v3_table7()
    assert [row.paper.arch for row in rows] == list(V3_TABLE7_OURS)
    for row in rows:
        print(row.paper, row.params, row.params_without_bn, row.macs)
        assert (row.params, row.params_without_bn, row.macs) == V3_TABLE7_OURS[row.paper.arch]
        assert row.config.head == "lraspp" and row.config.backbone.reduced_tail
        assert row.config.output_stride == 16 and row.config.head_channels == 128
        # Within 2.5% of the paper's MAdds; the parameters are above its figure (docs).
        assert abs(row.macs / (row.paper.madds_b * 1e9) - 1) < 0.025
        assert row.params_without_bn > row.paper.params_m * 1e6


@pytest.mark.parametrize("arch", list(V3_TABLE7_OURS))
def test_lraspp_analytic_equals_built_equals_measured_at_1024x2048(arch):
    config = v3_table7()[list(V3_TABLE7_OURS).index(arch)].config
    with torch.device("meta"):
        model = build_segmenter(config).eval()
    params, _, macs = V3_TABLE7_OURS[arch]
    assert built_and_measured(model, 1024, 2048) == (params, macs)
    assert rectangular_macs(config, 1024, 2048) == macs


@pytest.mark.parametrize(
    "config",
    [
        SegmentationConfig(ModelConfig(arch="mobilenet_v3_small"), resolution=97, head="lraspp"),
        SegmentationConfig(
            ModelConfig(arch="mobilenet_v3_large", alpha=0.75, reduced_tail=True),
            resolution=65,
            num_classes=5,
            output_stride=8,
            head="lraspp",
        ),
        SegmentationConfig(ModelConfig(arch="mobilenet_v2"), resolution=65, head="lraspp"),
    ],
    ids=["v3-small", "v3-large-0.75-os8", "v2"],
)
def test_lraspp_square_analytic_equals_built_equals_measured(config):
    report = cost(config)
    with torch.device("meta"):
        model = build_segmenter(config).eval()
    side = config.resolution
    assert built_and_measured(model, side, side) == (report.params, report.macs)


# torchvision's lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21):
# 3,221,538 parameters, the same network (its backbone has no reduced tail: 960 channels).
TORCHVISION_LRASPP = 3_221_538


def test_lraspp_has_torchvisions_parameters_and_keys():
    config = SegmentationConfig(ModelConfig(arch="mobilenet_v3_large"), head="lraspp")
    assert cost(config).params == TORCHVISION_LRASPP
    with torch.device("meta"):
        model = build_segmenter(config)
    head = {k for k in model.state_dict() if not k.startswith("backbone.")}
    assert head == {
        "head.branch.conv.weight",
        *(f"head.branch.bn.{k}" for k in ("weight", "bias", "running_mean", "running_var")),
        "head.branch.bn.num_batches_tracked",
        "head.gate.conv.weight",
        "classifier.weight",
        "classifier.bias",
        "low_classifier.weight",
        "low_classifier.bias",
    }
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    reference = segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21
    )
    assert sum(p.numel() for p in reference.parameters()) == TORCHVISION_LRASPP


def test_lraspp_computes_figure_10():
    """The logits are the low classifier on the stride-8 map plus the classifier on the gated,
    upsampled branch, upsampled to the input."""
    torch.manual_seed(0)
    model = create_segmenter("lraspp_mobilenet_v3_small", num_classes=3, resolution=64).eval()
    images = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        high, low = model.forward_features(images)
        assert (high.shape[1:], low.shape[1:]) == ((288, 4, 5), (24, 8, 10))
        branch = model.head.branch(high)
        gate = torch.sigmoid(model.head.gate.conv(high.mean((2, 3), keepdim=True)))
        up = torch.nn.functional.interpolate(branch * gate, size=(8, 10), mode="bilinear")
        logits = model.low_classifier(low) + model.classifier(up)
        expected = torch.nn.functional.interpolate(logits, size=(64, 80), mode="bilinear")
        assert torch.allclose(model(images), expected, atol=1e-6)
    assert model(images).shape == (2, 3, 64, 80)


def test_lraspp_every_parameter_gets_a_gradient():
    model = create_segmenter("lraspp_mobilenet_v3_small", num_classes=3, resolution=64)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_lraspp_names_defaults_and_errors():
    entry = get_entry("lraspp_mobilenet_v3_large")
    config = entry.config
    assert isinstance(create_segmenter(config.replace(resolution=64)), LRASPP)
    assert (config.head, config.head_channels, config.dropout) == ("lraspp", 128, 0.0)
    assert config.name == "lraspp_mobilenet_v3_large_1.0_513_os16_reduced_tail"
    # The head's defaults follow the head; explicit ones stay.
    deeplab = config.replace(head="deeplabv3")
    assert (deeplab.head_channels, deeplab.dropout, deeplab.arch) == (
        256,
        0.1,
        "deeplabv3_mobilenet_v3_large",
    )
    assert config.replace(head_channels=64).replace(head="deeplabv3").head_channels == 64
    assert SegmentationConfig.from_dict(config.to_dict()) == config
    for arguments, message in [
        ({"head": "fcn"}, "head must be one of deeplabv3, lraspp, got 'fcn'"),
        ({"head": "lraspp", "aspp": True}, "LR-ASPP has neither, got aspp=True, aux=False"),
        ({"head": "lraspp", "aux": True}, "LR-ASPP has neither, got aspp=False, aux=True"),
        ({"head": "lraspp", "dropout": 0.1}, "LR-ASPP has no dropout .* got 0.1"),
    ]:
        with pytest.raises(MobileNetsError, match=message):
            SegmentationConfig(ModelConfig(arch="mobilenet_v3_small"), **arguments)
    with pytest.raises(MobileNetsError, match="DeepLabV3 builds head='deeplabv3', got .*'lraspp'"):
        DeepLabV3(config)
    with pytest.raises(MobileNetsError, match="has no auxiliary head"):
        create_segmenter(config.replace(resolution=64))(torch.randn(1, 3, 64, 64), with_aux=True)


def test_lraspp_weights_round_trip(tmp_path):
    model = create_segmenter("lraspp_mobilenet_v3_small", num_classes=4, resolution=64).eval()
    path = tmp_path / "lraspp.safetensors"
    save_weights(model, path)
    loaded = load_segmenter(path).eval()
    assert isinstance(loaded, LRASPP) and loaded.config == model.config
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


# --- DeepLabv3 on a V3 backbone -----------------------------------------------------------------

# torchvision's deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21):
# 11,025,477 parameters. Its head is ASPP (rates 12, 24, 36) with a 3x3 conv (256, BN, ReLU)
# before the classifier that TF DeepLab's has not: 256 * 256 * 9 + 2 * 256 = 590,336 more.
TORCHVISION_DEEPLABV3_V3 = 11_025_477
EXTRA_3X3 = 256 * 256 * 9 + 2 * 256


def test_deeplabv3_on_v3_against_torchvision():
    config = SegmentationConfig(ModelConfig(arch="mobilenet_v3_large"), aspp=True)
    assert config.backbone.output_stride == 16
    assert cost(config).params == TORCHVISION_DEEPLABV3_V3 - EXTRA_3X3 == 10_435_141
    assert cost("deeplabv3_mobilenet_v3_large").params == 3_601_477  # no ASPP: MNet V2* style
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    reference = segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=False
    )
    assert sum(p.numel() for p in reference.parameters()) == TORCHVISION_DEEPLABV3_V3


def test_deeplabv3_on_v3_small_runs_with_aux_and_is_measured_as_analysed():
    model = create_segmenter(
        "deeplabv3_mobilenet_v3_small", num_classes=3, resolution=65, aux=True, alpha=0.75
    )
    logits, aux = model(torch.randn(2, 3, 65, 65), with_aux=True)
    assert logits.shape == aux.shape == (2, 3, 65, 65)
    config = model.config.replace(aux=False)
    with torch.device("meta"):
        built = build_segmenter(config).eval()
    assert built_and_measured(built, 65, 65) == (cost(config).params, cost(config).macs)
