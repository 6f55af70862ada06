"""MobileNetV3's weights records (preprocessing, numerics, width rule of each source), the named
variants, the V3 weights a stack does not publish, and one V3 conversion through the CLI."""

import hashlib
import io

import pytest
import timm
import torch
import torchvision
from published_files import serve, use_records
from random_weights import randomize_torch

from mobilenets import create_model, load_model
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from mobilenets.zoo.pretrained import find_record, list_weights, published_config
from mobilenets.zoo.registry import get_entry, list_models, resolve_config

TF_RANGE = ((0.5,) * 3, (0.5,) * 3)


def record(source: str, name: str, tag: str | None = None):
    weights = source if tag is None else f"{source}:{tag}"
    return find_record(resolve_config(name), weights)


def test_every_released_v3_width_is_named_with_its_published_figures():
    assert list_models("mobilenet_v3_*") == [
        "mobilenet_v3_large_1.0_224",
        "mobilenet_v3_large_0.75_224",
        "mobilenet_v3_large_minimalistic_1.0_224",
        "mobilenet_v3_small_1.0_224",
        "mobilenet_v3_small_0.75_224",
        "mobilenet_v3_small_minimalistic_1.0_224",
        "mobilenet_v3_small_0.5_224",  # timm's mobilenetv3_small_050
    ]
    large = get_entry("mobilenet_v3_large_minimalistic_1.0_224")
    assert large.config.minimalistic and large.config.width_rule == "tf"
    assert (large.reference.macs_m, large.reference.params_m, large.reference.top1) == (
        209,
        3.9,
        72.3,
    )
    assert get_entry("mobilenet_v3_small_0.5_224").reference is None  # not in TF-slim's table
    # every registered V3 variant has weights from some stack
    published = {r.model_name for r in list_weights() if r.arch.startswith("mobilenet_v3")}
    assert published == set(list_models("mobilenet_v3_*"))


