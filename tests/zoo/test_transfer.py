"""Fine-tuning: a model started from other weights (ours, torchvision's, timm's) gets every
tensor that fits, a new classifier where the classes differ and a stem folded onto other input
channels; `train --weights` does this, records it, and a resumed run does not read them again."""

from __future__ import annotations

import json
import logging

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from mobilenets import create_model, save_weights
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.engine.checkpoint import STATE_FILE
from mobilenets.tasks.classification.train import fit, train_config
from mobilenets.zoo.transfer import fold_input_channels, source_model, transfer_weights

TINY = dict(
    model="mobilenet_v2",
    data="synthetic:64",
    alpha=0.35,
    epochs=1,
    batch_size=16,
    lr=0.05,
    warmup_epochs=0.0,
    augment="basic",
    random_erasing=0.0,
    ema_decay=0.0,
)


def scrambled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with weights and BN statistics no fresh model has."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    return model


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """A torchvision mobilenet_v2 state dict (random weights), as a user's .pth file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("torchvision") / "mobilenet_v2.pth"
    torch.save(scrambled(torchvision.models.mobilenet_v2()).eval().state_dict(), path)
    return path


def test_folded_stem_responds_to_a_gray_image_as_the_rgb_one():
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 3, 3)
    gray = torch.rand(2, 1, 9, 9)
    rgb_response = F.conv2d(gray.expand(-1, 3, -1, -1), weight)
    assert torch.allclose(F.conv2d(gray, fold_input_channels(weight, 1)), rgb_response, atol=1e-5)
    six = fold_input_channels(weight, 6)
    assert torch.allclose(F.conv2d(gray.expand(-1, 6, -1, -1), six), rgb_response, atol=1e-5)
    assert torch.equal(six[:, 3:], six[:, :3])
    two = fold_input_channels(weight, 2)
    assert torch.allclose(two, weight[:, :2] * 1.5)


def test_torchvision_file_to_a_grayscale_small_input_model_with_ten_classes(torchvision_file):
    source = source_model(torchvision_file, "mobilenet_v2")
    assert (source.config.num_classes, source.config.in_chans) == (1000, 3)
    model = create_model(
        "mobilenet_v2", num_classes=10, in_chans=1, small_input=True, resolution=28
    )
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    notes = transfer_weights(model, source)
    assert notes == [
        "a new classifier for 10 classes (the weights have 1000)",
        "the stem's filters summed from 3 input channels to 1",
    ]
    ours, theirs = model.state_dict(), source.state_dict()
    for key, value in ours.items():
        if key.startswith("classifier."):
            assert torch.equal(value, fresh[key]), key
        elif key == "stem.conv.weight":
            assert torch.allclose(value, theirs[key].sum(dim=1, keepdim=True))
        else:
            assert torch.equal(value, theirs[key]), key


def test_timm_file_keeps_its_classes_and_channels(tmp_path):
    path = tmp_path / "timm.pth"
    reference = timm.create_model("mobilenetv2_050", num_classes=7, in_chans=1)
    torch.save(scrambled(reference).state_dict(), path)
    source = source_model(path, "mobilenet_v2", alpha=0.5)
    assert (source.config.num_classes, source.config.in_chans) == (7, 1)
    model = create_model("mobilenet_v2", alpha=0.5, num_classes=7, in_chans=1)
    assert transfer_weights(model, source) == []
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_weights_for_another_model_or_numerics_are_refused_and_nothing_loads(tmp_path):
    model = create_model("mobilenet_v2", alpha=0.35, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_weights(create_model("mobilenet_v2", alpha=0.5), tmp_path / "a05.safetensors")
    with pytest.raises(MobileNetsError, match=r"alpha 0.5 \(need 0.35\)"):
        transfer_weights(model, source_model(path, "mobilenet_v2", alpha=0.35))
    keras_like = create_model("mobilenet_v2", alpha=0.35, padding="same", bn_eps=1e-3)
    with pytest.raises(MobileNetsError, match=r"padding 'same' \(need 'symmetric'\); bn_eps"):
        transfer_weights(model, keras_like)
    with pytest.raises(MobileNetsError, match="arch 'mobilenet_v1'"):
        transfer_weights(model, create_model("mobilenet_v1", alpha=0.25))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(MobileNetsError, match="weights must be a MobileNet, 'torchvision'"):
        source_model(3, "mobilenet_v2")
    with pytest.raises(MobileNetsError, match="weights must be 'keras', 'torchvision', 'timm'"):
        train_config(weights=3)


def test_a_run_starts_from_the_weights_with_their_numerics_and_resumes_without_them(
    tmp_path, caplog
):
    source = scrambled(
        create_model("mobilenet_v2", alpha=0.35, num_classes=4, padding="same", bn_eps=1e-3)
    )
    weights = save_weights(source, tmp_path / "start.safetensors")
    out = tmp_path / "run"
    # A learning rate so small that one epoch leaves the conv weights where they started.
    config = train_config("modern", **{**TINY, "lr": 1e-12}, weights=weights)
    with caplog.at_level(logging.INFO, logger="mobilenets"):
        fit(config, out, progress=False)
    lines = caplog.messages
    assert lines[0] == (
        f"starting from the weights {str(weights)!r}; a new classifier for 10 classes (the "
        "weights have 4)"
    )
    run = json.loads((out / "train_config.json").read_text())
    assert run["train_config"]["weights"] == str(weights)
    assert (run["model_config"]["padding"], run["model_config"]["bn_eps"]) == ("same", 1e-3)
    trained = torch.load(out / STATE_FILE, weights_only=True)["model"]
    start = source.state_dict()
    convs = [key for key, value in start.items() if value.ndim == 4]
    assert len(convs) > 30
    for key in convs:
        assert torch.allclose(trained[key], start[key], atol=1e-6), key
    assert trained["classifier.weight"].shape == (10, start["classifier.weight"].shape[1])
    # The run holds everything it needs: resuming it does not read the weights again.
    weights.unlink()
    resumed = fit(None, out, resume=True, progress=False)
    assert resumed.epochs == 1


def test_train_weights_flag(tmp_path, torchvision_file, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        "synthetic:64",
        "--alpha",
        "1.0",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--augment",
        "basic",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main([*argv, "--weights", str(torchvision_file)]) == 0
    printed = capsys.readouterr().out
    assert f"starting from the weights {str(torchvision_file)!r}; a new classifier" in printed
    missing = tmp_path / "nothing.pth"
    code = main([*argv[:-1], str(tmp_path / "other"), "--weights", str(missing)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"weights file {str(missing)!r} does not exist" in err
    assert not (tmp_path / "other").exists()
    assert main(["train", "--resume", "--out", str(out), "--weights", "torchvision"]) == 2
    assert "drop --weights (it may change only --device" in capsys.readouterr().err
