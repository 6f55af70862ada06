"""Any registered backbone in every head: a toy family declared here, with its own feature taps,
trains one step of classification, SSDLite detection and DeepLab segmentation through the tasks'
own training code, which has no line about it; so do MobileNetV3's SSDLite and LR-ASPP."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mobilenets.core.cost import cost_of_spec
from mobilenets.core.detection_spec import DetectionConfig, resolve_detection
from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import (
    DW,
    IR,
    Bneck,
    Conv,
    Family,
    families,
    register_family,
    unregister_family,
)
from mobilenets.core.models import build_model
from mobilenets.core.segmentation_spec import SegmentationConfig, resolve_segmentation
from mobilenets.core.segmenter import DeepLabV3
from mobilenets.core.spec import ModelConfig
from mobilenets.engine import run
from mobilenets.tasks.classification.train import Classification
from mobilenets.tasks.detection.train import Detection
from mobilenets.tasks.segmentation.train import Segmentation

pytestmark = pytest.mark.usefixtures("one_thread", "data_dir")  # small nets: threads contend

TOY = "toy_net"


def toy_width(channels: int, alpha: float) -> int:
    return max(round(channels * alpha), 4)


# Six rows, a quarter of V2's depth: the stride-16 map SSDLite reads is a block output here (V2
# reads an expansion), and DeepLab keeps the 1x1 head conv (V2 drops it).
TOY_FAMILY = Family(
    TOY,
    table=(
        Conv(c=8, k=3, s=2),  # 64x64x3 in, stem
        DW(s=2, c=16),  # 32x32x8 in, C2
        IR(t=2, c=16, n=1, s=2),  # 16x16x16 in, C3
        IR(t=2, c=24, n=2, s=2),  # 8x8x16 in, C4
        IR(t=2, c=32, n=1, s=2),  # 4x4x24 in, C5
        Conv(c=48, k=1, s=1),  # 2x2x32 in, C5: the head conv
    ),
    width=toy_width,
    taps={
        "ssdlite_stride16": "C4",
        "ssdlite_stride32": "C5",
        "deeplab_stride8": "C3",
        "deeplab_features": "C5",
    },
    dropout=0.1,
)


@pytest.fixture(scope="module")
def toy_family():
    """The toy family, registered for this module only."""
    register_family(TOY_FAMILY)
    yield TOY_FAMILY
    unregister_family(TOY)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic data is generated into $MOBILENETS_DATA: a folder of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_DATA", str(tmp_path_factory.mktemp("data")))
        yield


# One epoch of one batch per task: each training split holds exactly one batch.
TASKS = {
    "classification": (
        Classification,
        dict(
            model=TOY,
            data="synthetic:10",
            batch_size=10,
            augment="basic",
            preset="paper",
            ema_decay=0.0,
        ),
        "model_config",
    ),
    "detection": (
        Detection,
        dict(
            model=f"ssdlite_{TOY}",
            data="synthetic-shapes:4",
            resolution=64,
            batch_size=4,
            augment="flip",
            warmup_epochs=0.0,
        ),
        "detection_config",
    ),
    "segmentation": (
        Segmentation,
        dict(
            model=f"deeplabv3_{TOY}",
            data="synthetic-shapes:4",
            crop=64,
            batch_size=4,
            aux_loss=0.4,
        ),
        "segmentation_config",
    ),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_one_training_step_of_every_task_on_a_registered_toy_family(task, toy_family, tmp_path):
    task_class, settings, record = TASKS[task]
    config = task_class.config_type(**settings, epochs=1, workers=0, device="cpu")
    result = run.fit(task_class(), config, tmp_path, progress=False)
    ((row,),) = [result.history]
    assert (result.epochs, row["step"]) == (1, 1) and math.isfinite(row["train_loss"])
    saved = json.loads((tmp_path / "train_config.json").read_text())[record]
    backbone = saved if task == "classification" else saved["backbone"]
    assert backbone["arch"] == TOY
    assert (tmp_path / "best.safetensors").is_file()


def test_the_heads_read_the_taps_the_family_names(toy_family):
    backbone = ModelConfig(arch=TOY, alpha=1.0)
    detection = resolve_detection(DetectionConfig(backbone, resolution=64, num_classes=3))
    assert [(m.tap, m.source, m.channels, m.stride) for m in detection.maps[:2]] == [
        ("C4", "backbone.blocks.3", 24, 16),
        ("C5", "backbone.head", 48, 32),
    ]
    segmentation = SegmentationConfig(backbone, resolution=64, num_classes=3, aux=True)
    spec = resolve_segmentation(segmentation)
    # deeplab_features is C5, the head conv: this segmenter keeps it, and reads it dilated.
    assert [b.name for b in spec.backbone_blocks][-2:] == ["backbone.blocks.4", "backbone.head"]
    assert (spec.feature_channels, spec.feature_size, spec.aux.in_channels) == (48, 4, 16)
    for model, config in ((SSDLite, detection.config), (DeepLabV3, segmentation)):
        built = model(config)
        # The auxiliary head trains only: it is not in the cost.
        params = sum(p.numel() for k, p in built.named_parameters() if not k.startswith("aux."))
        assert params == cost_of_spec(built.spec).params
    classifier = build_model(backbone.replace(num_classes=5))
    assert classifier(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert TOY in families()


def test_a_family_without_a_heads_taps_is_refused_naming_the_backbone_and_the_tap():
    register_family(
        Family(
            "toy_plain", (Conv(c=8, s=2), DW(s=2, c=16)), toy_width, taps={"deeplab_stride8": "C9"}
        )
    )
    try:
        backbone = ModelConfig(arch="toy_plain")
        with pytest.raises(
            MobileNetsError,
            match="SSDLite reads the backbone tap 'ssdlite_stride16' .*toy_plain_1.0_300 names "
            "none",
        ):
            DetectionConfig(backbone, resolution=300)
        with pytest.raises(
            MobileNetsError,
            match="DeepLabv3 reads the backbone tap 'C9' .*toy_plain_1.0_513_os16 has no 'C9', "
            "only C1, C2",
        ):
            SegmentationConfig(backbone)
    finally:
        unregister_family("toy_plain")
    assert "toy_plain" not in families()


def test_family_registration_errors():
    with pytest.raises(MobileNetsError, match="family 'mobilenet_v2' is already registered"):
        register_family(Family("mobilenet_v2", (Conv(c=8, s=2), DW(s=1, c=8)), toy_width))
    with pytest.raises(MobileNetsError, match="after the stem, a table holds DW, IR or Bneck"):
        Family("toy_bad", (Conv(c=8, s=2),), toy_width)
    bneck = Bneck(k=3, exp=16, c=8, se=True, nl="HS", s=2)
    with pytest.raises(MobileNetsError, match="a table of Bneck rows names its width rules"):
        Family("toy_bad", (Conv(c=8, s=2), bneck), toy_width)
    with pytest.raises(MobileNetsError, match="a table of Bneck rows names its width rules"):
        Family("toy_bad", (Conv(c=8, s=2), DW(s=1, c=8)), toy_width, width_rules=("tf",))
    with pytest.raises(MobileNetsError, match="NL is one of RE6, RE, HS, GE, got \\['SW'\\]"):
        Family("toy_bad", (Conv(c=8, s=2, nl="SW"), DW(s=1, c=8)), toy_width)
    with pytest.raises(MobileNetsError, match="unknown head tap roles \\['fpn'\\]"):
        Family("toy_bad", (Conv(c=8, s=2), DW(s=1, c=8)), toy_width, taps={"fpn": "C3"})
    with pytest.raises(MobileNetsError, match="the table starts with the stem, a Conv row"):
        Family("toy_bad", (DW(s=2, c=16),), toy_width)
    with pytest.raises(MobileNetsError, match="no family 'toy_bad' is registered"):
        unregister_family("toy_bad")
    with pytest.raises(
        MobileNetsError, match="arch must be one of mobilenet_v1, mobilenet_v2.*got .toy_bad."
    ):
        ModelConfig(arch="toy_bad")


# MobileNetV3's task models, registered with the reduced tail, at the smallest input: one step
# through the same training code.
V3_TASKS = {
    "ssdlite_mobilenet_v3_small": (
        Detection,
        dict(data="synthetic-shapes:4", resolution=64, batch_size=4, warmup_epochs=0.0),
        "detection_config",
    ),
    "lraspp_mobilenet_v3_small": (
        Segmentation,
        dict(data="synthetic-shapes:4", crop=32, batch_size=4),
        "segmentation_config",
    ),
}


@pytest.mark.parametrize("model", list(V3_TASKS))
def test_one_training_step_of_the_v3_task_models(model, tmp_path):
    task_class, settings, record = V3_TASKS[model]
    config = task_class.config_type(model=model, **settings, epochs=1, workers=0, device="cpu")
    result = run.fit(task_class(), config, tmp_path, progress=False)
    ((row,),) = [result.history]
    assert (result.epochs, row["step"]) == (1, 1) and math.isfinite(row["train_loss"])
    backbone = json.loads((tmp_path / "train_config.json").read_text())[record]["backbone"]
    assert (backbone["arch"], backbone["reduced_tail"]) == ("mobilenet_v3_small", True)
