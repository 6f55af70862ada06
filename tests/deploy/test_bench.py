"""mobilenets bench: the timing statistics, the records of each runtime and batch, the files it
writes, and one-line errors. Nothing here asserts how fast anything is (benchmarks/ does that)."""

import json
from itertools import count

import onnx
import pytest
import torch

from mobilenets import create_model
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy import bench
from mobilenets.deploy.onnx_export import export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")

BATCHES = (1, 2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("mobilenet_v2", alpha=0.35, resolution=32).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    export_onnx(model, path, resolution=32, dynamic_batch=True, check_sizes=(1,))
    return path


def test_measure_counts_calls_and_orders_median_below_p90():
    calls = []
    ticks = count()
    durations = iter([0.004, 0.001, 0.003, 0.010, 0.002])  # seconds per timed call
    now = [0.0]

    def clock():
        # each timed call reads the clock twice: before (no change), after (+ its duration)
        if next(ticks) % 2:
            now[0] += next(durations)
        return now[0]

    timing = bench.measure(lambda: calls.append(1), warmup=3, iterations=5, clock=clock)
    assert len(calls) == 8
    assert timing.median_ms == pytest.approx(3.0)
    assert timing.p90_ms == pytest.approx(7.6)  # between 4 and 10 ms, linear interpolation
    assert timing.median_ms <= timing.p90_ms


@pytest.mark.parametrize("warmup, iterations", [(-1, 5), (0, 0), (0, True)])
def test_measure_rejects_bad_counts(warmup, iterations):
    with pytest.raises(MobileNetsError, match="must be an integer"):
        bench.measure(lambda: None, warmup, iterations)


def test_a_model_gets_eager_and_onnxruntime_fp32_at_each_batch(model):
    records = bench.run_benchmarks([model], batches=BATCHES, warmup=0, iterations=2, threads=1)
    assert [(r.runtime, r.precision, r.batch) for r in records] == [
        (bench.EAGER, "fp32", 1), (bench.ORT, "fp32", 1),
        (bench.EAGER, "fp32", 2), (bench.ORT, "fp32", 2),
    ]  # fmt: skip
    for record in records:
        assert record.model == "mobilenet_v2_0.35_32" and record.threads == 1
        assert 0 < record.median_ms <= record.p90_ms
        assert record.images_per_s == pytest.approx(record.batch / record.median_ms * 1e3)
        assert record.size_mb > 0
    eager = [r for r in records if r.runtime == bench.EAGER]
    assert [r.latency_vs_eager for r in eager] == [1.0, 1.0]
    for ort, reference in zip(records[1::2], eager, strict=True):
        assert ort.latency_vs_eager == pytest.approx(ort.median_ms / reference.median_ms)
        assert ort.speedup == pytest.approx(1 / ort.latency_vs_eager)
    state_mb = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()) * 4e-6
    assert eager[0].size_mb == pytest.approx(state_mb, rel=0.01)  # safetensors: raw + header
    assert torch.get_num_threads() == 1  # the fixture's setting, restored


def test_an_onnx_file_is_measured_against_eager_rebuilt_from_its_metadata(onnx_file):
    records = bench.run_benchmarks([onnx_file], batches=(2,), warmup=1, iterations=2, threads=1)
    assert [(r.runtime, r.precision, r.model) for r in records] == [
        (bench.EAGER, "fp32", "tiny.onnx"), (bench.ORT, "fp32", "tiny.onnx"),
    ]  # fmt: skip
    assert records[1].size_mb == pytest.approx(onnx_file.stat().st_size / 1e6)
    assert records[1].source == f"file {onnx_file}"
    assert bench.onnx_precision(onnx_file) == "fp32"


