"""int8 post-training quantization: the file runs in onnxruntime within a few points of the fp32
model, every conv is quantized (QDQ, s8 per-channel weights, u8 activations), the metadata
travels, calibration reads the training split only; user errors are one line and exit 2."""

import argparse
import contextlib
import dataclasses
import io
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from ridge import fit_ridge_classifier, save_checkpoint
from torch.nn import functional as F
from torch.nn.utils import parametrize

from mobilenets import cli
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.core.spec import ModelConfig
from mobilenets.data.classification import load_splits
from mobilenets.data.transforms import eval_transform, train_transform
from mobilenets.deploy import qat, quantize
from mobilenets.deploy.onnx_export import onnx_session, read_onnx_metadata
from mobilenets.engine.checkpoint import load_checkpoint
from mobilenets.engine.device import cpu_info
from mobilenets.engine.loop import ordered_loader
from mobilenets.tasks.classification import quantize as classification_quantize
from mobilenets.tasks.classification.quantize import evaluate_onnx

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "synthetic:256"  # 256 training and 64 validation images of 32 px, 10 classes
CALIBRATION = 128
MAX_DROP = 0.10  # top-1, as a fraction: 6 of the 64 validation images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small-input V2 0.35 whose classifier is a ridge regression on the random features of
    the synthetic training images: about 100% on the validation images in half a second, which
    training takes minutes to reach (no accuracy, no drop to measure)."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            arch="mobilenet_v2", alpha=0.35, resolution=32, num_classes=10, small_input=True
        )
    ).eval()
    splits = load_splits(DATA, 32)
    fit_ridge_classifier(model, splits)
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

    original = classification_quantize.calibration_batches
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(classification_quantize, "calibration_batches", calibration_batches)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            argv = [
                "quantize",
                checkpoint,
                "--data",
                DATA,
                "--method",
                "ptq",
                "--out",
                out,
                "--calibration-images",
                CALIBRATION,
                "--batch-size",
                32,
            ]
            code = main([str(arg) for arg in argv])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), read


def test_cli_prints_both_accuracies_and_sizes(quantized):
    out, printed, _ = quantized
    first, arithmetic, reference, second = printed.splitlines()
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
    # the CPU that ran the file, and the bound that makes its arithmetic any CPU's
    assert arithmetic.startswith(f"int8 measured on {cpu_info().describe()}; 7-bit weights, ")
    bound = quantize.int16_pair_bound(onnx.load(str(out)))
    assert f"largest pair of int8 products {bound.value:,} (int16 holds 32,767)" in arithmetic
    match = re.fullmatch(
        r"int8 top-1 with the file's QDQ arithmetic in float: (\d+\.\d\d)% \(([-+]\d+\.\d\d) "
        r"points on this CPU's kernels\)",
        reference,
    )
    assert match, reference
    emulated, change = map(float, match.groups())
    assert change == pytest.approx(int8 - emulated, abs=0.011)
    # 64 images: the kernels and the emulation differ only where rounding breaks a near tie
    assert abs(change) <= 100 * 2 / 64


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


