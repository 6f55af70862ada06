"""bench's runtimes: OpenVINO beside onnxruntime on every ONNX file, in f32 for fp32 files,
refusing a file it cannot compile, and leaving the signal stack as it was."""

import ctypes
import gc

import pytest

from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy import bench
from mobilenets.deploy.bench import runtimes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_openvino_runs_every_onnx_file_fp32_and_int8_beside_onnxruntime(model):
    records = bench.run_benchmarks(
        [model],
        batches=(1,),
        warmup=0,
        iterations=2,
        threads=1,
        int8=True,
        calibration_images=4,
        openvino=True,
    )
    assert [(r.runtime, r.precision) for r in records] == [
        (bench.EAGER, "fp32"),
        (bench.ORT, "fp32"),
        (bench.ORT, "int8"),
        (bench.OPENVINO, "fp32"),
        (bench.OPENVINO, "int8"),
    ]
    eager = records[0].median_ms
    for record in records[3:]:
        assert 0 < record.median_ms <= record.p90_ms
        assert record.latency_vs_eager == pytest.approx(record.median_ms / eager)
    # the same files as onnxruntime's, so the same sizes
    assert [r.size_mb for r in records[3:]] == [r.size_mb for r in records[1:3]]
    # calibrated on random inputs without --data: the table says so
    assert all(r.note == bench.SYNTHETIC_NOTE for r in records if r.precision == "int8")


def test_openvino_refuses_a_file_it_cannot_compile(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx model")
    with pytest.raises(MobileNetsError, match=r"OpenVINO cannot compile '.*broken\.onnx'"):
        bench.openvino_model(path, threads=1)


def test_openvino_runs_an_fp32_file_in_f32(onnx_file):
    # OpenVINO's default on a CPU with bf16 support is bf16: an "fp32" row must not be that
    fp32 = bench.openvino_model(onnx_file, threads=1, precision="fp32").get_compiled_model()
    assert str(fp32.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    int8 = bench.openvino_model(onnx_file, threads=1, precision="int8").get_compiled_model()
    default = ov_default_precision()
    assert str(int8.get_property("INFERENCE_PRECISION_HINT")) == default


def ov_default_precision() -> str:
    import openvino

    return str(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def _signal_stack() -> tuple[int, int]:
    stack = runtimes.SignalStack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    return stack.sp or 0, stack.size


def test_openvino_models_freed_in_any_order_leave_the_signal_stack_as_it_was(onnx_file):
    # OpenVINO gives the compiling thread a signal stack of its own; freed first-in first-out,
    # two models left the thread on an unmapped one, and the next SIGCHLD killed the process
    before = _signal_stack()
    first = bench.openvino_model(onnx_file, threads=1)
    second = bench.openvino_model(onnx_file, threads=1)
    assert _signal_stack() == before
    del first
    gc.collect()
    del second
    gc.collect()
    assert _signal_stack() == before
