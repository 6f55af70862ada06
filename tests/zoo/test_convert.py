"""Weight conversion: torchvision, timm and Keras weights files, converted by
mobilenets.zoo.convert, compute the reference model's logits in our models; a file that does not fit
fails loudly, naming the keys and shapes.

Every reference gets random weights that make its logits depend on the input (checked), with
non-trivial BN statistics, so that a mis-mapped or mis-laid-out tensor shows in the logits. Each
reference is saved in its own file format and converted from the file.
"""

import os

import h5py
import numpy as np
import pytest
import timm
import torch
import torchvision
from keras_files import keras_logits, keras_mobilenet, write_keras2_weights
from random_weights import randomize_torch
from safetensors.torch import save_file
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.zoo.convert import (
    SOURCES,
    convert_file,
    convert_state_dict,
    key_map,
    read_foreign,
    read_keras_h5,
)
from mobilenets.zoo.registry import resolve_config

# Keras 3 picks its backend at import; keras is imported only after this (in the fixtures), and
# the torch backend needs no TensorFlow.
os.environ["KERAS_BACKEND"] = "torch"

RESOLUTION = 64  # even: TF "SAME" pads only bottom/right at stride 2, unlike symmetric padding
BATCH = 2
TOLERANCE = 1e-4  # max abs logit difference, fp32
V1_KERAS_ALPHAS = (1.0, 0.75, 0.5, 0.25)
V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# Keras's torch backend converts tensors with numpy 2's deprecated __array__ signature.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.usefixtures("one_thread"),
]


def config_for(arch: str, alpha: float):
    return resolve_config(arch, alpha=alpha, resolution=RESOLUTION)


def images(seed: int = 0) -> np.ndarray:
    """NHWC float32 images (Keras's layout); ``nchw`` gives ours."""
    return (
        np.random.default_rng(seed)
        .normal(size=(BATCH, RESOLUTION, RESOLUTION, 3))
        .astype(np.float32)
    )


def nchw(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def assert_input_matters(logits: np.ndarray) -> None:
    """Two different images give different logits: the reference's weights carry the signal."""
    assert np.abs(logits[0] - logits[1]).max() > 1e-2


def torch_reference(model: nn.Module) -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    """A randomized torchvision/timm model, NCHW images, and its logits."""
    torch.manual_seed(0)
    model = randomize_torch(model)
    batch = nchw(images())
    with torch.no_grad():
        logits = model(batch).numpy()
    assert_input_matters(logits)
    return model, batch, logits


def our_logits(config, state, batch: torch.Tensor) -> np.ndarray:
    model = build_model(config).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model(batch).numpy()


def max_error(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max())


def assert_converts(path, source: str, config, batch: torch.Tensor, expected: np.ndarray):
    """Convert the file, load it into our model with the source's numerics, compare logits."""
    state, numerics, report = convert_file(path, source, config)
    assert report.converted == len(key_map(numerics, source))
    assert max_error(our_logits(numerics, state, batch), expected) <= TOLERANCE
    return state, numerics, report


# --- torchvision and timm -----------------------------------------------------------------------


@pytest.mark.parametrize("alpha", V2_ALPHAS, ids=lambda alpha: f"alpha{alpha}")
def test_torchvision_file(alpha, tmp_path):
    reference, batch, expected = torch_reference(torchvision.models.mobilenet_v2(width_mult=alpha))
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    _, numerics, _ = assert_converts(
        path, "torchvision", config_for("mobilenet_v2", alpha), batch, expected
    )
    assert (numerics.padding, numerics.bn_eps) == ("symmetric", 1e-5)


TIMM_CASES = [
    ("mobilenetv1_100", "mobilenet_v1", 1.0, ".safetensors"),
    ("mobilenetv1_125", "mobilenet_v1", 1.25, ".pth"),
    ("mobilenetv2_035", "mobilenet_v2", 0.35, ".safetensors"),
    ("mobilenetv2_050", "mobilenet_v2", 0.5, ".pth"),
    ("mobilenetv2_075", "mobilenet_v2", 0.75, ".safetensors"),
    ("mobilenetv2_100", "mobilenet_v2", 1.0, ".pth"),
    ("mobilenetv2_140", "mobilenet_v2", 1.4, ".safetensors"),
]


def save_torch_file(model: nn.Module, path) -> None:
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), path)
    else:
        torch.save(model.state_dict(), path)


