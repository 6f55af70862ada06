"""Named segmenters: the registry entries, create_segmenter's overrides, its backbone from a
classifier's weights (ours, torchvision's), whole-segmenter weights files, the cost of a name."""

import pytest
import torch
import torchvision
from random_weights import randomize_torch

from mobilenets import (
    MobileNetsError,
    MobileNetV1,
    MobileNetV2,
    cost,
    get_entry,
    list_models,
    save_weights,
)
from mobilenets.core.cost import cost_of_spec
from mobilenets.core.segmentation_spec import SegmentationConfig, resolve_segmentation
from mobilenets.core.segmenter import DeepLabV3
from mobilenets.zoo.registry import (
    SEGMENTATION_OVERRIDES,
    is_segmenter,
    resolve_segmentation_config,
)
from mobilenets.zoo.segmenters import create_segmenter

NAMES = ("deeplabv3_mobilenet_v1", "deeplabv3_mobilenet_v2")
LRASPP_NAMES = ("lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_small")  # V3 Table 7


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Small nets at small sizes: one intra-op thread (see conftest)."""


def small(**overrides) -> DeepLabV3:
    return create_segmenter(**{"alpha": 0.35, "resolution": 65, "num_classes": 5, **overrides})


def perturbed(model):
    """``model`` with every parameter and BN statistic moved off its init, so a tensor that is
    not copied shows."""
    torch.manual_seed(0)
    return randomize_torch(model)


def backbone_tensors(segmenter) -> dict[str, torch.Tensor]:
    return segmenter.backbone.state_dict()


# --- The registry --------------------------------------------------------------------------------


def test_segmenters_are_registered_under_their_task():
    assert list_models(task="segmentation") == [*NAMES, *LRASPP_NAMES]
    for name in LRASPP_NAMES:
        config = get_entry(name).config
        assert (config.head, config.backbone.reduced_tail) == ("lraspp", True)
    assert not set(NAMES) & set(list_models())  # the default lists classifiers
    assert set(NAMES) <= set(list_models(task=None))
    for name in NAMES:
        entry = get_entry(name)
        assert entry.task == "segmentation" and is_segmenter(name)
        assert entry.backbone.arch == name.removeprefix("deeplabv3_")
        assert entry.config.resolution == 513 and entry.config.num_classes == 21
    assert not is_segmenter("mobilenet_v2_1.0_224") and not is_segmenter(None)
    # V1's Table 7 rows have ASPP; the recommended V2* has not.
    assert get_entry("deeplabv3_mobilenet_v1").config.aspp is True
    assert get_entry("deeplabv3_mobilenet_v2").config.aspp is False
    paper = get_entry("deeplabv3_mobilenet_v2").paper
    assert [(row.params_m, row.macs_m) for row in paper] == [(2.11, 2750.0), (2.11, 152600.0)]
    assert "OS 8, MF" in paper[1].source and "Table 7" in paper[0].source


def test_an_unknown_segmenter_suggests_close_names():
    with pytest.raises(
        MobileNetsError,
        match="unknown segmenter 'deeplabv3_mobilenet_v3'; did you mean deeplabv3_mobilenet_v[12]",
    ):
        create_segmenter("deeplabv3_mobilenet_v3")
    with pytest.raises(
        MobileNetsError, match="registered: deeplabv3_mobilenet_v1, deeplabv3_mobilenet_v2"
    ):
        get_entry("deeplab", task="segmentation")
    with pytest.raises(
        MobileNetsError,
        match="'mobilenet_v2_1.0_224' is a classification model, not a segmentation model",
    ):
        create_segmenter("mobilenet_v2_1.0_224")


def test_a_classification_only_override_is_refused_naming_the_allowed_ones():
    allowed = ", ".join(SEGMENTATION_OVERRIDES)
    assert allowed.startswith("alpha, resolution, num_classes, output_stride, aspp")
    for call in (resolve_segmentation_config, create_segmenter):
        with pytest.raises(
            MobileNetsError,
            match=r"argument\(s\) \['rho'\] do not apply to a "
            "segmenter; allowed: " + allowed,
        ):
            call("deeplabv3_mobilenet_v2", rho=0.5)
    with pytest.raises(MobileNetsError, match=r"\['anchors', 'small_input'\] do not apply"):
        resolve_segmentation_config("deeplabv3_mobilenet_v2", small_input=True, anchors=3)
    # None means "not given": callers pass optional arguments straight through.
    assert resolve_segmentation_config("deeplabv3_mobilenet_v2", rho=None, alpha=None) == (
        get_entry("deeplabv3_mobilenet_v2").config
    )


# --- create_segmenter --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_create_segmenter_with_overrides(name):
    model = create_segmenter(
        name, num_classes=5, output_stride=8, aspp=True, alpha=0.25, resolution=97
    )
    config = model.config
    assert isinstance(model, DeepLabV3)
    assert (config.num_classes, config.output_stride, config.aspp) == (5, 8, True)
    assert config.alpha == config.backbone.alpha == 0.25
    assert (config.resolution, config.atrous_rates) == (97, (12, 24, 36))
    assert config.backbone.output_stride == 8 and config.backbone.resolution == 97
    assert model.name == f"{name}_0.25_97_os8_aspp"
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 97, 97)).shape == (1, 5, 97, 97)


def test_create_segmenter_defaults_and_head_overrides():
    with torch.device("meta"):
        default = create_segmenter()
        tuned = create_segmenter(
            aspp=True, atrous_rates=(3, 6), aux=True, dropout=0.3, padding="same", bn_eps=1e-3
        )
    assert default.name == "deeplabv3_mobilenet_v2_1.0_513_os16"
    assert tuned.config.atrous_rates == (3, 6) and tuned.aux is not None
    assert tuned.dropout.p == 0.3
    assert (tuned.config.backbone.padding, tuned.config.backbone.bn_eps) == ("same", 1e-3)
    assert tuned.head.project.bn.eps == 1e-3


def test_cost_of_a_name_equals_cost_of_the_built_models_config():
    report = cost("deeplabv3_mobilenet_v2", output_stride=8, aspp=True)
    with torch.device("meta"):
        model = create_segmenter("deeplabv3_mobilenet_v2", output_stride=8, aspp=True)
    assert report == cost_of_spec(resolve_segmentation(model.config)) == cost(model)
    assert (report.name, report.resolution, report.num_classes) == (
        "deeplabv3_mobilenet_v2_1.0_513_os8_aspp",
        513,
        21,
    )
    assert report.params == sum(p.numel() for p in model.parameters())
    assert cost(model, resolution=257) == cost(
        "deeplabv3_mobilenet_v2", output_stride=8, aspp=True, resolution=257
    )


# --- Backbone from a classifier ----------------------------------------------------------------


def assert_backbone_is(segmenter, classifier):
    """Every tensor of the classifier but its classifier (and V2's 1x1 conv to 1280, which MNet
    V2* does not build) is in the segmenter's backbone, equal."""
    target = backbone_tensors(segmenter)
    copied = {
        k: v
        for k, v in classifier.state_dict().items()
        if not k.startswith(("classifier.", "head."))
    }
    assert set(copied) == set(target)
    assert all(torch.equal(target[k], v) for k, v in copied.items())


