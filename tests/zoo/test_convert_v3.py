"""MobileNetV3 weights from torchvision, timm and Keras: each file, converted by
mobilenets.zoo.convert, computes the reference model's logits in our model (max abs difference
1e-4), with the source's numerics and width rule; files that do not fit are refused in one line.

References get random weights and BN statistics (tests/random_weights.py, tests/keras_files.py)
and are built once per module; 64x64 inputs show equality as well as 224 would.
"""

import os

import numpy as np
import pytest
import timm
import torch
import torchvision
from keras_files import (
    keras2_v3_layer_name,
    keras_logits,
    keras_mobilenet,
    write_keras2_weights,
)
from random_weights import randomize_torch
from safetensors.torch import save_file
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.zoo.convert import convert_file, convert_state_dict, key_map
from mobilenets.zoo.registry import resolve_config

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported (in the fixtures)

RESOLUTION = 64  # even: TF "SAME" pads only bottom/right at stride 2
TOLERANCE = 1e-4  # max abs logit difference, fp32
LOGIT_SCALE = 4.0  # the references' largest logit: fp32 error grows with the logits' size

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.usefixtures("one_thread"),
]


def config_for(arch: str, alpha: float, **fields):
    return resolve_config(arch, alpha=alpha, resolution=RESOLUTION, **fields)


