"""Names, the family builders, suggestions, and weights files."""

import os

import pytest
import torch
from safetensors.torch import save_file

from mobilenets import (
    MobileNetsError,
    create_model,
    list_models,
    load_model,
    load_weights,
    save_weights,
)
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import CONFIG_METADATA_KEY
from mobilenets.zoo.registry import ModelEntry, register


def test_the_tfslim_grid_the_v3_releases_and_the_v4_sizes_are_registered():
    expected = (
        {
            f"mobilenet_v1_{a}_{r}"
            for a in ("1.0", "0.75", "0.5", "0.25")
            for r in (224, 192, 160, 128)
        }
        | {
            f"mobilenet_v2_{a}_{r}"
            for a in ("1.4", "1.3", "1.0", "0.75", "0.5", "0.35")
            for r in (224, 192, 160, 128, 96)
        }
        | {
            f"mobilenet_v3_{variant}_224"
            for variant in (
                "large_1.0",
                "large_0.75",
                "large_minimalistic_1.0",
                "small_1.0",
                "small_0.75",
                "small_minimalistic_1.0",
                "small_0.5",
            )
        }
        | {  # V4 at each size timm published weights for
            f"mobilenet_v4_{model}_1.0_{r}"
            for model, sizes in (
                ("conv_small", (224, 256)),
                ("conv_medium", (256, 224, 384)),
                ("conv_large", (384, 256)),
                ("hybrid_medium", (256, 384, 224)),
                ("hybrid_large", (384,)),
            )
            for r in sizes
        }
    )
    assert set(list_models()) == expected
    assert len(list_models()) == len(expected)
    assert list_models("mobilenet_v2_1.0_*") == [
        f"mobilenet_v2_1.0_{r}" for r in (224, 192, 160, 128, 96)
    ]


def test_a_duplicate_name_is_refused():
    with pytest.raises(MobileNetsError, match="already registered"):
        register(ModelEntry("mobilenet_v1_1.0_224", ModelConfig(arch="mobilenet_v1")))
    with pytest.raises(MobileNetsError, match="already registered"):
        register(ModelEntry("mobilenet_v2", ModelConfig(arch="mobilenet_v2")))


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("mobilenet_v2_1.0_225", "mobilenet_v2_1.0_224"),
        ("mobilenetv2", "mobilenet_v2"),
        ("mobilenet_v1_0.50_224", "mobilenet_v1_0.5_224"),
    ],
)
def test_an_unknown_name_suggests_the_closest(name, suggestion):
    with pytest.raises(
        MobileNetsError, match=f"unknown model '{name}'; did you mean .*{suggestion}"
    ):
        create_model(name)


def test_names_and_families_build_what_they_say():
    model = create_model("mobilenet_v2_0.75_160", num_classes=10)
    assert (model.alpha, model.resolution, model.num_classes) == (0.75, 160, 10)
    family = create_model("mobilenet_v1", alpha=0.5, rho=0.714)
    assert (family.name, type(family).__name__) == ("mobilenet_v1_0.5_160", "MobileNetV1")
    tf_parity = create_model("mobilenet_v2_1.0_224", padding="same", bn_eps=1e-3)
    assert (tf_parity.config.padding, tf_parity.config.bn_eps) == ("same", 1e-3)
    with pytest.raises(MobileNetsError, match="unknown argument\\(s\\) \\['depth'\\]"):
        create_model("mobilenet_v1", depth=3)