def test_backbone_from_our_classification_file(tmp_path):
    classifier = perturbed(MobileNetV2(alpha=0.35, num_classes=10))
    path = save_weights(classifier, tmp_path / "cifar.safetensors")
    segmenter = small(backbone_weights=path)
    assert_backbone_is(segmenter, classifier)
    assert_backbone_is(small(backbone_weights=classifier, output_stride=8, aspp=True), classifier)
    # A few by name: the stem, a depthwise conv that is dilated at OS 16, a BN statistic.
    state = classifier.state_dict()
    for key in ("stem.conv.weight", "blocks.15.conv_dw.weight", "blocks.13.bn2.running_var"):
        assert torch.equal(backbone_tensors(segmenter)[key], state[key])
    assert segmenter.backbone.blocks[15].conv_dw.dilation == (2, 2)
    v1 = perturbed(MobileNetV1(alpha=0.25))
    v1_segmenter = create_segmenter(
        "deeplabv3_mobilenet_v1", alpha=0.25, resolution=65, backbone_weights=v1
    )
    assert_backbone_is(v1_segmenter, v1)


def test_backbone_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    reference = randomize_torch(torchvision.models.mobilenet_v2(width_mult=0.35))
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    segmenter = small(backbone_weights=path)
    theirs, ours = reference.state_dict(), backbone_tensors(segmenter)
    for their_key, our_key in [
        ("features.0.0.weight", "stem.conv.weight"),
        ("features.0.1.running_mean", "stem.bn.running_mean"),
        ("features.1.conv.0.0.weight", "blocks.0.conv_dw.weight"),  # t = 1: no expansion
        ("features.14.conv.0.0.weight", "blocks.13.conv_pw.weight"),
        ("features.16.conv.1.0.weight", "blocks.15.conv_dw.weight"),
        ("features.17.conv.2.weight", "blocks.16.conv_pwl.weight"),
        ("features.17.conv.3.running_var", "blocks.16.bn3.running_var"),
    ]:
        assert torch.equal(ours[our_key], theirs[their_key]), our_key
    # torchvision's numerics: symmetric padding, BN eps 1e-5.
    assert (segmenter.config.backbone.padding, segmenter.config.backbone.bn_eps) == (
        "symmetric",
        1e-5,
    )
    # Same tensors, same computation: at OS 16 nothing up to blocks.12 is dilated, so the
    # segmenter's backbone computes torchvision's features.0-13 there.
    images = torch.randn(2, 3, 65, 65)
    backbone = segmenter.backbone.eval()
    with torch.no_grad():
        theirs_map = reference.features[:14](images)
        ours_map = backbone.blocks[:13](backbone.stem(images))
    assert ours_map.shape == theirs_map.shape == (2, 32, 5, 5)
    assert (theirs_map[0] - theirs_map[1]).abs().max() > 1e-2
    assert (ours_map - theirs_map).abs().max() < 1e-4


