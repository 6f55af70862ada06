"""ExecuTorch export (.pte, XNNPACK delegate): the program runs in ExecuTorch's own runtime as the
PyTorch model does, keeps its metadata, is measured by `mobilenets bench`; every user error is
one line and exit status 2, a missing executorch package included.

Lowering to XNNPACK takes seconds per model, so the module lowers twice: one checkpoint through
`mobilenets export` (shared by most tests) and one failing export. V1 0.25 is the smallest graph.
"""

import contextlib
import io
import json
import re
import sys

import pytest
import torch
from random_weights import randomize_torch

from mobilenets import __version__
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import save_weights
from mobilenets.deploy import bench
from mobilenets.deploy import executorch_export as mobile
from mobilenets.engine.checkpoint import load_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # lowering takes seconds
needs_executorch = pytest.mark.skipif(
    mobile.executorch_version() is None,
    reason="executorch is not installed (pip install 'mobilenets[mobile]')",
)

CLASSES = tuple(f"class {i}" for i in range(10))
PREPROCESSING = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
EXECUTORCH_MODULES = (
    "executorch",
    "executorch.exir",
    "executorch.runtime",
    "executorch.backends.xnnpack.partition.xnnpack_partitioner",
    "executorch.exir.delegate",
    "executorch.extension.pybindings",
)