@pytest.fixture
def small():
    torch.manual_seed(0)
    return create_model("mobilenet_v2", alpha=0.35, num_classes=4).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip(tmp_path, small, suffix):
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": small.state_dict()}, path)
    else:
        save_weights(small, path)
    loaded = create_model("mobilenet_v2", alpha=0.35, num_classes=4, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_weights_for_another_model_list_what_does_not_fit(tmp_path, small):
    path = save_weights(small, tmp_path / "small.safetensors")
    with pytest.raises(MobileNetsError) as error:
        create_model("mobilenet_v2", alpha=0.5, num_classes=4, weights=path)
    message = str(error.value)
    assert (
        "saved from mobilenet_v2_0.35_224" in message
        and "does not fit mobilenet_v2_0.5_224" in message
    )
    assert (
        "187 keys with another shape (blocks.1.conv_pwl.weight: file (8, 48, 1, 1) vs model "
        "(16, 48, 1, 1);" in message
    )
    with pytest.raises(MobileNetsError, match="missing keys .*unexpected keys"):
        create_model("mobilenet_v1", alpha=0.25, num_classes=4, weights=path)


def test_bad_weights_files_are_reported(tmp_path, small):
    with pytest.raises(MobileNetsError, match="does not exist"):
        load_weights(small, tmp_path / "absent.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(MobileNetsError, match="cannot read weights file"):
        load_weights(small, corrupt)
    truncated = tmp_path / "truncated.pt"
    torch.save(small.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(MobileNetsError, match="cannot read weights file"):
        load_weights(small, truncated)
    pickled = tmp_path / "object.pt"
    torch.save({"model": small}, pickled)  # a whole pickled module: weights_only refuses it
    with pytest.raises(MobileNetsError, match="pickled objects other than tensors"):
        load_weights(small, pickled)
    with pytest.raises(MobileNetsError, match="suffix '.h5'"):
        (tmp_path / "keras.h5").write_bytes(b"x")
        load_weights(small, tmp_path / "keras.h5")


def test_an_interrupted_save_keeps_the_old_file(tmp_path, small, monkeypatch):
    path = save_weights(small, tmp_path / "w.safetensors")
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("mobilenets.core.weights.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_weights(small, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_a_file_keeps_its_numerics(tmp_path):
    torch.manual_seed(0)
    tf_style = create_model("mobilenet_v2", alpha=0.35, padding="same", bn_eps=1e-3).eval()
    path = save_weights(tf_style, tmp_path / "tf.safetensors")
    # Without overrides, create_model takes padding and BN epsilon from the file ...
    adopted = create_model("mobilenet_v2", alpha=0.35, weights=path).eval()
    assert (adopted.config.padding, adopted.config.bn_eps) == ("same", 1e-3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(adopted(x), tf_style(x))
    # ... and refuses a contradiction instead of computing something else.
    with pytest.raises(MobileNetsError, match="other numerics: padding 'same' in the file"):
        create_model("mobilenet_v2", alpha=0.35, weights=path, padding="symmetric")
    with pytest.raises(MobileNetsError, match="bn_eps 0.001 in the file, 1e-05 in the model"):
        load_weights(create_model("mobilenet_v2", alpha=0.35, padding="same"), path)


def test_load_model_rebuilds_from_the_file_alone(tmp_path, small):
    path = save_weights(small, tmp_path / "small.safetensors")
    rebuilt = load_model(path).eval()
    assert rebuilt.config == small.config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))
    plain = tmp_path / "plain.pt"
    torch.save(small.state_dict(), plain)
    with pytest.raises(MobileNetsError, match="records no mobilenets model config"):
        load_model(plain)
    with pytest.raises(MobileNetsError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("record", ["{}", "5", '{"alpha": 1.0}', "not json"])
def test_a_broken_config_record_still_gives_the_key_report(tmp_path, small, record):
    path = tmp_path / "odd.safetensors"
    state = {k: v.contiguous() for k, v in small.state_dict().items()}
    save_file(state, str(path), metadata={CONFIG_METADATA_KEY: record})
    with pytest.raises(MobileNetsError, match="does not fit mobilenet_v2_0.5_224: \\d+ keys"):
        create_model("mobilenet_v2", alpha=0.5, num_classes=4, weights=path)


def test_save_weights_writes_safetensors_only(tmp_path, small):
    with pytest.raises(MobileNetsError, match="writes .safetensors files, got '.*w.pt'"):
        save_weights(small, tmp_path / "w.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_name_must_be_a_string():
    with pytest.raises(MobileNetsError, match="a model name is a string .* got \\['x'\\]"):
        create_model(["x"])