def images(seed: int = 0) -> np.ndarray:
    """NHWC float32 images (Keras's layout)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)


def nchw(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def assert_input_matters(logits: np.ndarray) -> None:
    assert np.abs(logits[0] - logits[1]).max() > 1e-2


def torch_reference(model: nn.Module, classifier: nn.Linear) -> tuple[dict, np.ndarray]:
    """A randomized torchvision/timm model's state dict and logits, its classifier scaled so
    that the largest logit is LOGIT_SCALE (ReLU-only minimalistic nets grow logits of hundreds)."""
    torch.manual_seed(0)
    model = randomize_torch(model)
    batch = nchw(images())
    with torch.no_grad():
        scale = LOGIT_SCALE / model(batch).abs().max()
        classifier.weight *= scale
        classifier.bias *= scale
        logits = model(batch).numpy()
    assert_input_matters(logits)
    return model.state_dict(), logits


def our_logits(config, state, batch: torch.Tensor) -> np.ndarray:
    model = build_model(config).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model(batch).numpy()


def assert_converts(path, source, config, batch, expected, **options):
    state, numerics, report = convert_file(path, source, config, **options)
    assert report.converted == len(key_map(numerics, source))
    error = np.abs(our_logits(numerics, state, batch) - expected).max()
    assert error <= TOLERANCE, error
    return numerics, report


# --- torchvision ------------------------------------------------------------------------------

TORCHVISION_CASES = [
    ("mobilenet_v3_large", 1.0, "tf"),  # the same network under both width rules
    ("mobilenet_v3_small", 1.0, "torchvision"),
    ("mobilenet_v3_large", 0.75, "torchvision"),
]


@pytest.mark.parametrize(
    "arch, alpha, rule",
    TORCHVISION_CASES,
    ids=[f"{a[13:]}-{b}-{c}" for a, b, c in TORCHVISION_CASES],
)
def test_torchvision_file(arch, alpha, rule, tmp_path):
    reference = getattr(torchvision.models, arch)(width_mult=alpha)
    state, expected = torch_reference(reference, reference.classifier[3])
    torch.save(state, tmp_path / f"{arch}.pth")
    config = config_for(arch, alpha, width_rule=rule)
    numerics, _ = assert_converts(
        tmp_path / f"{arch}.pth", "torchvision", config, nchw(images()), expected
    )
    # torchvision's V3: BatchNorm2d(eps=0.001, momentum=0.01), its own widths
    assert (numerics.padding, numerics.bn_eps, numerics.bn_momentum) == ("symmetric", 1e-3, 0.01)
    assert numerics.width_rule == "torchvision"


# --- timm -------------------------------------------------------------------------------------

# timm name, our arch, alpha, minimalistic, TF port
TIMM_CASES = [
    ("mobilenetv3_large_100", "mobilenet_v3_large", 1.0, False, False),
    ("mobilenetv3_large_075", "mobilenet_v3_large", 0.75, False, False),
    ("mobilenetv3_small_100", "mobilenet_v3_small", 1.0, False, False),
    ("mobilenetv3_small_075", "mobilenet_v3_small", 0.75, False, False),
    ("mobilenetv3_small_050", "mobilenet_v3_small", 0.5, False, False),
    ("tf_mobilenetv3_large_075", "mobilenet_v3_large", 0.75, False, True),
    ("tf_mobilenetv3_large_100", "mobilenet_v3_large", 1.0, False, True),
    ("tf_mobilenetv3_large_minimal_100", "mobilenet_v3_large", 1.0, True, True),
    ("tf_mobilenetv3_small_075", "mobilenet_v3_small", 0.75, False, True),
    ("tf_mobilenetv3_small_100", "mobilenet_v3_small", 1.0, False, True),
    ("tf_mobilenetv3_small_minimal_100", "mobilenet_v3_small", 1.0, True, True),
]


@pytest.mark.parametrize(
    "name, arch, alpha, minimalistic, tf_port", TIMM_CASES, ids=[case[0] for case in TIMM_CASES]
)
def test_timm_file(name, arch, alpha, minimalistic, tf_port, tmp_path):
    reference = timm.create_model(name, pretrained=False)
    state, expected = torch_reference(reference, reference.classifier)
    path = tmp_path / f"{name}.safetensors"
    save_file(state, path)
    config = config_for(arch, alpha, minimalistic=minimalistic)
    numerics, report = assert_converts(
        path, "timm", config, nchw(images()), expected, tf_port=tf_port
    )
    assert report.relayout == {"conv1x1_oihw_linear": 1}  # conv_head: the pre-logits layer
    expected_numerics = ("same", 1e-3) if tf_port else ("symmetric", 1e-5)
    assert (numerics.padding, numerics.bn_eps) == expected_numerics


def test_timm_tf_port_needs_tf_numerics(tmp_path):
    """A tf_ port read with timm's own numerics (symmetric padding, eps 1e-5) is far off."""
    reference = timm.create_model("tf_mobilenetv3_small_100", pretrained=False)
    state, expected = torch_reference(reference, reference.classifier)
    converted, numerics, _ = convert_state_dict(
        state, config_for("mobilenet_v3_small", 1.0), "timm"
    )
    assert np.abs(our_logits(numerics, converted, nchw(images())) - expected).max() > 1e-3
    with pytest.raises(MobileNetsError, match="tf_port=True is for timm's TF ports"):
        convert_state_dict(state, config_for("mobilenet_v3_small", 1.0), "keras", tf_port=True)


# --- Keras ------------------------------------------------------------------------------------


class KerasReference:
    """A randomized Keras MobileNetV3, its input and its logits (classifier scaled as above)."""

    def __init__(self, arch, alpha, minimalistic=False, include_preprocessing=False) -> None:
        self.config = config_for(arch, alpha, minimalistic=minimalistic)
        self.model = keras_mobilenet(
            arch,
            alpha,
            RESOLUTION,
            0,
            minimalistic=minimalistic,
            include_preprocessing=include_preprocessing,
        )
        self.images = images()
        # include_preprocessing: Keras reads [0, 255] pixels, ours the [-1, 1] tensor
        keras_images = (self.images + 1) * 127.5 if include_preprocessing else self.images
        logits = self.model.get_layer("logits")
        kernel, bias = logits.get_weights()
        scale = LOGIT_SCALE / np.abs(keras_logits(self.model, keras_images)).max()
        logits.set_weights([kernel * scale, bias * scale])
        self.logits = keras_logits(self.model, keras_images)
        assert_input_matters(self.logits)


