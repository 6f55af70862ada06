"""Mobile DeepLabv3 (V2 section 6.3): the resolved spec, the module, its cost, its files."""

import json

import pytest
import torch
from random_weights import randomize_torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mobilenets import MobileNetsError, MobileNetV2, ModelConfig, cost, save_weights
from mobilenets.core.detector import saved_detection_config
from mobilenets.core.segmentation_spec import (
    ASPP_RATES,
    TABLE7,
    SegmentationConfig,
    resolve_segmentation,
)
from mobilenets.core.segmenter import DeepLabV3, load_segmenter, saved_segmentation_config
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.segmenters import create_segmenter


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Small nets at small sizes: one intra-op thread (see conftest)."""


def small(resolution=65, num_classes=5, **overrides) -> DeepLabV3:
    return create_segmenter(alpha=0.35, resolution=resolution, num_classes=num_classes, **overrides)


# --- Golden parameter counts: Table 7 ------------------------------------------------------------

# By hand, 21 classes, BN scale and shift counted (2 per channel), head width 256:
# - V2* backbone: torchvision's 3,504,872 less the 1x1 conv to 1280 (320 * 1280 + 2 * 1280 =
#   412,160) and the classifier (1280 * 1000 + 1000 = 1,281,000): 1,811,712.
# - V1 backbone: 4,231,976 less the classifier (1024 * 1000 + 1000 = 1,025,000): 3,206,976.
# - image pool and 1x1 branch, each C * 256 + 512: 82,432 at C = 320, 262,656 at C = 1024.
# - each 3x3 ASPP branch, C * 256 * 9 + 512: 737,792 at 320, 2,359,808 at 1024.
# - projection, branches * 256 * 256 + 512: 131,584 for 2 branches, 328,192 for 5.
# - classifier, 256 * 21 + 21 = 5,397.
# V2* no ASPP: 1,811,712 + 2 * 82,432 + 131,584 + 5,397 = 2,113,557.
# V2* ASPP: 1,811,712 + 2 * 82,432 + 3 * 737,792 + 328,192 + 5,397 = 4,523,541.
# V1 ASPP: 3,206,976 + 2 * 262,656 + 3 * 2,359,808 + 328,192 + 5,397 = 11,145,301.
GOLDEN_PARAMS = {
    ("mobilenet_v1", True): 11_145_301,
    ("mobilenet_v2", True): 4_523_541,
    ("mobilenet_v2", False): 2_113_557,
}


def test_hand_derivation_adds_up():
    assert 3_504_872 - 412_160 - 1_281_000 == 1_811_712
    assert 1_811_712 + 2 * 82_432 + 131_584 + 5_397 == GOLDEN_PARAMS["mobilenet_v2", False]
    assert (
        1_811_712 + 2 * 82_432 + 3 * 737_792 + 328_192 + 5_397
        == GOLDEN_PARAMS["mobilenet_v2", True]
    )
    assert (
        4_231_976 - 1_025_000 + 2 * 262_656 + 3 * 2_359_808 + 328_192 + 5_397
        == (GOLDEN_PARAMS["mobilenet_v1", True])
    )


@pytest.mark.parametrize(
    "row", TABLE7, ids=lambda r: f"{r.arch}-os{r.output_stride}{'-aspp' * r.aspp}"
)
def test_table7_params_exactly_and_within_the_paper(row):
    config = SegmentationConfig(
        ModelConfig(arch=row.arch), output_stride=row.output_stride, aspp=row.aspp
    )
    params = cost(config).params
    assert params == GOLDEN_PARAMS[row.arch, row.aspp]
    assert abs(params / 1e6 - row.params_m) <= 0.01
    name = f"deeplabv3_{row.arch}"
    assert cost(name, output_stride=row.output_stride, aspp=row.aspp).params == params


def measured(name, **overrides):
    """Parameters of the built segmenter and MACs counted by torch (FLOPs / 2), on meta.

    torch counts convolutions only: the bilinear upsampling of the logits and the global pool
    count nothing, as in our model, and the image-pooling conv runs on the pooled 1x1 map."""
    with torch.device("meta"):
        model = create_segmenter(name, **overrides).eval()
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        side = model.resolution
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, side, side))
    return params, counter.get_total_flops() // 2


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("deeplabv3_mobilenet_v2", {"resolution": 65}),
        ("deeplabv3_mobilenet_v2", {"resolution": 97, "aspp": True, "output_stride": 8}),
        (
            "deeplabv3_mobilenet_v2",
            {
                "resolution": 97,
                "alpha": 0.35,
                "num_classes": 5,
                "aspp": True,
                "atrous_rates": (2, 3),
            },
        ),
        ("deeplabv3_mobilenet_v1", {"resolution": 65}),
        ("deeplabv3_mobilenet_v1", {"resolution": 97, "output_stride": 8, "alpha": 0.5}),
        ("deeplabv3_mobilenet_v2", {"resolution": 513}),
    ],
)
def test_analytic_equals_built_equals_measured(name, overrides):
    report = cost(name, **overrides)
    assert (report.params, report.macs) == measured(name, **overrides)


def test_golden_macs_at_513():
    """MNet V2* at OS 16, 513 px: the paper's 2.75B row, counted by torch."""
    assert measured("deeplabv3_mobilenet_v2") == (2_113_557, 2_740_709_056)


