"""int8 post-training quantization: the file runs in onnxruntime within a few points of the fp32
model, every conv is quantized (QDQ, s8 per-channel weights, u8 activations), the metadata
travels, calibration reads the training split only; user errors are one line and exit 2."""

import argparse
import contextlib
import io
import json
import re

import numpy as np
import onnx
import pytest
import torch
from torch.nn import functional as F

from mobilenets import cli, quantize
from mobilenets.cli import main
from mobilenets.data import load_splits
from mobilenets.errors import MobileNetsError
from mobilenets.export import read_onnx_metadata
from mobilenets.inference import load_checkpoint
from mobilenets.models import build_model
from mobilenets.spec import ModelConfig
from mobilenets.train import METADATA_PREFIX, ordered_loader
from mobilenets.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "synthetic:256"  # 256 training and 64 validation images of 32 px, 10 classes
CALIBRATION = 128
MAX_DROP = 0.10  # top-1, as a fraction: 6 of the 64 validation images


def features(model, images: torch.Tensor) -> torch.Tensor:
    """The pooled features the classifier reads."""
    seen = []
    hook = model.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model(images)
    hook.remove()
    return seen[0]


def save_checkpoint(model, path, classes, preprocessing):
    metadata = {"classes": list(classes), "preprocessing": preprocessing.to_dict()}
    save_weights(model, path, {METADATA_PREFIX + k: json.dumps(v) for k, v in metadata.items()})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small-input V2 0.35 whose classifier is a ridge regression on the random features of
    the synthetic training images: about 100% on the validation images in half a second, which
    training takes minutes to reach (no accuracy, no drop to measure)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mobilenet_v2", alpha=0.35, resolution=32,
                                    num_classes=10, small_input=True)).eval()  # fmt: skip
    splits = load_splits(DATA, 32)
    transform = splits.preprocessing.eval_transform()
    train = splits.train
    x = features(model, torch.stack([transform(image) for image in train.images]))
    mean, std = x.mean(0), x.std(0) + 1e-6
    design = torch.cat([(x - mean) / std, torch.ones(len(x), 1)], 1)
    targets = F.one_hot(train.labels, 10).float()
    eye = torch.eye(design.shape[1])
    solution = torch.linalg.solve(design.T @ design + 0.1 * eye, design.T @ targets)
    weight = solution[:-1].T / std
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(solution[-1] - weight @ mean)
    path = tmp_path_factory.mktemp("quantize") / "model.safetensors"
    return save_checkpoint(model, path, splits.classes, splits.preprocessing)


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def quantized(checkpoint):
    """`mobilenets quantize CKPT --method ptq` with the defaults but a smaller calibration set,
    recording which images calibration read: the file, what it printed, the batches read."""
    out = checkpoint.parent / "int8.onnx"
    read = []

    def calibration_batches(dataset, indices, batch_size):
        read.append((dataset, list(indices)))
        return original(dataset, indices, batch_size)

    original = quantize.calibration_batches
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantize, "calibration_batches", calibration_batches)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            argv = ["quantize", checkpoint, "--data", DATA, "--method", "ptq", "--out", out,
                    "--calibration-images", CALIBRATION, "--batch-size", 32]  # fmt: skip
            code = main([str(arg) for arg in argv])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), read


def test_cli_prints_both_accuracies_and_sizes(quantized):
    out, printed, _ = quantized
    first, second = printed.splitlines()
    match = re.fullmatch(
        r"fp32 top-1 (\d+\.\d\d)%, int8 top-1 (\d+\.\d\d)% \(([-+]\d+\.\d\d) points\) on 64 "
        r"validation images; int8 file (\d+\.\d) MB \(fp32 (\d+\.\d) MB\)",
        first,
    )
    assert match, first
    fp32, int8, drop, int8_mb, fp32_mb = map(float, match.groups())
    print(f"\nminmax: fp32 top-1 {fp32}%, int8 {int8}% ({drop:+.2f} points)")
    assert fp32 >= 90.0  # an accuracy a drop can be measured against
    assert drop == pytest.approx(int8 - fp32, abs=0.011) and -drop <= 100 * MAX_DROP
    assert int8_mb < fp32_mb / 2
    assert second == f"wrote {out}"