@pytest.mark.parametrize(
    "tag, resize, top1", [("IMAGENET1K_V1", 256, 74.042), ("IMAGENET1K_V2", 232, 75.274)]
)
def test_torchvision_large_records(tag, resize, top1):
    found = record("torchvision", "mobilenet_v3_large_1.0_224", tag)
    assert found.preprocessing.resize == resize and found.top1 == top1
    assert (found.preprocessing.mean, found.preprocessing.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (found.padding, found.bn_eps, found.numerics["bn_momentum"]) == ("symmetric", 1e-3, 0.01)
    assert found.width_rule == "torchvision" and found.num_classes == 1000
    config = published_config(resolve_config("mobilenet_v3_large_1.0_224"), found)
    assert (config.width_rule, config.bn_eps, config.bn_momentum) == ("torchvision", 1e-3, 0.01)
    small = record("torchvision", "mobilenet_v3_small_1.0_224")
    assert (small.tag, small.sha256, small.preprocessing.resize) == (
        "IMAGENET1K_V1",
        "047dcff4",
        256,
    )


@pytest.mark.parametrize(
    "name, tag, tf_port",
    [
        ("mobilenet_v3_large_1.0_224", "mobilenetv3_large_100.ra_in1k", False),
        ("mobilenet_v3_small_0.5_224", "mobilenetv3_small_050.lamb_in1k", False),
        ("mobilenet_v3_large_0.75_224", "tf_mobilenetv3_large_075.in1k", True),
        ("mobilenet_v3_small_minimalistic_1.0_224", "tf_mobilenetv3_small_minimal_100.in1k", True),
    ],
)
def test_timm_records_follow_timms_pretrained_cfg(name, tag, tf_port):
    found = record("timm", name)
    assert (found.tag, found.tf_port) == (tag, tf_port)
    cfg = timm.models.get_pretrained_cfg(tag)
    assert (found.preprocessing.mean, found.preprocessing.std) == (cfg.mean, cfg.std)
    assert found.preprocessing.interpolation == cfg.interpolation
    assert found.preprocessing.resize == round(224 / cfg.crop_pct)
    assert found.num_classes == cfg.num_classes == 1000
    assert found.url == cfg.url
    assert (found.padding, found.bn_eps) == (("same", 1e-3) if tf_port else ("symmetric", 1e-5))


def test_keras_records_read_the_rescaled_tensor():
    found = record("keras", "mobilenet_v3_small_minimalistic_1.0_224")
    assert found.url.endswith(
        "mobilenet_v3/weights_mobilenet_v3_small_minimalistic_224_1.0_float.h5"
    )
    assert (found.preprocessing.mean, found.preprocessing.std) == TF_RANGE
    assert "[0, 255]" in found.source_inputs and "include_preprocessing" in found.source_inputs
    assert (found.padding, found.bn_eps, found.num_classes) == ("same", 1e-3, 1000)
    assert found.to_dict()["source_inputs"] == found.source_inputs


@pytest.mark.parametrize("source", ["torchvision", "timm", "keras"])
def test_an_alpha_no_stack_defines_is_refused_in_one_line(source):
    with pytest.raises(MobileNetsError) as error:
        find_record(resolve_config("mobilenet_v3_large", alpha=0.5), source)
    message = str(error.value)
    # the architecture's published widths first, then the other architectures'
    large = "mobilenet_v3_large_0.75_224" if source == "keras" else "mobilenet_v3_large alpha 0.75"
    if source == "torchvision":
        large = "mobilenet_v3_large alpha 1 [IMAGENET1K_V1]"
    assert message.startswith(
        f"{source} publishes no weights for mobilenet_v3_large_0.5_224; it has {large}"
    )
    assert "\n" not in message


def test_the_other_width_rule_is_refused():
    config = resolve_config("mobilenet_v3_large", alpha=0.75, width_rule="torchvision")
    with pytest.raises(MobileNetsError, match="have 'tf' widths; mobilenet_v3_large_0.75_224_tv"):
        find_record(config, "timm")
    with pytest.raises(MobileNetsError, match="torchvision publishes no weights for .*0.75_224_tv"):
        find_record(config, "torchvision")


# --- Loading published V3 weights, end to end (served locally) ---------------------------------


@pytest.mark.parametrize(
    "source, name, reference",
    [
        ("timm", "mobilenet_v3_small_minimalistic_1.0_224", "tf_mobilenetv3_small_minimal_100"),
        ("torchvision", "mobilenet_v3_small_1.0_224", "mobilenet_v3_small"),
    ],
)
def test_published_v3_weights_load_with_their_numerics(
    server, monkeypatch, source, name, reference
):
    torch.manual_seed(0)
    if source == "timm":
        model = randomize_torch(timm.create_model(reference))
    else:
        model = randomize_torch(getattr(torchvision.models, reference)())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    body = buffer.getvalue()
    published = record(source, name)
    digest = hashlib.sha256(body).hexdigest()[:8]
    local = serve(server, published, published.file_name, body, digest)
    use_records(monkeypatch, local)
    ours = create_model(name, weights=source, progress=False)
    assert ours.weights_record == local and not ours.training
    expected = ("same", 1e-3, "tf") if source == "timm" else ("symmetric", 1e-3, "torchvision")
    assert (ours.config.padding, ours.config.bn_eps, ours.config.width_rule) == expected
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        theirs = model(x)
        assert (theirs[0] - theirs[1]).abs().max() > 1e-2
        assert (ours(x) - theirs).abs().max() <= 1e-4


# --- the CLI ------------------------------------------------------------------------------------


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_converts_a_timm_tf_port(capsys, tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("tf_mobilenetv3_small_minimal_100").eval()
    src, out = tmp_path / "tf_small_minimal.pth", tmp_path / "small.safetensors"
    torch.save(reference.state_dict(), src)
    name = "mobilenet_v3_small_minimalistic_1.0_224"
    code, stdout, err = run(
        capsys, "convert", src, "--from", "timm", "--model", name, "--out", out, "--tf-port"
    )
    assert (code, err) == (0, "")
    assert f"wrote {out} (padding same, bn_eps 0.001)" in stdout
    model = load_model(out).eval()
    assert (model.config.minimalistic, model.config.padding) == (True, "same")
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-4


def test_cli_refuses_a_torchvision_file_for_a_tf_width_model(capsys, tmp_path):
    import torchvision

    src, out = tmp_path / "tv.pth", tmp_path / "large.safetensors"
    torch.save(torchvision.models.mobilenet_v3_large(width_mult=0.75).state_dict(), src)
    command = ("convert", src, "--from", "torchvision", "--model", "mobilenet_v3_large_0.75_224")
    code, _, err = run(capsys, *command, "--out", out)
    assert code != 0 and err.count("\n") == 1
    assert "width_rule='tf'" in err and "allowed: width_rule='torchvision'" in err
    assert not out.exists()