def random_model(**fields):
    """Random weights and BN statistics, as a trained model has: logits of size about 1."""
    torch.manual_seed(0)
    return randomize_torch(build_model(ModelConfig(**fields)))


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = random_model(arch="mobilenet_v1", alpha=0.25, resolution=32, num_classes=10)
    path = tmp_path_factory.mktemp("mobile") / "model.safetensors"
    metadata = {"classes": list(CLASSES), "preprocessing": PREPROCESSING.to_dict()}
    save_weights(model, path, metadata)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint):
    """`mobilenets export CKPT --format pte`: the file and what it printed."""
    if mobile.executorch_version() is None:
        pytest.skip("executorch is not installed (pip install 'mobilenets[mobile]')")
    out = checkpoint.parent / "model.pte"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["export", str(checkpoint), "--format", "pte", "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue()


# --- The exported program ----------------------------------------------------------------------


def test_export_prints_the_file_the_delegate_and_the_check(exported, checkpoint):
    path, printed = exported
    first, check = printed.splitlines()
    version = re.escape(mobile.executorch_version())
    assert re.fullmatch(
        rf"wrote {re.escape(str(path))} \(mobilenet_v1_0\.25_32 with checkpoint "
        rf"{re.escape(str(checkpoint))}; ExecuTorch {version}, input 1x3x32x32, \d+\.\d MB, "
        rf"27 BN folded, 1 XNNPACK partition, ops outside it: none\)",
        first,
    ), first
    match = re.fullmatch(
        rf"ExecuTorch {version} vs PyTorch: max abs diff (\S+) at 1x3x32x32", check
    )
    assert match, check
    assert float(match.group(1)) <= mobile.TOLERANCE
    assert not list(path.parent.glob(".*.tmp"))


def test_executorch_runtime_computes_the_checkpoints_logits(exported, checkpoint):
    """Run with executorch.runtime directly, not through our wrapper."""
    from executorch.runtime import Runtime

    model = load_checkpoint(checkpoint).model
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    program = Runtime.get().load_program(exported[0])
    (logits,) = program.load_method("forward").execute([x])
    with torch.no_grad():
        expected = model(x)
    assert logits.shape == (1, 10) and expected.abs().max() > 0.1
    assert (logits - expected).abs().max() <= 1e-4


def test_metadata_round_trips(exported, checkpoint):
    metadata = mobile.read_pte_metadata(exported[0])
    assert metadata["classes"] == list(CLASSES)
    assert Preprocessing.from_dict(metadata["preprocessing"]) == PREPROCESSING
    config = load_checkpoint(checkpoint).model.config
    assert ModelConfig.from_dict(metadata["model_config"]) == config
    assert metadata["source"] == "checkpoint model.safetensors"
    assert metadata["mobilenets_version"] == __version__


def test_verification_fails_with_the_measured_difference(exported, checkpoint):
    model = load_checkpoint(checkpoint).model
    with torch.no_grad():
        model.classifier.bias += 0.01  # every logit 0.01 off the exported model's
    with pytest.raises(MobileNetsError, match=r"max abs difference 0\.01 at input 1x3x32x32"):
        mobile.verify_pte(exported[0], model, (1, 3, 32, 32))


def test_the_batch_is_fixed_at_export(exported):
    program = mobile.load_pte(exported[0])
    assert mobile.pte_input_shape(program) == (1, 3, 32, 32)
    method = mobile.load_method(program)
    with pytest.raises(
        MobileNetsError, match="could not run the program on an input 2x3x32x32"
    ) as error:
        mobile.run_pte(method, torch.zeros(2, 3, 32, 32))
    assert "Expected shape (1, 3, 32, 32), but received (2, 3, 32, 32)" in str(error.value)
    assert mobile.run_pte(method, torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@needs_executorch
def test_a_failed_check_keeps_the_previous_file_and_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(mobile, "TOLERANCE", -1.0)  # no difference passes
    model = random_model(arch="mobilenet_v1", alpha=0.25, resolution=32).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    path = tmp_path / "model.pte"
    path.write_bytes(b"previous export")
    with pytest.raises(MobileNetsError, match=r"max abs difference \S+ at input 2x3x32x32"):
        mobile.export_executorch(model, path, resolution=32, batch=2)
    assert path.read_bytes() == b"previous export" and list(tmp_path.iterdir()) == [path]
    assert all(module.training for module in model.modules())
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


# --- Benchmarking the file ---------------------------------------------------------------------


def test_bench_measures_the_pte_file_beside_eager(exported, capsys, tmp_path):
    path = exported[0]
    json_path = tmp_path / "bench.json"
    code, out, err = run_cli(
        capsys,
        "bench",
        path,
        "--batch",
        "1",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--iterations",
        "2",
        "--json",
        json_path,
    )
    assert code == 0, err
    assert f"executorch {mobile.executorch_version()}" in out.splitlines()[0]
    records = json.loads(json_path.read_text())
    assert [(r["runtime"], r["precision"], r["batch"]) for r in records] == [
        (bench.EAGER, "fp32", 1),
        (bench.PTE, "fp32", 1),
    ]
    eager, pte = records
    assert pte["model"] == "model.pte" and pte["source"] == f"file {path}"
    assert pte["size_mb"] == pytest.approx(path.stat().st_size / 1e6)
    assert 0 < pte["median_ms"] <= pte["p90_ms"]
    assert pte["latency_vs_eager"] == pytest.approx(pte["median_ms"] / eager["median_ms"])


def test_bench_refuses_other_batches_of_a_pte_file(exported):
    with pytest.raises(MobileNetsError, match="fixed batch of 1; measure it at batch 1 only, or "):
        bench.run_benchmarks([exported[0]], batches=(1, 2), iterations=1, threads=1)


@needs_executorch
def test_a_corrupt_pte_file_is_named(capsys, tmp_path):
    corrupt = tmp_path / "corrupt.pte"
    corrupt.write_bytes(b"not a program")
    with pytest.raises(
        MobileNetsError, match=f"ExecuTorch cannot load {re.escape(repr(str(corrupt)))}"
    ):
        mobile.read_pte_metadata(corrupt)
    with pytest.raises(MobileNetsError, match="does not exist"):
        mobile.load_pte(tmp_path / "missing.pte")
    code, out, err = run_cli(capsys, "bench", corrupt, "--iterations", "1")
    assert code == 2 and err.count("\n") == 1, err
    assert "ExecuTorch cannot load" in err and "> file_size_ 13" in err  # the runtime's reason


# --- Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["mobilenet_v1_0.25_128", "--out", "x.onnx"],
            "the output must be a .pte file, got 'x.onnx'",
        ),
        (
            ["mobilenet_v1_0.25_128", "--resolution", "8"],
            "cannot export mobilenet_v1_0.25_128 at 8 px: resolution "
            "must be an integer >= 32, got 8",
        ),
        (
            ["mobilenet_v1_0.25_128", "--opset", "18"],
            "--opset applies to --format onnx only, not to --format pte",
        ),
        (["mobilenet_v1_0.25_128", "--dynamic-batch"], "--dynamic-batch applies to --format onnx"),
        (["missing/best.safetensors"], "weights file 'missing/best.safetensors' does not exist"),
        (["mobilenet_v3_1.0_224"], "unknown model 'mobilenet_v3_1.0_224'"),
    ],
    ids=["out-onnx", "resolution-8", "opset", "dynamic-batch", "missing", "unknown-name"],
)
@needs_executorch
def test_export_errors_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    out = [] if "--out" in argv else ["--out", "out.pte"]
    code, printed, err = run_cli(capsys, "export", *argv, "--format", "pte", *out)
    assert code == 2 and printed == ""
    assert err.count("\n") == 1 and err.startswith("mobilenets export: error: "), err
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "mobilenet_v1_0.25_128", "--format", "tflite", "--out", "x.tflite"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tflite'" in err and "pte" in err


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(batch=0), "batch must be an integer >= 1 (a .pte program has a fixed batch), got 0"),
        (dict(metadata={"forward": "x"}), "metadata keys ['forward'] are written by"),
        (dict(metadata={"my key": "x"}), "keys must be Python identifiers, got ['my key']"),
        (dict(metadata={"count": 3}), "metadata must map strings to strings"),
    ],
    ids=["batch-0", "reserved-key", "key-not-identifier", "value-not-string"],
)
def test_bad_options_are_refused_before_lowering(tmp_path, options, message):
    model = build_model(ModelConfig(arch="mobilenet_v1", alpha=0.25, resolution=32))
    with pytest.raises(MobileNetsError, match=re.escape(message)):
        mobile.export_executorch(model, tmp_path / "m.pte", resolution=32, **options)
    assert list(tmp_path.iterdir()) == []