def test_no_pair_of_int8_products_can_saturate_int16(quantized):
    """What x86 CPUs without VNNI compute: pmaddubsw adds two u8 x s8 products in int16 and
    saturates. The file's weights are 7-bit, so the worst pair over every channel of every
    quantized tensor fits, on whatever CPU these tests run."""
    model = onnx.load(str(quantized[0]))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [
        initializers[node.input[0]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and initializers.get(node.input[0]) is not None
        and initializers[node.input[0]].dtype == np.int8
    ]
    assert len(weights) == 53  # 52 convs and the classifier
    assert max(int(np.abs(w).max()) for w in weights) == 64  # the 7-bit range, each tensor's end
    bound = quantize.int16_pair_bound(model)
    worst = max(255 * pair_by_hand(w) for w in weights)
    assert bound.value == worst and worst <= quantize.INT16_MAX and bound.fits_int16
    assert bound.tensor in initializers


def pair_by_hand(weight: np.ndarray) -> int:
    """The largest sum of two same-sign weights of one output channel (axis 0), by sorting."""
    worst = 0
    for row in weight.reshape(len(weight), -1).astype(int).tolist():
        positive = sorted((w for w in row if w > 0), reverse=True)[:2]
        negative = sorted((-w for w in row if w < 0), reverse=True)[:2]
        worst = max(worst, sum(positive), sum(negative))
    return worst


def test_eight_bit_weights_are_caught_and_no_file_is_written(checkpoint, tmp_path, monkeypatch):
    """The check fails where it should, on any CPU: a quantizer that ignores the 7-bit range
    writes weights whose pairs reach 255 x 254, and quantize_file refuses them."""
    import onnxruntime.quantization as ort_quantization

    real = ort_quantization.quantize_static

    def eight_bit(*args, **kwargs):
        return real(*args, **{**kwargs, "reduce_range": False})

    monkeypatch.setattr(ort_quantization, "quantize_static", eight_bit)
    ours = load_checkpoint(checkpoint)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "eight-bit.onnx"
    message = r"allow a pair of products of [\d,]+, over int16's 32,767: CPUs without VNNI would"
    with pytest.raises(MobileNetsError, match=message):
        quantize.quantize_ptq(ours, images, out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_the_int8_kernels_compute_what_the_file_says(quantized, checkpoint):
    """This CPU's int8 kernels against the same file with its QDQ pairs evaluated in float: both
    requantize every layer to the same grids, and differ only where a layer's sum lands within
    float rounding of a half step and is rounded the other way, a one-step difference that
    later layers carry. On average the logits stay within a step of each other; a saturated pair
    sum (8-bit weights on a CPU without VNNI) moves them by about ten steps on average."""
    ours = load_checkpoint(checkpoint)
    _, val, _ = validation_images(ours)
    model = onnx.load(str(quantized[0]))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    output = model.graph.output[0].name
    (last,) = [node for node in model.graph.node if output in node.output]
    assert last.op_type == "DequantizeLinear"  # the logits leave the file on a uint8 grid
    step = float(initializers[last.input[1]])
    inputs = {"input": val.numpy()}
    (kernels,) = onnx_session(quantized[0]).run(None, inputs)
    (emulated,) = onnx_session(quantized[0], optimize=False).run(None, inputs)
    steps = np.abs(kernels - emulated) / step
    print(
        f"\nint8 kernels vs the QDQ emulation, in steps of the logits: mean {steps.mean():.2f}, "
        f"largest {steps.max():.0f}"
    )
    assert steps.mean() <= 1
    assert (kernels.argmax(1) == emulated.argmax(1)).mean() >= 62 / 64


def test_metadata_is_copied_and_the_settings_added(quantized, checkpoint):
    metadata = read_onnx_metadata(quantized[0])
    ours = load_checkpoint(checkpoint)
    assert metadata["classes"] == list(ours.classes)
    assert metadata["preprocessing"] == ours.preprocessing.to_dict() | {
        "mean": list(ours.preprocessing.mean),
        "std": list(ours.preprocessing.std),
    }
    assert ModelConfig.from_dict(metadata["model_config"]) == ours.model.config
    assert metadata["source"] == "checkpoint model.safetensors" and metadata["mobilenets_version"]
    assert metadata["quantization"] | {"onnxruntime_version": None} == {
        "method": "ptq",
        "calibrate": "minmax",
        "calibration_images": CALIBRATION,
        "activations": "u8",
        "weights": "s8 per-channel, 7-bit range [-64, 64]",
        "format": "QDQ",
        "onnxruntime_version": None,
    }


def test_percentile_from_a_tensor_keeps_the_accuracy(checkpoint, tmp_path):
    ours = load_checkpoint(checkpoint)
    splits = load_splits(DATA, 32)
    transform = eval_transform(ours.preprocessing)
    images = torch.stack([transform(image) for image in splits.train.images[:64]])
    out = tmp_path / "percentile.onnx"
    report = quantize.quantize_ptq(ours, images, out, method="percentile", batch_size=16)
    assert (report.path, report.method, report.activation_type) == (out, "percentile", "u8")
    assert report.calibration_images == 64 and report.quantized_convs == 52
    assert report.float_convs == () and report.int8_bytes < report.fp32_bytes / 2
    assert read_onnx_metadata(out)["quantization"]["calibrate"] == "percentile"
    splits.val.transform = transform
    loader = ordered_loader(splits.val, 32)
    int8_top1, int8_top5, count = evaluate_onnx(out, loader)
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
        quantize.DEFAULT_CALIBRATION_IMAGES,
        quantize.DEFAULT_BATCH_SIZE,
    )
    assert (args.calibrate, args.activations) == ("minmax", "u8")


# --- Quantization-aware training ----------------------------------------------------------------


def validation_images(ours):
    splits = load_splits(DATA, 32)
    transform = eval_transform(ours.preprocessing)
    train = torch.stack([transform(image) for image in splits.train.images[:CALIBRATION]])
    val = torch.stack([transform(image) for image in splits.val.images])
    return train, val, splits.val.labels


def test_the_simulation_predicts_what_onnxruntime_computes(checkpoint, tmp_path):
    """With the ranges set from the same images, the simulated int8 network and the int8 file
    agree far better than the fp32 network and the int8 file do: the simulation quantizes the
    same tensors on the same grids. The file's weights are exactly the simulation's."""
    ours = load_checkpoint(checkpoint)
    train, val, _ = validation_images(ours)
    simulation = qat.QuantSimulation(ours.model)
    assert simulation.calibrate([train]) == CALIBRATION
    simulation.observe(False)
    with torch.no_grad():
        simulated = simulation.model.eval()(val).numpy()
        fp32 = ours.model(val).numpy()
    # input, 35 ReLU6, 17 projections, 11 residual sums (10, and one more in the small-input
    # variant's stride-1 row), pooled features, logits
    assert len(simulation.quantizers) == 66
    model = simulation.finish()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    out = tmp_path / "simulated.onnx"
    report = quantize.quantize_ptq(
        dataclasses.replace(ours, model=model), train, out, batch_size=CALIBRATION
    )
    assert report.quantized_convs == 52
    options = onnxruntime.SessionOptions()  # the QDQ graph as written: float ops between Q/DQ
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    (int8,) = session.run(None, {"input": val.numpy()})
    off_simulated, off_fp32 = np.abs(simulated - int8).max(), np.abs(fp32 - int8).max()
    print(
        f"\nmax abs logit difference to the int8 file: simulation {off_simulated:.4f}, "
        f"fp32 {off_fp32:.4f}"
    )
    assert off_simulated < off_fp32 / 3
    # quantization steps of the file's activations equal the simulation's ranges
    onnx_model = onnx.load(str(out))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    steps = sorted(
        float(initializers[node.input[1]])
        for node in onnx_model.graph.node
        if node.op_type == "QuantizeLinear"
    )
    ours_steps = sorted(q.scale_and_zero_point()[0] for q in simulation.quantizers.values())
    assert np.allclose(steps, ours_steps, rtol=1e-5, atol=0)
    for node in onnx_model.graph.node:
        quantized = initializers.get(node.input[0])
        if (
            node.op_type == "DequantizeLinear"
            and quantized is not None
            and quantized.dtype == np.int8
        ):
            weight = initializers[node.input[0]].astype(np.float32)
            scale = initializers[node.input[1]].reshape(-1, *[1] * (weight.ndim - 1))
            assert np.abs(weight).max() <= 64  # 7 bits, as the simulation rounds them
            assert any(
                p.shape == weight.shape
                and np.allclose(p.detach().numpy(), weight * scale, rtol=0, atol=1e-7)
                for p in model.parameters()
            )


def test_weights_round_to_the_symmetric_per_channel_grid_and_gradients_pass():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    rounded = qat.WeightFakeQuantize()(weight)
    scale = weight.detach().abs().amax((1, 2, 3), keepdim=True) / 64  # the file's 7-bit grid
    steps = rounded.detach() / scale
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 64.0001
    assert (steps.abs().amax((1, 2, 3)) > 63.999).all()  # each channel's largest weight is 64
    assert (rounded - weight).abs().max() <= scale.max() / 2 + 1e-7
    rounded.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))  # straight through