@pytest.mark.parametrize(
    "name, arch, alpha, suffix", TIMM_CASES, ids=[f"{c[0]}{c[3]}" for c in TIMM_CASES]
)
def test_timm_file(name, arch, alpha, suffix, tmp_path):
    reference, batch, expected = torch_reference(timm.create_model(name, pretrained=False))
    path = tmp_path / f"{name}{suffix}"
    save_torch_file(reference, path)
    assert_converts(path, "timm", config_for(arch, alpha), batch, expected)


# timm variants that are not the papers' nets: a 1x1 head conv on V1 ("h"), and V2 with a depth
# multiplier (more blocks per row) and a fixed stem and head ("d").
TIMM_OTHER_ARCHITECTURES = [
    ("mobilenetv1_100h", "mobilenet_v1", 1.0, "conv_head.weight"),
    ("mobilenetv2_110d", "mobilenet_v2", 1.1, "blocks.1.2."),  # a third block in row 2
    ("mobilenetv2_120d", "mobilenet_v2", 1.2, "blocks.1.2."),  # a third block in row 2
]


@pytest.mark.parametrize(
    "name, arch, alpha, extra_key",
    TIMM_OTHER_ARCHITECTURES,
    ids=[case[0] for case in TIMM_OTHER_ARCHITECTURES],
)
def test_timm_other_architecture_is_refused(name, arch, alpha, extra_key, tmp_path):
    path = tmp_path / f"{name}.safetensors"
    save_file(timm.create_model(name, pretrained=False).state_dict(), path)
    with pytest.raises(MobileNetsError, match="foreign keys unused") as error:
        convert_file(path, "timm", config_for(arch, alpha))
    assert extra_key in str(error.value)


# --- Keras --------------------------------------------------------------------------------------


class KerasReference:
    """A randomized Keras model, its input and its logits."""

    def __init__(self, arch: str, alpha: float) -> None:
        self.arch, self.alpha = arch, alpha
        self.config = config_for(arch, alpha)
        self.model = keras_mobilenet(arch, alpha, RESOLUTION, seed=0)
        self.images = images()
        self.logits = keras_logits(self.model, self.images)
        assert_input_matters(self.logits)


@pytest.fixture(scope="module")
def keras_reference():
    """``keras_reference(arch, alpha)``: one Keras model per variant for the whole module."""
    cache = {}

    def get(arch: str, alpha: float) -> KerasReference:
        if (arch, alpha) not in cache:
            cache[arch, alpha] = KerasReference(arch, alpha)
        return cache[arch, alpha]

    return get


def save_keras_legacy_weights(model, path) -> None:
    """Keras 3's legacy HDF5 writer, weights only (the layout of the official files, but with
    Keras 3's weight names)."""
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    with h5py.File(path, "w") as handle:
        save_weights_to_hdf5_group(handle, model)


KERAS_WRITERS = {
    "keras2.h5": lambda model, path: write_keras2_weights(path, model),  # the official files
    "legacy_weights.h5": save_keras_legacy_weights,
    "legacy_model.h5": lambda model, path: model.save(path),  # weights under model_weights/
    "keras3.weights.h5": lambda model, path: model.save_weights(path),
}
KERAS_CASES = [
    *(("mobilenet_v1", alpha, "keras2.h5") for alpha in V1_KERAS_ALPHAS),
    *(("mobilenet_v2", alpha, "keras2.h5") for alpha in V2_ALPHAS),
    *(
        (arch, alpha, layout)
        for arch, alpha in (("mobilenet_v1", 0.25), ("mobilenet_v2", 0.35))
        for layout in KERAS_WRITERS
        if layout != "keras2.h5"
    ),
]


@pytest.mark.parametrize(
    "arch, alpha, layout", KERAS_CASES, ids=[f"{a[-2:]}-{b}-{c}" for a, b, c in KERAS_CASES]
)
def test_keras_file(arch, alpha, layout, keras_reference, tmp_path):
    reference = keras_reference(arch, alpha)
    path = tmp_path / layout
    KERAS_WRITERS[layout](reference.model, path)
    _, numerics, _ = assert_converts(
        path, "keras", reference.config, nchw(reference.images), reference.logits
    )
    assert (numerics.padding, numerics.bn_eps) == ("same", 1e-3)