def test_pooled_branch_costs_its_weights_once():
    spec = resolve_segmentation(SegmentationConfig(ModelConfig(arch="mobilenet_v2")))
    layers = {layer.name: layer for layer in spec.layers}
    pool, aspp0 = layers["head.image_pool.conv"], layers["head.aspp0.conv"]
    assert (pool.in_size, pool.macs) == (1, 320 * 256)
    assert (aspp0.in_size, aspp0.macs) == (33, 320 * 256 * 33 * 33)
    assert spec.feature_size == 33 and spec.feature_channels == 320


# --- The module ---------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(65, 65), (50, 71), (33, 97), (129, 40)])
def test_logits_at_any_input_size(height, width):
    model = small().eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 5, height, width)


@pytest.mark.parametrize("output_stride, aspp", [(16, False), (8, True)])
def test_feature_map_has_the_spec_shape(output_stride, aspp):
    model = small(97, output_stride=output_stride, aspp=aspp).eval()
    with torch.no_grad():
        features, _ = model.forward_features(torch.randn(1, 3, 97, 97))
    side = model.spec.feature_size
    assert side == -(-97 // output_stride)
    assert features.shape == (1, model.spec.feature_channels, side, side)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(convs) == {layer.name for layer in model.spec.layers}
    rates = [convs[f"head.aspp{i}.conv"].dilation for i in (1, 2, 3)] if aspp else []
    assert rates == [(r, r) for r in ASPP_RATES[output_stride]][: len(rates)]


def test_image_pooling_branch_is_a_broadcast():
    model = small(65).eval()
    captured = {}
    model.head.project.register_forward_hook(lambda m, inputs, out: captured.update(x=inputs[0]))
    images = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        model(images)
        features, _ = model.forward_features(images)
        pooled = model.head.image_pool(features.mean((2, 3), keepdim=True))
    width = model.config.head_channels
    branch = captured["x"][:, :width]
    assert captured["x"].shape == (2, 2 * width, 5, 5)
    assert torch.equal(branch, pooled.expand_as(branch))  # constant over the map
    assert (branch[0] - branch[1]).abs().max() > 0  # and it depends on the image


def test_aux_head_reads_stride_8_and_returns_logits_at_input_size():
    model = small(65, aux=True).train()
    # V2: spec block 6 is blocks.5, the last block at output stride 8 (32 channels, 16 at 0.35).
    assert model.spec.aux_block == 6
    source = model.spec.backbone.blocks[6]
    assert (source.name, source.out_stride, source.out_channels) == ("blocks.5", 8, 16)
    captured = {}
    model.backbone.blocks[5].register_forward_hook(lambda m, i, out: captured.update(x=out))
    model.aux.conv.register_forward_hook(lambda m, inputs, out: captured.update(aux=inputs[0]))
    logits, aux = model(torch.randn(2, 3, 65, 65), with_aux=True)
    assert logits.shape == aux.shape == (2, 5, 65, 65)
    assert captured["aux"] is captured["x"] and captured["x"].shape == (2, 16, 9, 9)
    # Not in the cost (training only): the built model has the aux head's parameters on top.
    aux_params = sum(layer.params for layer in model.spec.aux.layers)
    assert aux_params == 16 * 16 * 9 + 2 * 16 + 16 * 5 + 5
    assert sum(p.numel() for p in model.parameters()) == cost(model).params + aux_params
    # V1's stride-8 block is blocks.4 (spec block 5), at either output stride.
    for output_stride in (8, 16):
        config = SegmentationConfig(
            ModelConfig(arch="mobilenet_v1", alpha=0.25), output_stride=output_stride, aux=True
        )
        spec = resolve_segmentation(config)
        assert spec.aux_block == 5 and spec.backbone.blocks[5].name == "blocks.4"


def test_with_aux_without_an_aux_head_is_refused():
    message = "deeplabv3_mobilenet_v2_0.35_65_os16 has no auxiliary head; build it with aux=True"
    with pytest.raises(MobileNetsError, match=message):
        small().eval()(torch.randn(1, 3, 65, 65), with_aux=True)


def test_every_parameter_gets_a_gradient():
    model = small(65, aspp=True, aux=True).train()
    logits, aux = model(torch.randn(2, 3, 65, 65), with_aux=True)
    (logits.square().mean() + aux.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("arch, channels", [("mobilenet_v2", 320), ("mobilenet_v1", 1024)])
def test_backbone_reads_the_last_block_without_v2_head(arch, channels):
    with torch.device("meta"):
        model = create_segmenter(f"deeplabv3_{arch}", aspp=True)
    keys = model.state_dict().keys()
    assert not [k for k in keys if k.startswith(("backbone.head.", "backbone.classifier."))]
    assert model.backbone.head is None
    assert model.spec.feature_channels == channels
    for branch in ("image_pool", "aspp0", "aspp1", "aspp2", "aspp3"):
        assert getattr(model.head, branch).conv.weight.shape[1] == channels
    last = (
        "backbone.blocks.16.conv_pwl.weight"
        if arch == "mobilenet_v2"
        else ("backbone.blocks.12.conv_pw.weight")
    )
    assert model.state_dict()[last].shape[0] == channels


def test_names():
    assert small().name == "deeplabv3_mobilenet_v2_0.35_65_os16"
    assert create_segmenter("deeplabv3_mobilenet_v1").name == (
        "deeplabv3_mobilenet_v1_1.0_513_os16_aspp"
    )
    config = SegmentationConfig(ModelConfig(arch="mobilenet_v2"), output_stride=8)
    assert config.name == "deeplabv3_mobilenet_v2_1.0_513_os8"
    assert config.backbone.name == "mobilenet_v2_1.0_513_os8"  # the backbone takes our settings
    assert (config.backbone.num_classes, config.backbone.output_stride) == (0, 8)


# --- The config and its errors ------------------------------------------------------------------

V2 = ModelConfig(arch="mobilenet_v2")


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"backbone": "mobilenet_v2"}, "backbone must be a ModelConfig, got 'mobilenet_v2'"),
        (
            {"backbone": V2.replace(small_input=True)},
            "DeepLabv3 sets the backbone's output stride "
            "itself; the backbone must be a standard MobileNet, got mobilenet_v2_1.0_224_small",
        ),
        ({"num_classes": 1}, r"num_classes must be an integer >= 2 \(background counts\), got 1"),
        ({"num_classes": True}, "num_classes must be an integer >= 2 .*got True"),
        (
            {"resolution": 31},
            r"resolution must be an integer >= 32 \(the paper's figures are at "
            r"513\), got 31",
        ),
        ({"resolution": 64.0}, "resolution must be an integer >= 32 .*got 64.0"),
        (
            {"output_stride": 32},
            r"output_stride must be 8 or 16 \(DeepLabv3 trains at 16 and "
            r"evaluates at 16 or 8\), got 32",
        ),
        ({"output_stride": None}, "output_stride must be 8 or 16 .*got None"),
        ({"aspp": "yes"}, "aspp must be True or False, got 'yes'"),
        ({"aux": 1}, "aux must be True or False, got 1"),
        (
            {"atrous_rates": ()},
            "atrous_rates must be None or a non-empty sequence of integers "
            r">= 1, got \(\)",
        ),
        ({"atrous_rates": (6, 0)}, r"atrous_rates must be .*got \(6, 0\)"),
        ({"atrous_rates": (6, 12.0)}, r"atrous_rates must be .*got \(6, 12.0\)"),
        ({"atrous_rates": 6}, "atrous_rates must be .*got 6"),
        ({"head_channels": 0}, "head_channels must be an integer >= 1, got 0"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
        ({"dropout": float("nan")}, r"dropout must be a number in \[0, 1\), got nan"),
    ],
)
def test_bad_configs_name_the_value_and_what_is_allowed(arguments, message):
    arguments = {"backbone": V2, **arguments}
    with pytest.raises(MobileNetsError, match=message):
        SegmentationConfig(**arguments)