def test_activation_ranges_move_then_freeze_and_always_hold_zero():
    quantizer = qat.FakeQuantize()
    quantizer(torch.tensor([1.0, 3.0]))
    assert (quantizer.low.item(), quantizer.high.item()) == (0.0, 3.0)  # zero kept in range
    quantizer(torch.tensor([-2.0, 1.0]))
    assert quantizer.low.item() == pytest.approx(-0.02, rel=1e-6)
    assert quantizer.high.item() == pytest.approx(2.98, rel=1e-6)
    quantizer.observing = False
    out = quantizer(torch.tensor([-100.0, 0.0, 100.0, 1.0]))
    assert quantizer.low.item() == pytest.approx(-0.02, rel=1e-6)
    scale, zero_point = quantizer.scale_and_zero_point()
    assert scale == pytest.approx(3.0 / 255) and zero_point == 2
    assert out[1] == 0 and out[2] == pytest.approx(scale * (255 - 2), rel=1e-6)


def test_fine_tuning_lowers_the_loss_of_the_simulated_int8_network(checkpoint):
    ours = load_checkpoint(checkpoint)
    splits = load_splits(DATA, 32)
    transform = eval_transform(ours.preprocessing)
    images = torch.stack([transform(image) for image in splits.train.images])

    def simulated_loss(model) -> float:
        simulation = qat.QuantSimulation(model)
        simulation.calibrate([images[:CALIBRATION]])
        simulation.observe(False)
        with torch.no_grad():
            logits = simulation.model.eval()(images)
        return F.cross_entropy(logits, splits.train.labels).item()

    train = splits.train
    train.transform = train_transform(ours.preprocessing, "basic", 0.0, small=True)
    config = qat.QatConfig(epochs=1, lr=1e-3, batch_size=32)
    tuned = qat.fine_tune(ours.model, train, config, [images[:CALIBRATION]])
    before, after = simulated_loss(ours.model), simulated_loss(tuned)
    print(f"\nsimulated int8 training loss: {before:.4f} before, {after:.4f} after 8 QAT steps")
    assert after < before - 0.1
    assert not any(parametrize.is_parametrized(m) for m in tuned.modules())