@pytest.mark.parametrize(
    "arch, alpha", [("mobilenet_v1", 0.25), ("mobilenet_v2", 0.35)], ids=["v1", "v2"]
)
def test_keras2_file_is_one_keras_loads(arch, alpha, keras_reference, tmp_path):
    """The hand-written Keras 2 layout is a real weights file: Keras's own order-based loader
    puts it into a fresh model, which then computes the original's logits."""
    from keras.src.legacy.saving.legacy_h5_format import load_weights_from_hdf5_group

    reference = keras_reference(arch, alpha)
    path = tmp_path / "keras2.h5"
    write_keras2_weights(path, reference.model)
    fresh = keras_mobilenet(arch, alpha, RESOLUTION, seed=1)
    assert max_error(keras_logits(fresh, reference.images), reference.logits) > 1e-2
    with h5py.File(path, "r") as handle:
        load_weights_from_hdf5_group(handle, fresh)
    assert max_error(keras_logits(fresh, reference.images), reference.logits) <= 1e-6


def test_keras_numerics_matter(keras_reference, tmp_path):
    """Keras weights need Keras's numerics: TF "SAME" padding and BN epsilon 1e-3. Either one
    alone set to PyTorch's (symmetric padding, 1e-5) moves the logits far past the tolerance."""
    reference = keras_reference("mobilenet_v2", 1.0)
    path = tmp_path / "keras2.h5"
    write_keras2_weights(path, reference.model)
    state, numerics, _ = convert_file(path, "keras", reference.config)
    batch = nchw(reference.images)
    errors = {
        label: max_error(our_logits(config, state, batch), reference.logits)
        for label, config in {
            "keras": numerics,
            "symmetric padding": numerics.replace(padding="symmetric"),
            "bn_eps 1e-5": numerics.replace(bn_eps=1e-5),
        }.items()
    }
    assert errors["keras"] <= TOLERANCE, errors
    assert errors["symmetric padding"] > 1e-3, errors
    assert errors["bn_eps 1e-5"] > 1e-3, errors


# --- TF-slim's 1001 classes ---------------------------------------------------------------------


def with_background_class(foreign: dict, source: str, arch: str) -> dict:
    """The same weights with a background class 0 before the 1000 ImageNet classes."""
    rng = np.random.default_rng(7)
    foreign = dict(foreign)
    if source == "torchvision":
        weight, bias = foreign["classifier.1.weight"], foreign["classifier.1.bias"]
        foreign["classifier.1.weight"] = torch.cat([torch.randn(1, weight.shape[1]), weight])
        foreign["classifier.1.bias"] = torch.cat([torch.randn(1), bias])
        return foreign
    layer = "conv_preds" if arch == "mobilenet_v1" else "predictions"
    kernel, bias = foreign[f"{layer}/kernel"], foreign[f"{layer}/bias"]  # classes last
    background = rng.normal(size=(*kernel.shape[:-1], 1)).astype(kernel.dtype)
    foreign[f"{layer}/kernel"] = np.concatenate([background, kernel], axis=-1)
    foreign[f"{layer}/bias"] = np.concatenate([rng.normal(size=1).astype(bias.dtype), bias])
    return foreign


@pytest.mark.parametrize(
    "source, arch",
    [("torchvision", "mobilenet_v2"), ("keras", "mobilenet_v2"), ("keras", "mobilenet_v1")],
    ids=["torchvision", "keras-v2", "keras-v1"],
)
def test_1001_classes_drop_the_background_row(source, arch, keras_reference, tmp_path):
    if source == "torchvision":
        config = config_for(arch, 0.35)
        foreign = torch_reference(torchvision.models.mobilenet_v2(width_mult=0.35))[0].state_dict()
    else:
        reference = keras_reference(arch, 0.35 if arch == "mobilenet_v2" else 0.25)
        config = reference.config
        write_keras2_weights(tmp_path / "keras2.h5", reference.model)
        foreign = read_keras_h5(tmp_path / "keras2.h5")
    plain, _, plain_report = convert_state_dict(foreign, config, source)
    state, _, report = convert_state_dict(
        with_background_class(foreign, source, arch), config, source
    )
    assert state["classifier.weight"].shape == (1000, plain["classifier.weight"].shape[1])
    assert set(state) == set(plain)
    for key, value in plain.items():  # the classifier's 1000 rows and everything else
        assert torch.equal(state[key], value), key
    assert any("background" in note for note in report.notes), report.notes
    assert not any("background" in note for note in plain_report.notes)