def test_export_takes_our_models_only(tmp_path):
    with pytest.raises(MobileNetsError, match="export_executorch takes a MobileNet, got Linear"):
        mobile.export_executorch(torch.nn.Linear(2, 2), tmp_path / "m.pte", resolution=32)


def test_without_executorch_the_error_names_the_extra(capsys, tmp_path, monkeypatch):
    for name in EXECUTORCH_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # import of executorch now fails
    model = build_model(ModelConfig(arch="mobilenet_v1", alpha=0.25, resolution=32))
    hint = "needs executorch: pip install 'mobilenets[mobile]'"
    with pytest.raises(MobileNetsError, match=re.escape(f"the ExecuTorch export {hint}")):
        mobile.export_executorch(model, tmp_path / "m.pte", resolution=32)
    with pytest.raises(MobileNetsError, match=re.escape(f"running a .pte file {hint}")):
        mobile.load_pte(tmp_path / "m.pte")
    monkeypatch.chdir(tmp_path)
    for argv in (
        ["export", "mobilenet_v1_0.25_128", "--format", "pte", "--out", "m.pte"],
        ["bench", "mobilenet_v1_0.25_128", "--pte"],
    ):
        code, printed, err = run_cli(capsys, *argv)
        assert code == 2 and printed == "" and err.count("\n") == 1, err
        assert hint in err
    assert list(tmp_path.iterdir()) == []


def test_bench_exports_one_pte_per_batch_when_asked(monkeypatch):
    """run_benchmarks(pte=True) hands each batch size to export_executorch. The exports are
    tested above; here they are recorded and write nothing (which fails the run after them)."""
    asked = []

    def export_executorch(
        model, path, *, resolution, batch=1, metadata=None, int8=False, calibration=None
    ):
        asked.append((model.name, resolution, batch, path.suffix, int8))

    monkeypatch.setattr(bench.exports, "export_executorch", export_executorch)
    monkeypatch.setattr(bench.run, "require_executorch", lambda purpose: None)
    monkeypatch.setattr(bench.exports, "export_onnx", lambda *args, **kwargs: None)
    model = build_model(ModelConfig(arch="mobilenet_v1", alpha=0.25, resolution=32))
    for pte, expected in ((True, [1, 2]), (False, [])):
        asked.clear()
        with pytest.raises(MobileNetsError, match=r"\.onnx' does not exist"):
            bench.run_benchmarks([model], batches=(1, 2), iterations=1, threads=1, pte=pte)
        assert asked == [("mobilenet_v1_0.25_32", 32, b, ".pte", False) for b in expected]
