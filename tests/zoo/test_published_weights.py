"""Our published weights (the Fashion-MNIST model in weights/) load like the ecosystems' ones:
through their record, verified by sha256, with their own classes, channels and input size."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fashion_mnist_files import fashion_arrays, fashion_files, write_files

from mobilenets import create_model, load_model
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.weights import read_info
from mobilenets.engine.checkpoint import load_checkpoint, pretrained_checkpoint
from mobilenets.tasks.classification.evaluate import evaluate
from mobilenets.zoo import pretrained

WEIGHTS = "mobilenets:fashion-mnist"
NAME = "mobilenet_v2_1.4_224"  # names the architecture and width; the file brings the rest


@pytest.fixture(scope="module")
def record():
    (found,) = pretrained.list_weights(pretrained.OURS)
    return found


def test_the_record_describes_the_file(record):
    info = read_info(pretrained.REPOSITORY / record.url)
    config = info["config"]
    assert (config["arch"], config["alpha"], config["resolution"]) == (
        record.arch,
        record.alpha,
        record.resolution,
    )
    assert (config["num_classes"], config["in_chans"], config["small_input"]) == (
        record.num_classes,
        record.in_chans,
        record.small_input,
    )
    assert (config["padding"], config["bn_eps"]) == (record.padding, record.bn_eps)
    assert Preprocessing.from_dict(info["preprocessing"]) == record.preprocessing
    assert round(100 * info["metrics"]["val_top1"], 2) == record.top1
    assert round(100 * info["metrics"]["val_top5"], 2) == record.top5


def test_create_model_loads_the_file_with_its_own_classes_channels_and_size():
    model = create_model(NAME, weights=WEIGHTS)
    assert (model.num_classes, model.config.in_chans, model.config.small_input) == (10, 1, True)
    assert model.resolution == 28 and model.weights_record.tag == "fashion-mnist"
    (record,) = pretrained.list_weights(pretrained.OURS)
    reference = load_model(pretrained.REPOSITORY / record.url).eval()
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))


def test_as_a_checkpoint_it_names_the_fashion_mnist_classes():
    checkpoint = pretrained_checkpoint(NAME, WEIGHTS)
    assert checkpoint.classes[:3] == ("T-shirt/top", "Trouser", "Pullover")
    assert checkpoint.class_ids is None  # not an ImageNet model
    assert checkpoint.metrics == {"top1": 95.40, "top5": 99.89}


def test_other_classes_or_another_width_are_refused():
    with pytest.raises(MobileNetsError, match=r"10-class, 1-channel model; got num_classes=5"):
        create_model(NAME, num_classes=5, weights=WEIGHTS)
    with pytest.raises(
        MobileNetsError,
        match=r"publishes no weights for mobilenet_v2_1.0_224 "
        r"with tag 'fashion-mnist'; it has mobilenet_v2 "
        r"alpha 1.4 \[fashion-mnist\]",
    ):
        create_model("mobilenet_v2_1.0_224", weights=WEIGHTS)


def test_a_changed_or_missing_file_is_refused(record, tmp_path, monkeypatch):
    copy = tmp_path / record.url
    copy.parent.mkdir(parents=True)
    shutil.copyfile(pretrained.REPOSITORY / record.url, copy)
    with open(copy, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    monkeypatch.setattr(pretrained, "REPOSITORY", tmp_path)
    with pytest.raises(
        MobileNetsError, match=f"does not match its record: sha256 .*, published {record.sha256}"
    ):
        create_model(NAME, weights=WEIGHTS)
    copy.unlink()
    with pytest.raises(MobileNetsError, match="ship in the mobilenets source repository"):
        create_model(NAME, weights=WEIGHTS)


def test_eval_from_the_command_line_equals_the_checkpoint(record, tmp_path, monkeypatch, capsys):
    """Fashion-MNIST in its real format, 30 random test images: the command's figures are those
    of the committed file evaluated directly."""
    monkeypatch.setenv("MOBILENETS_DATA", str(tmp_path))
    write_files(tmp_path / "fashion-mnist", fashion_files(fashion_arrays(train=20, test=30)))
    out = tmp_path / "eval.json"
    argv = [
        "eval",
        "--model",
        NAME,
        "--weights",
        WEIGHTS,
        "--data",
        "fashion-mnist",
        "--device",
        "cpu",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mobilenet_v2_1.4_28_small" in printed and "T-shirt/top" in printed
    reported = json.loads(out.read_text())
    direct = evaluate(
        load_checkpoint(pretrained.REPOSITORY / record.url),
        "fashion-mnist",
        device="cpu",
        progress=False,
    )
    assert (reported["top1"], reported["top5"], reported["count"]) == (
        direct.top1,
        direct.top5,
        30,
    )