# --- Files that do not fit ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_v2():
    """torchvision mobilenet_v2 1.0's state dict."""
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2().state_dict()


def test_wrong_alpha_lists_keys_and_shapes(torchvision_v2, tmp_path):
    path = tmp_path / "mobilenet_v2_1.0.pth"
    torch.save(torchvision_v2, path)
    with pytest.raises(MobileNetsError, match="tensors of another shape") as error:
        convert_file(path, "torchvision", config_for("mobilenet_v2", 0.5))
    message = str(error.value)
    assert "features.0.0.weight (32, 3, 3, 3)" in message
    assert "stem.conv.weight (16, 3, 3, 3)" in message


def test_v1_file_as_v2_lists_missing_keys(tmp_path):
    path = tmp_path / "mobilenetv1_100.safetensors"
    save_file(timm.create_model("mobilenetv1_100", pretrained=False).state_dict(), path)
    with pytest.raises(MobileNetsError, match="foreign keys missing") as error:
        convert_file(path, "timm", config_for("mobilenet_v2", 1.0))
    assert "blocks.1.0.conv_pwl.weight" in str(error.value)


def test_unknown_foreign_key_is_listed_as_unused(torchvision_v2):
    foreign = {**torchvision_v2, "features.19.weight": torch.zeros(3)}
    with pytest.raises(MobileNetsError, match=r"1 foreign keys unused \(features\.19\.weight\)"):
        convert_state_dict(foreign, config_for("mobilenet_v2", 1.0), "torchvision")


def test_torchvision_has_no_v1(torchvision_v2):
    config = config_for("mobilenet_v1", 1.0)
    with pytest.raises(MobileNetsError, match="torchvision has no mobilenet_v1"):
        convert_state_dict(torchvision_v2, config, "torchvision")
    with pytest.raises(MobileNetsError, match="torchvision has no mobilenet_v1"):
        key_map(config, "torchvision")


@pytest.mark.parametrize(
    "call",
    [
        lambda path, config: convert_state_dict({}, config, "caffe"),
        lambda path, config: convert_file(path, "caffe", config),
        lambda path, config: read_foreign(path, "caffe"),
        lambda path, config: key_map(config, "caffe"),
    ],
    ids=["convert_state_dict", "convert_file", "read_foreign", "key_map"],
)
def test_unknown_source_names_the_allowed_ones(call, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({}, path)
    with pytest.raises(MobileNetsError, match="'caffe'") as error:
        call(path, config_for("mobilenet_v2", 1.0))
    assert ", ".join(SOURCES) in str(error.value)


def test_read_keras_h5_refuses_other_files(tmp_path):
    not_keras = tmp_path / "data.h5"
    with h5py.File(not_keras, "w") as handle:
        handle.create_dataset("images", data=np.zeros((2, 3)))
    with pytest.raises(MobileNetsError, match="not Keras weights"):
        read_keras_h5(not_keras)
    with pytest.raises(MobileNetsError, match="does not exist"):
        read_keras_h5(tmp_path / "missing.h5")
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("not an HDF5 file")
    with pytest.raises(MobileNetsError, match="cannot read Keras weights file"):
        read_keras_h5(not_hdf5)


# --- The key maps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, arch",
    [
        ("torchvision", "mobilenet_v2"),
        ("timm", "mobilenet_v1"),
        ("timm", "mobilenet_v2"),
        ("keras", "mobilenet_v1"),
        ("keras", "mobilenet_v2"),
    ],
    ids=lambda value: value.removeprefix("mobilenet_"),
)
def test_key_map_covers_the_model(source, arch):
    config = config_for(arch, 1.0)
    entries = key_map(config, source)
    ours = [entry.ours for entry in entries]
    theirs = [entry.theirs for entry in entries]
    expected = {
        key for key in build_model(config).state_dict() if not key.endswith("num_batches_tracked")
    }
    assert len(set(ours)) == len(ours)
    assert set(ours) == expected
    assert len(set(theirs)) == len(theirs)  # no foreign tensor feeds two of ours
