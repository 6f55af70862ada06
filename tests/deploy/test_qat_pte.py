"""Quantization-aware training for the int8 ExecuTorch program (PT2E's QAT flow with the XNNPACK
quantizer): `mobilenets quantize CKPT --method qat --format pte` fine-tunes a copy of the
checkpoint, writes a fully delegated program that agrees with its quantized PyTorch reference,
records the settings and leaves the checkpoint as it was; the fine-tuning moves the weights;
user errors are one line and exit status 2.

Lowering and fine-tuning take most of a minute, so the module does both once, through the CLI,
for one small-input V2 0.35 at 32 px with random weights and BN statistics (see
test_executorch_int8 for why random statistics), on 256 synthetic images.
"""

import contextlib
import io
import re

import pytest
import torch
from random_weights import randomize_torch

from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import save_weights
from mobilenets.data.classification import load_splits
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import pt2e
from mobilenets.deploy.qat import QatConfig
from mobilenets.engine.checkpoint import load_checkpoint
from mobilenets.engine.device import cpu_info
from mobilenets.tasks.classification.quantize import PteClassifier

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        mobile.executorch_version() is None,
        reason="executorch is not installed (pip install 'mobilenets[mobile]')",
    ),
]

DATA = "synthetic:256"  # 256 training and 64 validation images of 32 px, 10 classes
CALIBRATION = 64
BATCH = 32
EPOCHS = 0.5  # 4 steps of 32
LR = 1e-3  # the default; 1e-2 drives this random net's logits to a constant in 4 steps


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_torch(
        build_model(
            ModelConfig(
                arch="mobilenet_v2", alpha=0.35, resolution=32, num_classes=10, small_input=True
            )
        )
    )


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    splits = load_splits(DATA, 32)
    path = tmp_path_factory.mktemp("qat-pte") / "model.safetensors"
    metadata = {"classes": list(splits.classes), "preprocessing": splits.preprocessing.to_dict()}
    save_weights(model, path, metadata)
    return path


@pytest.fixture(scope="module")
def quantized(checkpoint):
    """`mobilenets quantize CKPT --method qat --format pte`, with the prepared graph's parameters
    recorded before and after the fine-tuning: the file, what was printed, (before, after)."""
    out = checkpoint.parent / "qat.pte"
    trained = []
    original = pt2e.train_steps

    def train_steps(net, *args, **kwargs):
        before = {
            name: t.detach().clone() for name, t in [*net.named_parameters(), *net.named_buffers()]
        }
        loss = original(net, *args, **kwargs)
        after = {name: t.detach() for name, t in [*net.named_parameters(), *net.named_buffers()]}
        trained.append((before, after))
        return loss

    argv = [
        "quantize",
        checkpoint,
        "--data",
        DATA,
        "--method",
        "qat",
        "--format",
        "pte",
        "--out",
        out,
        "--calibration-images",
        CALIBRATION,
        "--batch-size",
        BATCH,
        "--qat-epochs",
        EPOCHS,
        "--qat-lr",
        LR,
    ]
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pt2e, "train_steps", train_steps)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main([str(arg) for arg in argv])
    assert code == 0, stderr.getvalue()
    (record,) = trained
    return out, stdout.getvalue(), record


@pytest.mark.slow
def test_cli_fine_tunes_then_prints_the_program_and_both_accuracies(quantized, checkpoint):
    out, printed, _ = quantized
    steps, wrote, layers, agreement, accuracy, cpu = printed.splitlines()
    assert cpu == f"int8 measured on {cpu_info().describe()}"
    assert re.fullmatch(
        rf"QAT: 4 steps \({EPOCHS:g} epochs\) of {BATCH}, final loss \d+\.\d+", steps
    ), steps
    assert wrote.startswith(f"wrote {out} (mobilenet_v2_0.35_32")
    assert wrote.endswith("ops outside it: none)")
    assert layers.startswith("int8: 53 of 53 layers with int8 weights, ")
    assert layers.endswith(f"calibrated on {CALIBRATION} training images of {DATA}")
    match = re.fullmatch(
        r"ExecuTorch \S+ int8 vs its PyTorch reference: max abs diff \S+ \((\d+\.\d) quantization "
        r"steps of the logits, allowed 32\); vs the fp32 model: \S+",
        agreement,
    )
    assert match, agreement
    print(f"\nQAT .pte vs its PT2E reference: {match.group(1)} steps; {accuracy}")
    assert float(match.group(1)) <= pt2e.INT8_TOLERANCE_STEPS
    assert re.fullmatch(
        r"fp32 top-1 \d+\.\d\d%, int8 top-1 \d+\.\d\d% \([-+]\d+\.\d\d points\) on 64 "
        r"validation images",
        accuracy,
    ), accuracy