def test_cli_writes_json_and_markdown(capsys, tmp_path, onnx_file):
    json_path, markdown_path = tmp_path / "out" / "bench.json", tmp_path / "bench.md"
    argv = ["bench", str(onnx_file), "--batch", "1", "2", "--threads", "1", "--warmup", "0",
            "--iterations", "2", "--json", str(json_path),
            "--markdown", str(markdown_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "latency / eager" in out and f"wrote {json_path}" in out
    records = json.loads(json_path.read_text())
    assert [(r["runtime"], r["batch"]) for r in records] == [
        (bench.EAGER, 1), (bench.ORT, 1), (bench.EAGER, 2), (bench.ORT, 2),
    ]  # fmt: skip
    assert {"median_ms", "p90_ms", "images_per_s", "size_mb", "latency_vs_eager", "speedup"} <= set(
        records[0]
    )
    rows = [line for line in markdown_path.read_text().splitlines() if line.startswith("| ")]
    assert rows[0].split(" | ")[4] == "median ms" and len(rows) == 1 + len(records)
    assert all(row.count("|") == len(bench.HEADERS) + 1 for row in rows)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.onnx"], "'missing.onnx' does not exist"),
        (["CORRUPT"], "onnxruntime cannot load"),
        (["mobilenet_v2_1.0_224", "--threads", "0"], "threads must be an integer >= 1, got 0"),
        (["mobilenet_v2_1.0_224", "--batch", "1", "0"], "batch size must be an integer >= 1"),
        (["mobilenet_v2_1.0_224", "--iterations", "0"], "iterations must be an integer >= 1"),
        (["mobilenet_v9_1.0_224"], "mobilenet_v9_1.0_224"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, tmp_path, argv, message):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all")
    argv = [str(corrupt) if arg == "CORRUPT" else arg for arg in argv]
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobilenets bench: error: ") and message in err
    assert err.count("\n") == 1
    if "CORRUPT" in argv or str(corrupt) in argv:
        assert str(corrupt) in err


def test_a_fixed_batch_file_refuses_other_batches(onnx_file, tmp_path):
    graph = onnx.load(str(onnx_file))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # as without dynamic_batch
    path = tmp_path / "fixed.onnx"
    onnx.save(graph, str(path))
    again = "measure it at batch 1 only, or export it again with a dynamic batch axis"
    with pytest.raises(MobileNetsError, match=f"fixed batch of 1; {again}"):
        bench.run_benchmarks([path], batches=(1, 2), iterations=1, threads=1)


def test_a_file_keeps_its_resolution(capsys, onnx_file):
    with pytest.raises(MobileNetsError, match=r"takes 32x32 inputs; resolution=64 cannot change "):
        bench.run_benchmarks([onnx_file], resolution=64, iterations=1, threads=1)
    assert main(["bench", str(onnx_file), "--resolution", "64"]) == 2
    err = capsys.readouterr().err
    assert "takes 32x32 inputs; --resolution 64 cannot change an ONNX file" in err


# --- segmenters ----------------------------------------------------------------------------------


def test_a_segmenter_name_is_measured_at_its_size_output_stride_and_aspp(capsys, tmp_path):
    json_path = tmp_path / "bench.json"
    argv = ["bench", "deeplabv3_mobilenet_v2", "--resolution", "65", "--output-stride", "8",
            "--aspp", "--batch", "1", "2", "--threads", "1", "--warmup", "0", "--iterations", "1",
            "--json", str(json_path)]  # fmt: skip
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    name = "deeplabv3_mobilenet_v2_1.0_65_os8_aspp"
    records = json.loads(json_path.read_text())
    assert [(r["model"], r["runtime"], r["batch"], r["resolution"]) for r in records] == [
        (name, bench.EAGER, 1, 65), (name, bench.ORT, 1, 65),
        (name, bench.EAGER, 2, 65), (name, bench.ORT, 2, 65),
    ]  # fmt: skip
    assert records[1]["source"] == "export_onnx of random weights (a registered name)"
    assert all(0 < r["median_ms"] for r in records) and name in out


def test_a_segmenter_checkpoint_is_loaded_as_a_segmenter(tmp_path):
    from mobilenets.core.segmenter import DeepLabV3
    from mobilenets.core.weights import save_weights
    from mobilenets.zoo.segmenters import create_segmenter

    model = create_segmenter("deeplabv3_mobilenet_v2", alpha=0.35, num_classes=3, resolution=97)
    save_weights(model, tmp_path / "best.safetensors")
    source = bench.load_source(str(tmp_path))  # the run folder: its best
    assert isinstance(source.model, DeepLabV3) and source.model.config == model.config
    assert source.resolution == 97 and bench.load_source(str(tmp_path), 65).resolution == 65
    assert source.weights == f"checkpoint {tmp_path / 'best.safetensors'}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["mobilenet_v2_1.0_224", "--output-stride", "8"],
         "apply to a registered segmenter name (such as deeplabv3_mobilenet_v2), not to "
         "'mobilenet_v2_1.0_224'"),
        (["deeplabv3_mobilenet_v2", "--int8"],
         "int8 and pte measure classifiers; for the segmenter 'deeplabv3_mobilenet_v2' export a "
         ".pte with export_segmenter"),
        (["deeplabv3_mobilenet_v2", "--resolution", "16"], "resolution must be an integer >= 32"),
    ],
)  # fmt: skip
def test_segmenter_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobilenets bench: error: ") and message in err, err
    assert err.count("\n") == 1


def test_a_segmenters_output_stride_is_8_or_16(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "deeplabv3_mobilenet_v2", "--output-stride", "32"])
    assert exit_info.value.code == 2
    assert "--output-stride: invalid choice: 32 (choose from 8, 16)" in capsys.readouterr().err