def test_bad_module_arguments_and_inputs_are_refused():
    with pytest.raises(MobileNetsError, match="DeepLabV3 takes a SegmentationConfig, got "):
        DeepLabV3(V2)
    with pytest.raises(
        MobileNetsError,
        match=r"deeplabv3_mobilenet_v2_0.35_65_os16 takes a "
        r"\(batch, 3, height, width\) tensor, got shape "
        r"\(1, 1, 65, 65\)",
    ):
        small()(torch.randn(1, 1, 65, 65))
    with pytest.raises(MobileNetsError, match=r"got shape \(3, 65, 65\)"):
        small()(torch.randn(3, 65, 65))


def test_default_rates_follow_the_output_stride_explicit_ones_stay():
    config = SegmentationConfig(V2, aspp=True)
    assert config.atrous_rates == (6, 12, 18)
    assert config.replace(output_stride=8).atrous_rates == (12, 24, 36)
    custom = SegmentationConfig(V2, aspp=True, atrous_rates=[3, 6])
    assert custom.atrous_rates == (3, 6)  # a list becomes a tuple
    assert custom.replace(output_stride=8).atrous_rates == (3, 6)
    assert config.replace(output_stride=8, atrous_rates=(1, 2)).atrous_rates == (1, 2)


def test_to_dict_from_dict_round_trip():
    config = SegmentationConfig(
        ModelConfig(arch="mobilenet_v1", alpha=0.5, padding="same", bn_eps=1e-3),
        num_classes=19,
        resolution=257,
        output_stride=8,
        aspp=True,
        atrous_rates=(2, 4, 8),
        dropout=0.2,
        aux=True,
        head_channels=128,
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["atrous_rates"] == [2, 4, 8] and data["backbone"]["output_stride"] == 8
    assert SegmentationConfig.from_dict(data) == config
    with pytest.raises(
        MobileNetsError,
        match="a segmentation config is a dict with a 'backbone' model config, got 3",
    ):
        SegmentationConfig.from_dict(3)
    with pytest.raises(MobileNetsError, match="a segmentation config is a dict with a 'backbone'"):
        SegmentationConfig.from_dict({"num_classes": 21})
    message = r"unknown segmentation config keys \['anchors'\]; allowed: aspp, atrous_rates, aux"
    with pytest.raises(MobileNetsError, match=message):
        SegmentationConfig.from_dict({**data, "anchors": 3})


# --- Files ----------------------------------------------------------------------------------------


def test_save_and_load_segmenter_round_trip(tmp_path):
    torch.manual_seed(0)
    model = randomize_torch(
        small(65, output_stride=8, aspp=True, aux=True, padding="same", bn_eps=1e-3)
    )
    path = save_weights(model, tmp_path / "deeplab.safetensors")
    assert saved_segmentation_config(path) == model.config
    loaded = load_segmenter(path).eval()
    assert loaded.config == model.config
    state = loaded.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    images = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_load_segmenter_refuses_other_files(tmp_path):
    classifier = save_weights(MobileNetV2(alpha=0.35), tmp_path / "classifier.safetensors")
    message = r"safetensors' records no segmentation config; use create_segmenter\(NAME, weights="
    with pytest.raises(MobileNetsError, match=message):
        load_segmenter(classifier)
    torch.save(small().state_dict(), tmp_path / "deeplab.pt")
    with pytest.raises(MobileNetsError, match="deeplab.pt' records no segmentation config"):
        load_segmenter(tmp_path / "deeplab.pt")
    with pytest.raises(MobileNetsError, match="missing.safetensors' does not exist"):
        load_segmenter(tmp_path / "missing.safetensors")


def test_each_saved_config_reader_knows_only_its_own_files(tmp_path):
    segmenter = save_weights(small(), tmp_path / "deeplab.safetensors")
    detector = save_weights(
        create_detector(alpha=0.35, resolution=64, num_classes=5), tmp_path / "ssdlite.safetensors"
    )
    classifier = save_weights(MobileNetV2(alpha=0.35), tmp_path / "classifier.safetensors")
    assert saved_detection_config(segmenter) is None
    assert saved_segmentation_config(detector) is None
    assert saved_segmentation_config(classifier) is None
    assert saved_segmentation_config(tmp_path / "deeplab.pt") is None  # not safetensors
    assert saved_segmentation_config(segmenter).name == "deeplabv3_mobilenet_v2_0.35_65_os16"