def test_backbone_from_published_weights_goes_through_create_model(monkeypatch):
    import mobilenets.zoo.transfer

    calls = []

    def fake_create_model(arch, **kwargs):
        calls.append((arch, kwargs))
        return MobileNetV1(alpha=kwargs["alpha"], padding="same", bn_eps=1e-3)

    monkeypatch.setattr(mobilenets.zoo.transfer, "create_model", fake_create_model)
    segmenter = create_segmenter(
        "deeplabv3_mobilenet_v1",
        alpha=0.25,
        resolution=65,
        backbone_weights="keras",
        progress=False,
    )
    ((arch, kwargs),) = calls
    assert (arch, kwargs["weights"], kwargs["alpha"], kwargs["resolution"]) == (
        "mobilenet_v1",
        "keras",
        0.25,
        224,
    )
    # The segmenter takes the numerics of its backbone weights, head included.
    assert (segmenter.config.backbone.padding, segmenter.config.backbone.bn_eps) == ("same", 1e-3)
    assert segmenter.head.image_pool.bn.eps == 1e-3


def test_backbone_of_another_width_padding_or_architecture_is_refused(tmp_path):
    wide = save_weights(MobileNetV2(alpha=0.5), tmp_path / "wide.safetensors")
    with pytest.raises(
        MobileNetsError,
        match=r"backbone weights of mobilenet_v2_0.5_224 do not "
        r"fit deeplabv3_mobilenet_v2_0.35_65_os16: alpha "
        r"0.5 \(need 0.35\)$",
    ):
        small(backbone_weights=wide)
    tf = save_weights(
        MobileNetV2(alpha=0.5, padding="same", bn_eps=1e-3), tmp_path / "tf.safetensors"
    )
    every_difference = (
        r": alpha 0.5 \(need 0.35\); padding 'same' \(need 'symmetric'\); bn_eps 0.001 \(need "
        r"1e-05\)$"
    )
    with pytest.raises(MobileNetsError, match=every_difference):
        small(backbone_weights=tf, padding="symmetric", bn_eps=1e-5)
    same = MobileNetV2(alpha=0.35, padding="same")
    with pytest.raises(MobileNetsError, match=r": padding 'same' \(need 'symmetric'\)$"):
        small(backbone_weights=same, padding="symmetric")
    assert small(backbone_weights=same).config.backbone.padding == "same"  # unless given
    with pytest.raises(MobileNetsError, match=r"arch 'mobilenet_v1' \(need 'mobilenet_v2'\)"):
        small(backbone_weights=MobileNetV1(alpha=0.35))
    with pytest.raises(MobileNetsError, match="backbone_weights must be a MobileNet"):
        small(backbone_weights=3)
    with pytest.raises(MobileNetsError, match="not both"):
        small(backbone_weights=same, weights=wide)


# --- Whole-segmenter weights -------------------------------------------------------------------


def test_weights_round_trip(tmp_path):
    model = perturbed(small(aspp=True, padding="same", bn_eps=1e-3))
    path = save_weights(model, tmp_path / "deeplab.safetensors")
    loaded = small(aspp=True, weights=path)  # the file's numerics, unless given
    assert loaded.config == model.config
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    images = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model(images))
    with pytest.raises(
        MobileNetsError,
        match="does not fit deeplabv3_mobilenet_v2_0.35_65_os16: 18 unexpected keys",
    ):
        small(weights=path)  # the file has ASPP, this model not
    with pytest.raises(MobileNetsError, match=r"keys with another shape \(classifier.weight"):
        small(aspp=True, num_classes=7, weights=path)
    # A plain state dict (no recorded config) loads into the model it fits.
    torch.save(model.state_dict(), tmp_path / "deeplab.pt")
    plain = small(aspp=True, padding="same", bn_eps=1e-3, weights=tmp_path / "deeplab.pt")
    assert torch.equal(plain.classifier.weight, model.classifier.weight)


def test_segmenter_config_object_is_accepted():
    config = SegmentationConfig(MobileNetV2(alpha=0.35).config, resolution=65, num_classes=3)
    model = create_segmenter(config, output_stride=8)
    assert model.config == config.replace(output_stride=8)
    assert model.name == "deeplabv3_mobilenet_v2_0.35_65_os8"


def test_weights_with_contradicting_numerics_are_refused(tmp_path):
    path = save_weights(small(padding="same"), tmp_path / "deeplab.safetensors")
    with pytest.raises(MobileNetsError, match="padding"):
        small(padding="symmetric", weights=path)
