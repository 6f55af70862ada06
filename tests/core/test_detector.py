"""SSDLite on MobileNetV2: the resolved spec, default boxes, the module, its cost, backbone init."""

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilenets import MobileNetsError, MobileNetV1, MobileNetV2, cost, save_weights
from mobilenets.cli import main
from mobilenets.core.anchors import box_shapes, default_boxes, ssd_scales
from mobilenets.core.detection_spec import DetectionConfig, resolve_detection
from mobilenets.core.detector import SSDLite, load_detector
from mobilenets.core.models import Conv2dSame
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.registry import get_entry, resolve_detection_config

SQRT2 = math.sqrt(2)
PAPER_PARAMS, PAPER_MACS = 4.3e6, 0.8e9  # V2 Table 6, SSDLite


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every forward here is a small net: one intra-op thread (see conftest)."""


def small(resolution=300, num_classes=5, **overrides) -> SSDLite:
    return create_detector(alpha=0.35, resolution=resolution, num_classes=num_classes, **overrides)


# --- Default boxes -------------------------------------------------------------------------------


def test_default_boxes_by_hand():
    """Two maps, 2x2 and 1x1, scales 0.2 and 0.8 (then 1.0), ratios (1, 2) and (1,)."""
    shapes = box_shapes(((1.0, 2.0), (1.0,)), min_scale=0.2, max_scale=0.8, lowest_scale=None)
    # Map 0: (0.2, 1), (0.2, 2), extra sqrt(0.2 * 0.8) = 0.4. Map 1: (0.8, 1), extra sqrt(0.8).
    assert shapes == (((0.2, 1.0), (0.2, 2.0), (0.4, 1.0)), ((0.8, 1.0), (math.sqrt(0.8), 1.0)))
    w2, h2 = 0.2 * SQRT2, 0.2 / SQRT2
    expected = [
        # row 0, column 0: centre (0.25, 0.25)
        [0.25, 0.25, 0.2, 0.2],
        [0.25, 0.25, w2, h2],
        [0.25, 0.25, 0.4, 0.4],
        # row 0, column 1: x moves first
        [0.75, 0.25, 0.2, 0.2],
        [0.75, 0.25, w2, h2],
        [0.75, 0.25, 0.4, 0.4],
        # row 1
        [0.25, 0.75, 0.2, 0.2],
        [0.25, 0.75, w2, h2],
        [0.25, 0.75, 0.4, 0.4],
        [0.75, 0.75, 0.2, 0.2],
        [0.75, 0.75, w2, h2],
        [0.75, 0.75, 0.4, 0.4],
        # the 1x1 map
        [0.5, 0.5, 0.8, 0.8],
        [0.5, 0.5, math.sqrt(0.8), math.sqrt(0.8)],
    ]
    boxes = default_boxes([2, 1], shapes, dtype=torch.float64)
    assert boxes.shape == (14, 4) == (2 * 2 * 3 + 1 * 1 * 2, 4)
    torch.testing.assert_close(boxes, torch.tensor(expected, dtype=torch.float64))
    assert default_boxes([2, 1], shapes).dtype == torch.float32


def test_lowest_map_follows_tf_reduce_boxes_in_lowest_layer():
    shapes = box_shapes(((1.0, 2.0, 0.5), (1.0, 3.0)), 0.2, 0.8, lowest_scale=0.1)
    assert shapes[0] == ((0.1, 1.0), (0.2, 2.0), (0.2, 0.5))  # no extra box on map 0
    assert shapes[1] == ((0.8, 1.0), (0.8, 3.0), (math.sqrt(0.8), 1.0))
    boxes = default_boxes([1, 1], shapes, dtype=torch.float64)
    torch.testing.assert_close(
        boxes[1], torch.tensor([0.5, 0.5, 0.2 * SQRT2, 0.2 / SQRT2], dtype=torch.float64)
    )


def test_ssdlite_scales_and_box_shapes():
    expected = (0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0)
    assert ssd_scales(6, 0.2, 0.95) == pytest.approx(expected)
    maps = resolve_detection(resolve_detection_config("ssdlite_mobilenet_v2")).maps
    assert maps[0].shapes == ((0.1, 1.0), (0.2, 2.0), (0.2, 0.5))
    assert [m.num_anchors for m in maps] == [3, 6, 6, 6, 6, 6]
    scale, next_scale = expected[2], expected[3]
    ratios = (1.0, 2.0, 0.5, 3.0, 1 / 3, 1.0)
    extra = math.sqrt(scale * next_scale)
    assert [r for _, r in maps[2].shapes] == list(ratios)
    assert [s for s, _ in maps[2].shapes] == pytest.approx([scale] * 5 + [extra])
    assert maps[5].shapes[-1] == pytest.approx((math.sqrt(0.95 * 1.0), 1.0))


def test_boxes_are_not_clipped_unless_asked():
    boxes = resolve_detection(resolve_detection_config("ssdlite_mobilenet_v2")).default_boxes()
    last = boxes[-6:]  # the 1x1 map: its ratio-2 box at scale 0.95 is 0.95 * sqrt(2) wide
    assert last[1, 2].item() == pytest.approx(0.95 * SQRT2) and last[1, 2] > 1
    clipped = default_boxes([1], [((0.95, 2.0),)], clip=True, dtype=torch.float64)
    torch.testing.assert_close(
        clipped, torch.tensor([[0.5, 0.5, 1.0, 0.95 / SQRT2]], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "resolution, sizes, total",
    [(300, [19, 10, 5, 3, 2, 1], 1917), (320, [20, 10, 5, 3, 2, 1], 2034)],
)
def test_map_sizes_and_number_of_boxes(resolution, sizes, total):
    spec = resolve_detection(
        resolve_detection_config("ssdlite_mobilenet_v2", resolution=resolution)
    )
    assert [m.size for m in spec.maps] == sizes
    assert [m.channels for m in spec.maps] == [576, 1280, 512, 256, 256, 128]
    assert [m.source for m in spec.maps] == [
        "backbone.blocks.13.act1",
        "backbone.head",
        "extras.0",
        "extras.1",
        "extras.2",
        "extras.3",
    ]
    assert spec.num_boxes == sum(m.size**2 * m.num_anchors for m in spec.maps) == total
    assert spec.default_boxes().shape == (total, 4)
    # The extras' 1x1 reductions to d/2 (TF: 256, 128, 128, 64).
    assert [block.layers[0].out_channels for block in spec.extras] == [256, 128, 128, 64]


# --- The module against the spec -----------------------------------------------------------------


@pytest.mark.parametrize("resolution", [300, 320])
def test_feature_maps_and_head_outputs_have_the_spec_shapes(resolution):
    model = small(resolution).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, resolution, resolution))
        out = model(torch.randn(2, 3, resolution, resolution))
    assert [tuple(x.shape[1:]) for x in features] == [
        (m.channels, m.size, m.size) for m in model.spec.maps
    ]
    boxes = model.spec.num_boxes
    assert out["cls_logits"].shape == (2, boxes, 5)
    assert out["box_regression"].shape == (2, boxes, 4)
    assert model.anchors().shape == (boxes, 4)
    for head, feature_map in zip(model.spec.class_heads, model.spec.maps, strict=True):
        assert head.layers[-1].out_channels == feature_map.num_anchors * 5


def test_full_size_forward_at_300():
    model = create_detector(resolution=300).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 300, 300))
    assert out["cls_logits"].shape == (1, 1917, 91)
    assert out["box_regression"].shape == (1, 1917, 4)


def test_outputs_follow_the_default_box_order():
    """Output row r of map k is anchor type a at location (i, j) exactly when default box r is."""
    model = small(300, num_classes=3).eval()
    images = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        features, out = model.forward_features(images), model(images)
    k, i, j, a = 1, 7, 3, 4  # map 1 is 10x10 with six anchor types
    feature_map = model.spec.maps[k]
    row = model.spec.maps[0].num_boxes + (i * feature_map.size + j) * feature_map.num_anchors + a
    box = model.anchors()[row]
    assert box[:2].tolist() == pytest.approx([(j + 0.5) / 10, (i + 0.5) / 10])
    scale, ratio = feature_map.shapes[a]
    assert box[2:].tolist() == pytest.approx([scale * math.sqrt(ratio), scale / math.sqrt(ratio)])
    head = model.class_heads[k]
    with torch.no_grad():
        raw = head.conv_pw(head.act(head.bn(head.conv_dw(features[k]))))  # [1, a * C, H, W]
    torch.testing.assert_close(out["cls_logits"][0, row], raw[0, a * 3 : a * 3 + 3, i, j])


def test_channels_last_gives_the_same_outputs():
    model = small(300).eval()
    images = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        reference = model(images)
        model = model.to(memory_format=torch.channels_last)
        out = model(images.contiguous(memory_format=torch.channels_last))
    for key in ("cls_logits", "box_regression"):
        torch.testing.assert_close(out[key], reference[key], rtol=1e-4, atol=1e-5)


def test_module_names_are_the_spec_names_and_params_match():
    model = small(320)
    spec_keys = {f"{layer.name}.weight" for layer in model.spec.layers}
    conv_keys = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d)
    }
    assert spec_keys == conv_keys
    assert "backbone.blocks.13.conv_pw.weight" in spec_keys
    assert {"extras.3.conv_reduce.weight", "box_heads.5.conv_pw.bias"} <= set(model.state_dict())
    assert "default_boxes" not in model.state_dict()  # follows from the config, not a weight
    assert sum(p.numel() for p in model.parameters()) == cost(model).params


def measured(name="ssdlite_mobilenet_v2", **overrides):
    """Parameters of the built detector and MACs counted by torch (FLOPs / 2), on meta."""
    with torch.device("meta"):
        model = create_detector(name, **overrides).eval()
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        side = model.resolution
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, side, side))
    return params, counter.get_total_flops() // 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"resolution": 300},
        {"resolution": 320},
        {"alpha": 0.35, "resolution": 257, "num_classes": 21},
    ],
)
def test_analytic_equals_built_equals_measured(overrides):
    report = cost("ssdlite_mobilenet_v2", **overrides)
    assert (report.params, report.macs) == measured(**overrides)


def test_mobilenet_v1_backbone_gives_tf_ssd_mobilenet_v1_maps():
    """V1's family names C4 and C5 for SSDLite's first two maps (TF's ssd_mobilenet_v1 reads
    Conv2d_11_pointwise and Conv2d_13_pointwise): the same heads, no V1 code in the detector."""
    spec = resolve_detection(DetectionConfig(MobileNetV1().config, resolution=300))
    assert [(m.tap, m.source, m.channels, m.size, m.stride) for m in spec.maps[:2]] == [
        ("C4", "backbone.blocks.10", 512, 19, 16),
        ("C5", "backbone.blocks.12", 1024, 10, 32),
    ]
    overrides = {"alpha": 0.25, "resolution": 64, "num_classes": 3}
    report = cost("ssdlite_mobilenet_v1", **overrides)
    assert (report.params, report.macs) == measured("ssdlite_mobilenet_v1", **overrides)
    model = create_detector("ssdlite_mobilenet_v1", **overrides)
    out = model(torch.randn(2, 3, 64, 64))
    assert out["cls_logits"].shape == (2, model.spec.num_boxes, 3)


def test_golden_totals_against_the_paper():
    """V2 Table 6: SSDLite 4.3M params, 0.8B MAdds, measured at 320x320 (section 6.2)."""
    at_320 = cost("ssdlite_mobilenet_v2")
    at_300 = cost("ssdlite_mobilenet_v2", resolution=300)
    assert (at_320.resolution, at_320.num_classes) == (320, 91)
    assert (at_320.params, at_320.macs) == (4_500_543, 804_397_504)
    assert (at_300.params, at_300.macs) == (4_500_543, 749_503_856)
    assert at_320.params - at_320.bn_params == 4_449_791  # without BN scale and shift
    assert abs(at_320.params / PAPER_PARAMS - 1) < 0.05  # +4.7%
    assert abs(at_320.macs / PAPER_MACS - 1) < 0.05  # +0.5%
    # TF's config trains at 300: 6.3% fewer MACs than the paper's 320 figure.
    assert abs(at_300.macs / PAPER_MACS - 1) > 0.05
    # A count that rounds to both of the paper's figures: COCO's 80 categories and background,
    # no BN (the README says why this is a reconstruction, not the paper's stated convention).
    coco_80 = cost("ssdlite_mobilenet_v2", num_classes=81)
    assert (coco_80.params - coco_80.bn_params, coco_80.macs) == (4_286_261, 788_830_144)
    assert round(coco_80.params - coco_80.bn_params, -5) == PAPER_PARAMS
    assert round(coco_80.macs, -8) == PAPER_MACS
    (paper,) = get_entry("ssdlite_mobilenet_v2", task="detection").paper
    assert (paper.params_m, paper.macs_m) == (4.3, 800)
    # SSD's heads with full 3x3 convs instead (the standard counterfactual) cost far more.
    assert at_320.standard_params > 5 * at_320.params


def test_every_parameter_gets_a_gradient():
    model = small(64, num_classes=3).train()
    out = model(torch.randn(2, 3, 64, 64))
    (out["cls_logits"].square().mean() + out["box_regression"].square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


# --- Backbone initialization ---------------------------------------------------------------------


def assert_backbone_equal(detector, classifier):
    target = detector.backbone.state_dict()
    copied = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.")}
    assert set(copied) == set(target)
    assert all(torch.equal(target[k], v) for k, v in copied.items())


def test_backbone_from_a_classification_model_and_its_file(tmp_path):
    classifier = MobileNetV2(alpha=0.35, num_classes=10)
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p))
        classifier.blocks[13].bn1.running_var.fill_(3.0)
    detector = small(backbone_weights=classifier)
    assert_backbone_equal(detector, classifier)
    path = save_weights(classifier, tmp_path / "cifar.safetensors")
    assert_backbone_equal(small(backbone_weights=path), classifier)
    torch.save(classifier.state_dict(), tmp_path / "cifar.pt")  # no recorded config
    assert_backbone_equal(small(backbone_weights=tmp_path / "cifar.pt"), classifier)


def test_backbone_takes_the_numerics_of_its_weights():
    classifier = MobileNetV2(alpha=0.35, padding="same", bn_eps=1e-3)
    detector = small(backbone_weights=classifier)
    assert (detector.config.backbone.padding, detector.config.backbone.bn_eps) == ("same", 1e-3)
    assert isinstance(detector.extras[0].conv_dw, Conv2dSame)
    assert detector.class_heads[0].bn.eps == 1e-3
    assert_backbone_equal(detector, classifier)


def test_backbone_from_published_weights_goes_through_create_model(monkeypatch):
    import mobilenets.zoo.transfer

    calls = []

    def fake_create_model(arch, **kwargs):
        calls.append((arch, kwargs))
        return MobileNetV2(alpha=kwargs["alpha"], padding="same", bn_eps=1e-3)

    monkeypatch.setattr(mobilenets.zoo.transfer, "create_model", fake_create_model)
    detector = small(backbone_weights="keras", progress=False)
    ((arch, kwargs),) = calls
    assert arch == "mobilenet_v2"
    assert (kwargs["weights"], kwargs["alpha"], kwargs["resolution"]) == ("keras", 0.35, 224)
    assert detector.config.backbone.padding == "same"


def test_backbone_of_another_architecture_is_refused(tmp_path):
    with pytest.raises(MobileNetsError, match=r"arch 'mobilenet_v1' \(need 'mobilenet_v2'\)"):
        small(backbone_weights=save_weights(MobileNetV1(alpha=0.25), tmp_path / "v1.safetensors"))
    with pytest.raises(MobileNetsError, match=r"alpha 0.5 \(need 0.35\)"):
        small(backbone_weights=MobileNetV2(alpha=0.5))
    torch.save(MobileNetV1(alpha=0.25).state_dict(), tmp_path / "v1.pt")
    with pytest.raises(MobileNetsError, match="does not fit mobilenet_v2_0.35_224"):
        small(backbone_weights=tmp_path / "v1.pt")
    with pytest.raises(MobileNetsError, match="backbone_weights must be"):
        small(backbone_weights=3)
    with pytest.raises(MobileNetsError, match="not both"):
        small(backbone_weights=MobileNetV2(alpha=0.35), weights=tmp_path / "v1.pt")


def test_detector_weights_round_trip(tmp_path):
    model = small(64, padding="same", bn_eps=1e-3)
    path = save_weights(model, tmp_path / "ssdlite.safetensors")
    for loaded in (
        load_detector(path),
        create_detector(alpha=0.35, resolution=64, num_classes=5, weights=path),
    ):
        assert loaded.config == model.config
        state = loaded.state_dict()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(MobileNetsError, match="does not fit ssdlite_mobilenet_v2_0.35_64"):
        create_detector(alpha=0.35, resolution=64, num_classes=7, weights=path)
    assert DetectionConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config


# --- Errors a user can cause ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"resolution": 20}, "resolution must be an integer >= 32 .*got 20"),
        ({"resolution": 300.0}, "resolution must be an integer >= 32 .*got 300.0"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2 .*got 1"),
        ({"alpha": -1.0}, "alpha must be a positive number, got -1.0"),
        ({"rho": 0.5}, r"\['rho'\] do not apply to a detector; allowed: alpha, resolution"),
    ],
)
def test_bad_arguments_name_the_value_and_what_is_allowed(overrides, message):
    with pytest.raises(MobileNetsError, match=message):
        create_detector(**overrides)


def test_bad_configs_and_inputs_are_refused():
    backbone = MobileNetV2(alpha=0.35).config
    with pytest.raises(MobileNetsError, match="one non-empty tuple of positive ratios per feature"):
        DetectionConfig(backbone, aspect_ratios=((1.0,),) * 5)
    with pytest.raises(
        MobileNetsError,
        match=r"the backbone must be a standard mobilenet_v2 \(no small_input, no output_stride\), "
        "got mobilenet_v2_1.0_224_small",
    ):
        DetectionConfig(MobileNetV2(small_input=True).config)
    with pytest.raises(
        MobileNetsError,
        match="SSDLite reads the backbone tap 'C4_expansion' .*mobilenet_v2_1.0_320 has no "
        "'C4_expansion', only C1, C2, ",
    ):
        DetectionConfig(MobileNetV2(expansion=1).config)
    with pytest.raises(MobileNetsError, match="unknown detector 'ssdlite_mobilenet_v3'"):
        create_detector("ssdlite_mobilenet_v3")
    with pytest.raises(
        MobileNetsError,
        match=r"takes a \(batch, 3, 64, 64\) tensor .*got shape "
        r"\(1, 3, 96, 96\)",
    ):
        small(64)(torch.randn(1, 3, 96, 96))


# --- Command line --------------------------------------------------------------------------------


def test_cost_command_prints_layers_totals_and_the_paper(capsys):
    assert main(["cost", "ssdlite_mobilenet_v2", "--resolution", "300"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ssdlite_mobilenet_v2_1.0_300: alpha 1.0, 300x300 input, 91 classes")
    assert "total: 4,500,543 params, 749,503,856 MACs (749.5M)" in out
    assert "ours / paper: params 1.047, MACs 0.937" in out
    assert "class_heads.0.conv_pw" in out and "extras.3.conv_pw" in out
    assert (
        main(["cost", "ssdlite_mobilenet_v2", "--json", "--alpha", "0.5", "--num-classes", "21"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert (data["alpha"], data["num_classes"], data["resolution"]) == (0.5, 21, 320)
    assert main(["cost", "ssdlite_mobilenet_v2", "--num-classes", "1"]) == 2
    assert "num_classes must be an integer >= 2" in capsys.readouterr().err