@pytest.mark.slow
def test_the_program_runs_and_records_the_fine_tuning(quantized):
    out, _, _ = quantized
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = PteClassifier(out)(images)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    # a live network: its logits differ between classes and between images (a collapsed one
    # would agree with its reference trivially)
    assert logits.std(1).min() > 0.1 and logits.std(0).mean() > 0.1, logits
    settings = mobile.read_pte_metadata(out)["quantization"]
    assert settings == {
        "method": "qat",
        "flow": "pt2e",
        "quantizer": "XNNPACKQuantizer",
        "weights": "s8 symmetric per-channel",
        "activations": "s8 per-tensor",
        "calibration_images": CALIBRATION,
        "qat": {"epochs": EPOCHS, "lr": LR, "momentum": 0.9, "batch_size": BATCH, "seed": 0},
    }


@pytest.mark.slow
def test_fine_tuning_moves_the_weights_of_a_copy(quantized, checkpoint, model):
    _, _, (before, after) = quantized
    weights = [name for name in before if name.endswith("weight") and before[name].ndim == 4]
    assert len(weights) == 52  # every convolution trains, BN still beside it
    moved = [name for name in weights if not torch.equal(before[name], after[name])]
    assert moved == weights
    largest = max(float((after[n] - before[n]).abs().max()) for n in weights)
    assert largest > 1e-4
    # BN trains its scale and shift on the checkpoint's statistics, which stay as they were
    statistics = [name for name in before if "running_" in name]
    assert len(statistics) == 2 * 52
    assert all(torch.equal(before[name], after[name]) for name in statistics)
    shifts = [name for name in before if re.search(r"\.bn\d?\.bias$", name)]
    assert len(shifts) == 52 and not all(torch.equal(before[n], after[n]) for n in shifts)
    # the checkpoint on disk and the model it was saved from are as they were
    saved = load_checkpoint(checkpoint).model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


# --- Errors --------------------------------------------------------------------------------------


def test_library_errors_name_the_argument(model, tmp_path):
    path, config = tmp_path / "int8.pte", QatConfig(epochs=0.5, batch_size=BATCH)
    splits = load_splits(DATA, 32)
    calibration = [torch.zeros(2, 3, 32, 32)]
    cases = [
        ({"int8": True, "calibration": calibration, "qat": config}, r"qat= needs train_dataset="),
        (
            {"int8": True, "calibration": calibration, "train_dataset": splits.train},
            r"train_dataset= applies to qat= only",
        ),
        ({"qat": config, "train_dataset": splits.train}, r"qat= applies to int8=True only"),
        (
            {
                "int8": True,
                "calibration": calibration,
                "qat": {"epochs": 1},
                "train_dataset": splits.train,
            },
            r"qat= takes a QatConfig, got dict",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(MobileNetsError, match=message):
            mobile.export_executorch(model, path, resolution=32, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "pte", "--out", "m.onnx"], "the output must be a .pte file, got"),
        (["--format", "onnx", "--out", "m.pte"], "the output must be a .onnx file, got"),
        (
            ["--format", "pte", "--out", "m.pte", "--calibrate", "entropy"],
            "--calibrate entropy applies to --format onnx only",
        ),
        (
            ["--format", "pte", "--out", "m.pte", "--activations", "s8"],
            "--activations s8 applies to --format onnx only; a .pte program's activations are s8",
        ),
        (
            ["--format", "pte", "--out", "m.pte", "--qat-epochs", "0"],
            "QAT epochs must be in (0, 100], got 0.0",
        ),
        (
            ["--format", "pte", "--out", "m.pte", "--batch-size", "512"],
            "the training split has 256 images, fewer than one batch of 512",
        ),
    ],
    ids=["pte_suffix", "onnx_suffix", "calibrate", "activations", "epochs", "batch"],
)
def test_cli_errors_are_one_line(checkpoint, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        capsys,
        "quantize",
        checkpoint,
        "--data",
        DATA,
        "--method",
        "qat",
        "--calibration-images",
        16,
        *extra,
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []
