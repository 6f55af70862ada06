"""Export to ONNX: BN folding keeps the logits and leaves the caller's model alone; the exported
file has no BN, runs in onnxruntime as the PyTorch model does, and carries its metadata; every
user error is one line and exit status 2."""

import contextlib
import io
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from random_weights import randomize_torch
from torch import nn

from mobilenets import __version__
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import Conv2dSame, build_model
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import save_weights
from mobilenets.deploy import onnx_export as export
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.onnx_export import read_onnx_metadata, verify_onnx
from mobilenets.engine.checkpoint import load_checkpoint
from mobilenets.zoo import pretrained

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = tuple(f"class {i}" for i in range(10))
PREPROCESSING = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def random_model(**fields) -> nn.Module:
    """A model with random weights and random BN statistics (what a trained one looks like)."""
    torch.manual_seed(0)
    return randomize_torch(build_model(ModelConfig(**fields)))


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ort_session(path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --- BN folding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        dict(arch="mobilenet_v1", alpha=0.25, resolution=32),
        dict(arch="mobilenet_v1", alpha=0.5, resolution=32, padding="same", bn_eps=1e-3),
        dict(arch="mobilenet_v2", alpha=0.35, resolution=32),
        dict(arch="mobilenet_v2", alpha=0.5, resolution=32, padding="same", bn_eps=1e-3),
        dict(
            arch="mobilenet_v2",
            alpha=1.0,
            resolution=32,
            num_classes=10,
            small_input=True,
            padding="same",
            bn_eps=1e-3,
        ),
        # V3: h-swish, the SE block (its 1x1 convs have a bias and no BN) and the pre-logits layer
        dict(arch="mobilenet_v3_small", alpha=0.75, resolution=32, num_classes=10),
        dict(
            arch="mobilenet_v3_large",
            alpha=1.0,
            resolution=32,
            num_classes=10,
            small_input=True,
            padding="same",
            bn_eps=1e-3,
        ),
    ],
    ids=[
        "v1_0.25",
        "v1_0.5_same",
        "v2_0.35",
        "v2_0.5_same",
        "v2_1.0_small_same",
        "v3_small_0.75",
        "v3_large_1.0_small_same",
    ],
)
def test_folding_batch_norm_keeps_the_logits(fields):
    # float64, so that what is measured is the folding and not float32 rounding (which alone
    # moves logits of size 3 by about 1e-5 through the seventeen blocks of V2 1.0)
    model = random_model(**fields).double().train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    folded, count = fold_batch_norm(model)
    assert all(module.training for module in model.modules())  # not switched to eval either
    x = torch.randn(2, model.config.in_chans, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, logits = model.eval()(x), folded(x)
    assert expected.abs().max() > 0.1  # logits large enough for the comparison to mean something
    assert (logits - expected).abs().max() <= 1e-10
    assert count == batch_norms(model) and batch_norms(folded) == 0
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.bias is not None for conv in convs)
    same = sum(isinstance(conv, Conv2dSame) for conv in convs)
    assert same == sum(isinstance(m, Conv2dSame) for m in model.modules())
    assert (same > 0) == (fields.get("padding") == "same")
    # the caller's model is untouched: its BN layers and every tensor are as they were
    assert batch_norms(model) == count
    state = model.state_dict()
    assert state.keys() == before.keys()
    assert all(torch.equal(state[key], value) for key, value in before.items())


def test_folding_a_v2_counts_every_conv_bn_pair():
    # stem 1, first bottleneck (t = 1) 2, sixteen more 3 each, head 1: the 52 of V2 1.0
    _, count = fold_batch_norm(build_model(ModelConfig(arch="mobilenet_v2", resolution=32)))
    assert count == 52


@pytest.mark.parametrize(
    ("arch", "count"),
    # stem 1, bnecks (the first, t == 1, has 2; the others 3), head 1; the SE convs and the
    # pre-logits layer have no BN: Large 1 + 2 + 14 * 3 + 1, Small 1 + 2 + 10 * 3 + 1
    [("mobilenet_v3_large", 46), ("mobilenet_v3_small", 34)],
)
def test_folding_a_v3_counts_every_conv_bn_pair_and_folds_the_se_gates(arch, count):
    model = build_model(ModelConfig(arch=arch, resolution=32))
    folded, folded_count = fold_batch_norm(model)
    assert folded_count == count
    # SE's convs have a bias and no BN; the gate's ReLU6(y + 3) / 6 moves into conv_expand
    # (w / 6, (b + 3) / 6) and leaves a Hardtanh(0, 1)
    state, folded_state = model.state_dict(), folded.state_dict()
    reduce_keys = [key for key in state if ".se.conv_reduce." in key]
    assert reduce_keys and all(torch.equal(folded_state[key], state[key]) for key in reduce_keys)
    expand = [key.removesuffix(".weight") for key in state if key.endswith("se.conv_expand.weight")]
    assert len(expand) == len(reduce_keys) // 2
    for key in expand:
        torch.testing.assert_close(folded_state[f"{key}.weight"], state[f"{key}.weight"] / 6)
        torch.testing.assert_close(folded_state[f"{key}.bias"], (state[f"{key}.bias"] + 3) / 6)
    gates = [block.se.gate for block in folded.blocks if block.se is not None]
    assert len(gates) == len(expand)
    assert all(
        isinstance(gate, nn.Hardtanh) and (gate.min_val, gate.max_val) == (0, 1) for gate in gates
    )


# --- A checkpoint through `mobilenets export` -----------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """What `mobilenets train` leaves, for a small-input V2 with TF padding and BN eps: random
    weights and BN statistics, the classes and preprocessing in the metadata."""
    model = random_model(
        arch="mobilenet_v2",
        alpha=0.35,
        resolution=32,
        num_classes=10,
        small_input=True,
        padding="same",
        bn_eps=1e-3,
    )
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    metadata = {"classes": list(CLASSES), "preprocessing": PREPROCESSING.to_dict()}
    save_weights(model, path, metadata)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint):
    """`mobilenets export CKPT --dynamic-batch --opset 20`: the file and what it printed."""
    out = checkpoint.parent / "model.onnx"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [
        "export",
        str(checkpoint),
        "--format",
        "onnx",
        "--dynamic-batch",
        "--opset",
        "20",
        "--out",
        str(out),
    ]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue()


def test_export_prints_the_file_and_one_check_per_batch(exported, checkpoint):
    path, printed = exported
    first, *checks = printed.splitlines()
    folded = batch_norms(load_checkpoint(checkpoint).model)
    assert re.fullmatch(
        rf"wrote {re.escape(str(path))} \(mobilenet_v2_0\.35_32_small with checkpoint "
        rf"{re.escape(str(checkpoint))}; opset 20, input Nx3x32x32, \d+\.\d MB, "
        rf"{folded} BN folded\)",
        first,
    ), first
    assert len(checks) == 2
    for line, shape in zip(checks, ("1x3x32x32", "3x3x32x32"), strict=True):
        match = re.fullmatch(
            rf"onnxruntime {re.escape(onnxruntime.__version__)} vs PyTorch: max abs diff "
            rf"(\S+) at {shape}",
            line,
        )
        assert match, line
        assert float(match.group(1)) <= 1e-4


def test_exported_graph_has_no_batch_norm_and_declares_its_io(exported):
    model = onnx.load(str(exported[0]))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert {entry.domain: entry.version for entry in model.opset_import}[""] == 20
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, dims) == ("input", ["batch", 3, 32, 32])
    assert graph_output.name == "logits"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_computes_the_checkpoints_logits(exported, checkpoint, batch):
    model = load_checkpoint(checkpoint).model
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    (logits,) = ort_session(exported[0]).run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert logits.shape == (batch, 10) and np.abs(expected).max() > 0.1
    assert np.abs(logits - expected).max() <= 1e-4


def test_metadata_round_trips(exported, checkpoint):
    metadata = read_onnx_metadata(exported[0])
    assert metadata["classes"] == list(CLASSES)
    assert Preprocessing.from_dict(metadata["preprocessing"]) == PREPROCESSING
    assert (
        ModelConfig.from_dict(metadata["model_config"]) == load_checkpoint(checkpoint).model.config
    )
    assert metadata["source"] == "checkpoint model.safetensors"
    assert metadata["mobilenets_version"] == __version__


def test_verification_fails_with_the_measured_difference(exported, checkpoint):
    model = load_checkpoint(checkpoint).model
    with torch.no_grad():
        model.classifier.bias += 0.01  # every logit 0.01 off the exported model's
    with pytest.raises(MobileNetsError, match=r"max abs difference 0\.01 at input 1x3x32x32"):
        verify_onnx(exported[0], model, [(1, 3, 32, 32)])


def test_a_failed_check_keeps_the_previous_file_and_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference passes
    model = random_model(arch="mobilenet_v1", alpha=0.25, resolution=32).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(MobileNetsError, match=r"max abs difference \S+ at input 1x3x32x32"):
        export.export_onnx(model, path, resolution=32)
    assert path.read_bytes() == b"previous export" and list(tmp_path.iterdir()) == [path]
    assert all(module.training for module in model.modules()) and batch_norms(model) == 27
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


def test_read_onnx_metadata_of_another_file_is_an_error(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("not a model")
    with pytest.raises(MobileNetsError, match="cannot read ONNX file"):
        read_onnx_metadata(path)
    with pytest.raises(MobileNetsError, match="does not exist"):
        read_onnx_metadata(tmp_path / "missing.onnx")


# --- A registered name -------------------------------------------------------------------------


def test_export_a_registered_name_with_a_fixed_shape(capsys, tmp_path):
    out = tmp_path / "v1.onnx"
    code, printed, err = run_cli(
        capsys,
        "export",
        "mobilenet_v1_0.25_128",
        "--format",
        "onnx",
        "--resolution",
        "64",
        "--out",
        out,
    )
    assert code == 0, err
    first, check = printed.splitlines()
    assert first.startswith(f"wrote {out} (mobilenet_v1_0.25_64 with random weights")
    assert "opset 18, input 1x3x64x64" in first and first.endswith(", 27 BN folded)")
    assert check.endswith(" at 1x3x64x64")
    session = ort_session(out)
    (logits,) = session.run(["logits"], {"input": np.zeros((1, 3, 64, 64), np.float32)})
    assert logits.shape == (1, 1000)
    with pytest.raises(Exception, match="dimension"):  # the batch axis is fixed to 1
        session.run(["logits"], {"input": np.zeros((2, 3, 64, 64), np.float32)})
    metadata = read_onnx_metadata(out)
    assert metadata["model_config"]["resolution"] == 64
    assert metadata["source"] == "random initialisation"
    assert metadata["preprocessing"]["resolution"] == 64 and "classes" not in metadata


def test_export_published_weights_records_them(capsys, tmp_path, monkeypatch):
    """--weights: the record, ImageNet classes and the record's preprocessing, scaled to the
    export resolution, go into the metadata (the download is replaced by a random model)."""

    def load_pretrained(config, weights, progress=True):
        record = pretrained.find_record(config, weights)
        torch.manual_seed(0)
        model = randomize_torch(build_model(record.config()))
        model.weights_record = record
        return model, record, tmp_path / "cached.h5"

    monkeypatch.setattr(pretrained, "load_pretrained", load_pretrained)
    out = tmp_path / "keras.onnx"
    argv = ["mobilenet_v1_0.25_128", "--weights", "keras", "--resolution", "64", "--out", out]
    code, printed, err = run_cli(capsys, "export", *argv, "--format", "onnx")
    assert code == 0, err
    record = pretrained.find_record(
        ModelConfig(arch="mobilenet_v1", alpha=0.25, resolution=128), "keras"
    )
    assert f"(mobilenet_v1_0.25_64 with keras weights {record.tag}; opset 18" in printed
    metadata = read_onnx_metadata(out)
    assert metadata["source"] == f"keras {record.tag}" and metadata["weights"]["url"] == record.url
    assert metadata["classes"] == list(pretrained.imagenet_categories())
    assert metadata["class_ids"] == list(pretrained.imagenet_synsets())
    assert Preprocessing.from_dict(metadata["preprocessing"]) == record.preprocessing_for(64)
    config = ModelConfig.from_dict(metadata["model_config"])
    assert (config.resolution, config.padding, config.bn_eps) == (64, "same", 1e-3)


# --- Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["mobilenet_v2_0.35_96", "--opset", "5"],
            "opset must be an integer from 18 to 23 (the torch.onnx exporter's range), got 5",
        ),
        (["mobilenet_v2_0.35_96", "--opset", "17"], "opset must be an integer from 18 to 23"),
        (
            ["mobilenet_v2_0.35_96", "--resolution", "8"],
            "cannot export mobilenet_v2_0.35_96 at 8 px: resolution must "
            "be an integer >= 32, got 8",
        ),
        (
            ["mobilenet_v2_0.35_96", "--out", "x.txt"],
            "the output must be a .onnx file, got 'x.txt'",
        ),
        (["missing/best.safetensors"], "weights file 'missing/best.safetensors' does not exist"),
        (["corrupt.safetensors"], "cannot read weights file"),
        (
            ["model.safetensors", "--weights", "keras"],
            "--weights 'keras' applies to a registered model name, not to the checkpoint",
        ),
        (["mobilenet_v3_1.0_224"], "unknown model 'mobilenet_v3_1.0_224'"),
    ],
    ids=[
        "opset-5",
        "opset-17",
        "resolution-8",
        "out-txt",
        "missing",
        "corrupt",
        "ckpt-weights",
        "unknown-name",
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, checkpoint, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "model.safetensors").write_bytes(checkpoint.read_bytes())
    out = [] if "--out" in argv else ["--out", "out.onnx"]
    code, printed, err = run_cli(capsys, "export", *argv, "--format", "onnx", *out)
    assert code == 2 and printed == ""
    assert err.count("\n") == 1 and err.startswith("mobilenets export: error: "), err
    assert message in err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*.tmp"))


def test_an_unknown_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "mobilenet_v2_0.35_96", "--format", "tflite", "--out", "x.onnx"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