def test_calibration_reads_the_first_images_of_a_seeded_permutation_of_the_train_split(
    quantized,
):
    (dataset, indices), *more = quantized[2]
    assert not more
    splits = load_splits(DATA, 32)
    assert torch.equal(dataset.images, splits.train.images)  # not the validation images
    assert indices == torch.randperm(256, generator=torch.Generator().manual_seed(0))[:128].tolist()
    assert len(set(indices)) == CALIBRATION
    settings = read_onnx_metadata(quantized[0])["quantization"]
    assert settings["calibration_images"] == CALIBRATION


def test_every_conv_reads_int8_weights_and_activations_are_u8(quantized, checkpoint):
    model = onnx.load(str(quantized[0]))
    onnx.checker.check_model(model)
    nodes = model.graph.node
    producers = {output: node for node in nodes for output in node.output}
    convs = [node for node in nodes if node.op_type == "Conv"]
    # stem, 16 expansions, 17 depthwise, 17 projections, head: 52, none left in float
    assert len(convs) == 52
    depthwise = 0
    for conv in convs:
        dequantize = producers[conv.input[1]]
        assert dequantize.op_type == "DequantizeLinear", conv.name
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        weight = onnx.numpy_helper.to_array(initializers[dequantize.input[0]])
        scale = onnx.numpy_helper.to_array(initializers[dequantize.input[1]])
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)  # per channel
        assert producers[conv.input[0]].op_type == "DequantizeLinear", conv.name
        depthwise += any(a.name == "group" and a.i > 1 for a in conv.attribute)
    assert depthwise == 17
    activations = [producers[conv.input[0]] for conv in convs]
    zero_points = {
        onnx.numpy_helper.to_array(t).dtype
        for t in model.graph.initializer
        if t.name in {node.input[2] for node in activations}
    }
    assert zero_points == {np.dtype(np.uint8)}


def test_metadata_is_copied_and_the_settings_added(quantized, checkpoint):
    metadata = read_onnx_metadata(quantized[0])
    ours = load_checkpoint(checkpoint)
    assert metadata["classes"] == list(ours.classes)
    assert metadata["preprocessing"] == ours.preprocessing.to_dict() | {
        "mean": list(ours.preprocessing.mean), "std": list(ours.preprocessing.std)
    }  # fmt: skip
    assert ModelConfig.from_dict(metadata["model_config"]) == ours.model.config
    assert metadata["source"] == "checkpoint model.safetensors" and metadata["mobilenets_version"]
    assert metadata["quantization"] | {"onnxruntime_version": None} == {
        "method": "ptq", "calibrate": "minmax", "calibration_images": CALIBRATION,
        "activations": "u8", "weights": "s8 per-channel", "format": "QDQ",
        "onnxruntime_version": None,
    }  # fmt: skip


def test_percentile_from_a_tensor_keeps_the_accuracy(checkpoint, tmp_path):
    ours = load_checkpoint(checkpoint)
    splits = load_splits(DATA, 32)
    transform = ours.preprocessing.eval_transform()
    images = torch.stack([transform(image) for image in splits.train.images[:64]])
    out = tmp_path / "percentile.onnx"
    report = quantize.quantize_ptq(ours, images, out, method="percentile", batch_size=16)
    assert (report.path, report.method, report.activation_type) == (out, "percentile", "u8")
    assert report.calibration_images == 64 and report.quantized_convs == 52
    assert report.float_convs == () and report.int8_bytes < report.fp32_bytes / 2
    assert read_onnx_metadata(out)["quantization"]["calibrate"] == "percentile"
    splits.val.transform = transform
    loader = ordered_loader(splits.val, 32)
    int8_top1, int8_top5, count = quantize.evaluate_onnx(out, loader)
    with torch.no_grad():
        x = torch.stack([transform(image) for image in splits.val.images])
        fp32_top1 = (ours.model(x).argmax(1) == splits.val.labels).float().mean().item()
    print(f"\npercentile: fp32 top-1 {fp32_top1:.2%}, int8 {int8_top1:.2%}, top-5 {int8_top5:.2%}")
    assert count == 64 and fp32_top1 >= 0.9
    assert fp32_top1 - int8_top1 <= MAX_DROP


def test_cli_choices_are_the_librarys():
    assert cli.QUANTIZE_CALIBRATE == tuple(quantize.CALIBRATE_METHODS)
    assert cli.QUANTIZE_ACTIVATIONS == tuple(quantize.ACTIVATION_TYPES)
    parser = cli.build_parser()
    args = parser.parse_args(["quantize", "c", "--data", "d", "--method", "ptq", "--out", "o"])
    assert isinstance(args, argparse.Namespace)
    assert (args.calibration_images, args.batch_size) == (
        quantize.DEFAULT_CALIBRATION_IMAGES, quantize.DEFAULT_BATCH_SIZE,
    )  # fmt: skip
    assert (args.calibrate, args.activations) == ("minmax", "u8")


# --- Errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "int8.ort"], "the output must be a .onnx file, got 'int8.ort'"),
        (["--calibration-images", "0"], "calibration images must be from 1 to 256 (the training "
                                        "split's size), got 0"),
        (["--calibration-images", "257"], "from 1 to 256 (the training split's size), got 257"),
    ],
    ids=["suffix", "zero", "more_than_the_split"],
)  # fmt: skip
def test_user_errors_are_one_line(capsys, checkpoint, tmp_path, extra, message):
    argv = ["quantize", checkpoint, "--data", DATA, "--method", "ptq", "--out",
            tmp_path / "int8.onnx", *extra]  # fmt: skip
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "option, value", [("--method", "qat"), ("--calibrate", "kl"), ("--activations", "u16")]
)
def test_unknown_choices_are_refused(capsys, checkpoint, tmp_path, option, value):
    argv = ["quantize", checkpoint, "--data", DATA, "--method", "ptq", "--out",
            tmp_path / "int8.onnx", option, value]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, *argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and f"'{value}'" in err


def test_a_checkpoint_for_other_classes_is_refused(capsys, checkpoint, tmp_path):
    other = load_checkpoint(checkpoint)
    classes = [f"kind {i}" for i in range(10)]
    path = save_checkpoint(other.model, tmp_path / "other.safetensors", classes,
                           other.preprocessing)  # fmt: skip
    out = tmp_path / "int8.onnx"
    code, _, err = run_cli(
        capsys, "quantize", path, "--data", DATA, "--method", "ptq", "--out", out
    )
    assert code == 2 and err.count("\n") == 1
    assert "has 10 classes (kind 0, kind 1" in err and "--data 'synthetic:256' has 10" in err
    assert not out.exists()


def test_library_errors_name_the_value(checkpoint, tmp_path):
    ours = load_checkpoint(checkpoint)
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(
        MobileNetsError, match="must be one of minmax, entropy, percentile, got 'kl'"
    ):
        quantize.quantize_ptq(ours, images, tmp_path / "a.onnx", method="kl")
    with pytest.raises(MobileNetsError, match="must be one of u8, s8, got 'u16'"):
        quantize.quantize_ptq(ours, images, tmp_path / "a.onnx", activation_type="u16")
    with pytest.raises(MobileNetsError, match=r"float \(N, C, H, W\) tensor, got torch.uint8"):
        quantize.quantize_ptq(ours, images.to(torch.uint8), tmp_path / "a.onnx")
    assert list(tmp_path.iterdir()) == []