def test_qat_from_the_cli_fine_tunes_a_copy_and_writes_the_same_int8_form(
    capsys, checkpoint, tmp_path
):
    """The plumbing, at a learning rate too small to move this least-squares classifier (its
    logits are not a softmax fit, so real fine-tuning first trades accuracy for calibration)."""
    before = {k: v.clone() for k, v in load_checkpoint(checkpoint).model.state_dict().items()}
    out = tmp_path / "qat.onnx"
    code, printed, err = run_cli(
        capsys,
        "quantize",
        checkpoint,
        "--data",
        DATA,
        "--method",
        "qat",
        "--out",
        out,
        "--calibration-images",
        CALIBRATION,
        "--batch-size",
        32,
        "--qat-epochs",
        0.5,
        "--qat-lr",
        1e-5,
    )
    assert code == 0, err
    lines = printed.splitlines()
    assert lines[0] == "QAT: 4 steps (0.5 epochs) of 32, final loss " + lines[0].split()[-1]
    match = re.fullmatch(r"fp32 top-1 (\d+\.\d\d)%, int8 top-1 (\d+\.\d\d)% .*", lines[1])
    assert match, lines[1]
    fp32, int8 = map(float, match.groups())
    print(f"\nQAT: fp32 top-1 {fp32}%, int8 {int8}%")
    assert fp32 - int8 <= 100 * MAX_DROP
    assert lines[2].startswith("int8 measured on ") and lines[3].startswith("int8 top-1 with ")
    assert lines[4] == f"wrote {out}"
    settings = read_onnx_metadata(out)["quantization"]
    assert settings["method"] == "qat" and settings["calibrate"] == "minmax"
    assert settings["qat"] == {
        "epochs": 0.5,
        "lr": 1e-5,
        "momentum": 0.9,
        "batch_size": 32,
        "seed": 0,
    }
    assert quantize.conv_weight_sources(onnx.load(str(out)))[1] == ()
    after = load_checkpoint(checkpoint).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--qat-epochs", "0"], "QAT epochs must be in (0, 100], got 0.0"),
        (["--qat-lr", "-1"], "QAT learning rate must be in (0, 10), got -1.0"),
        (["--calibrate", "entropy"], "simulates minmax ranges; got calibration 'entropy'"),
    ],
    ids=["epochs", "lr", "calibrate"],
)
def test_qat_user_errors_are_one_line(capsys, checkpoint, tmp_path, extra, message):
    argv = [
        "quantize",
        checkpoint,
        "--data",
        DATA,
        "--method",
        "qat",
        "--out",
        tmp_path / "int8.onnx",
        *extra,
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


# --- Errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "int8.ort"], "the output must be a .onnx file, got 'int8.ort'"),
        (
            ["--calibration-images", "0"],
            "calibration images must be from 1 to 256 (the training split's size), got 0",
        ),
        (["--calibration-images", "257"], "from 1 to 256 (the training split's size), got 257"),
    ],
    ids=["suffix", "zero", "more_than_the_split"],
)
def test_user_errors_are_one_line(capsys, checkpoint, tmp_path, extra, message):
    argv = [
        "quantize",
        checkpoint,
        "--data",
        DATA,
        "--method",
        "ptq",
        "--out",
        tmp_path / "int8.onnx",
        *extra,
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "option, value", [("--method", "dynamic"), ("--calibrate", "kl"), ("--activations", "u16")]
)
def test_unknown_choices_are_refused(capsys, checkpoint, tmp_path, option, value):
    argv = [
        "quantize",
        checkpoint,
        "--data",
        DATA,
        "--method",
        "ptq",
        "--out",
        tmp_path / "int8.onnx",
        option,
        value,
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, *argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and f"'{value}'" in err


def test_a_checkpoint_for_other_classes_is_refused(capsys, checkpoint, tmp_path):
    other = load_checkpoint(checkpoint)
    classes = [f"kind {i}" for i in range(10)]
    path = save_checkpoint(
        other.model, tmp_path / "other.safetensors", classes, other.preprocessing
    )
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
    with pytest.raises(MobileNetsError, match="no calibration images were given"):
        quantize.quantize_ptq(ours, [], tmp_path / "a.onnx")
    assert list(tmp_path.iterdir()) == []