KERAS_CASES = [
    ("mobilenet_v3_large", 1.0, False),
    ("mobilenet_v3_large", 0.75, False),
    ("mobilenet_v3_large", 1.0, True),
    ("mobilenet_v3_small", 1.0, False),
    ("mobilenet_v3_small", 0.75, False),
    ("mobilenet_v3_small", 1.0, True),
]


@pytest.fixture(scope="module")
def keras_reference():
    """``keras_reference(arch, alpha, minimalistic)``: one Keras model per variant per module."""
    cache = {}

    def get(*variant) -> KerasReference:
        if variant not in cache:
            cache[variant] = KerasReference(*variant)
        return cache[variant]

    return get


@pytest.mark.parametrize(
    "arch, alpha, minimalistic",
    KERAS_CASES,
    ids=[f"{a[13:]}-{b}{'-minimalistic' if c else ''}" for a, b, c in KERAS_CASES],
)
def test_keras_official_layout(arch, alpha, minimalistic, keras_reference, tmp_path):
    """The official files' layout: Keras 2's HDF5 groups and its layer names (Conv/BatchNorm,
    expanded_conv_3/squeeze_excite/Conv_1, Logits)."""
    reference = keras_reference(arch, alpha, minimalistic)
    path = tmp_path / "keras2.h5"
    write_keras2_weights(path, reference.model, rename=keras2_v3_layer_name)
    numerics, _ = assert_converts(
        path, "keras", reference.config, nchw(reference.images), reference.logits
    )
    assert (numerics.padding, numerics.bn_eps, numerics.width_rule) == ("same", 1e-3, "tf")


def test_keras3_file_with_include_preprocessing(keras_reference, tmp_path):
    """A Keras 3 ``.weights.h5`` of a model with include_preprocessing=True (a Rescaling layer,
    [0, 255] inputs): the same weights; our model reads the rescaled tensor."""
    reference = keras_reference("mobilenet_v3_small", 0.75, False, True)
    assert "rescaling" in [layer.name for layer in reference.model.layers]
    path = tmp_path / "model.weights.h5"
    reference.model.save_weights(path)
    assert_converts(path, "keras", reference.config, nchw(reference.images), reference.logits)


# --- Files that do not fit ----------------------------------------------------------------------


def test_keras_file_of_the_other_variant_is_named(keras_reference, tmp_path):
    path = tmp_path / "small.h5"
    write_keras2_weights(path, keras_reference("mobilenet_v3_small", 1.0, False).model)
    with pytest.raises(MobileNetsError) as error:
        convert_file(path, "keras", config_for("mobilenet_v3_large", 1.0))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "keras weights do not fit mobilenet_v3_large_1.0_64: the file holds mobilenet_v3_small "
        "weights, not mobilenet_v3_large's; "
    )


def test_torchvision_weights_for_a_tf_width_model_are_refused(tmp_path):
    state = torchvision.models.mobilenet_v3_large(width_mult=0.75).state_dict()
    config = config_for("mobilenet_v3_large", 0.75)  # width_rule "tf", the default
    with pytest.raises(MobileNetsError) as error:
        convert_state_dict(state, config, "torchvision")
    assert str(error.value) == (
        "torchvision weights have 'torchvision' widths; mobilenet_v3_large_0.75_64 has "
        "width_rule='tf', which at alpha 0.75 is another network; allowed: "
        "width_rule='torchvision' (mobilenet_v3_large_0.75_64_tv)"
    )


def test_key_map_covers_every_v3_variant():
    for source in ("torchvision", "timm", "keras"):
        for arch in ("mobilenet_v3_large", "mobilenet_v3_small"):
            for minimalistic in (False, True):
                config = config_for(arch, 1.0, minimalistic=minimalistic)
                entries = key_map(config, source)
                ours = [entry.ours for entry in entries]
                theirs = [entry.theirs for entry in entries]
                state = build_model(config).state_dict()
                expected = {key for key in state if not key.endswith("num_batches_tracked")}
                assert len(set(ours)) == len(ours) and set(ours) == expected
                assert len(set(theirs)) == len(theirs)
