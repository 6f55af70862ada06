"""mobilenets bench: the timing statistics, the records of each runtime and batch, the files it
writes, and one-line errors. Nothing here asserts how fast anything is (benchmarks/ does that)."""

import ctypes
import gc
import json
from functools import partial
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
        (bench.EAGER, "fp32", 1),
        (bench.ORT, "fp32", 1),
        (bench.EAGER, "fp32", 2),
        (bench.ORT, "fp32", 2),
    ]
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
        (bench.EAGER, "fp32", "tiny.onnx"),
        (bench.ORT, "fp32", "tiny.onnx"),
    ]
    assert records[1].size_mb == pytest.approx(onnx_file.stat().st_size / 1e6)
    assert records[1].source == f"file {onnx_file}"
    assert bench.onnx_precision(onnx_file) == "fp32"


def test_cli_writes_json_and_markdown(capsys, tmp_path, onnx_file):
    json_path, markdown_path = tmp_path / "out" / "bench.json", tmp_path / "bench.md"
    argv = [
        "bench",
        str(onnx_file),
        "--batch",
        "1",
        "2",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--iterations",
        "2",
        "--json",
        str(json_path),
        "--markdown",
        str(markdown_path),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "latency / eager" in out and f"wrote {json_path}" in out
    records = json.loads(json_path.read_text())
    assert [(r["runtime"], r["batch"]) for r in records] == [
        (bench.EAGER, 1),
        (bench.ORT, 1),
        (bench.EAGER, 2),
        (bench.ORT, 2),
    ]
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
    argv = [
        "bench",
        "deeplabv3_mobilenet_v2",
        "--resolution",
        "65",
        "--output-stride",
        "8",
        "--aspp",
        "--batch",
        "1",
        "2",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--iterations",
        "1",
        "--json",
        str(json_path),
    ]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    name = "deeplabv3_mobilenet_v2_1.0_65_os8_aspp"
    records = json.loads(json_path.read_text())
    assert [(r["model"], r["runtime"], r["batch"], r["resolution"]) for r in records] == [
        (name, bench.EAGER, 1, 65),
        (name, bench.ORT, 1, 65),
        (name, bench.EAGER, 2, 65),
        (name, bench.ORT, 2, 65),
    ]
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
        (
            ["mobilenet_v2_1.0_224", "--output-stride", "8"],
            "apply to a registered segmenter name (such as deeplabv3_mobilenet_v2), not to "
            "'mobilenet_v2_1.0_224'",
        ),
        (["deeplabv3_mobilenet_v2", "--resolution", "16"], "resolution must be an integer >= 32"),
    ],
)
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
    stack = bench._SignalStack()
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


# --- detectors and the fastest mark --------------------------------------------------------------


@pytest.fixture(scope="module")
def detector():
    from mobilenets.zoo.detectors import create_detector

    torch.manual_seed(0)
    return create_detector("ssdlite_mobilenet_v2", alpha=0.35, num_classes=3, resolution=96).eval()


def _check_fastest(records):
    groups = {}
    for record in records:
        groups.setdefault((record.model, record.batch), []).append(record)
    for group in groups.values():
        (fastest,) = [r for r in group if r.fastest]
        assert fastest.median_ms == min(r.median_ms for r in group)


def test_a_detector_name_gets_eager_and_onnxruntime_fp32_at_its_resolution():
    records = bench.run_benchmarks(
        ["ssdlite_mobilenet_v2"], batches=(1,), resolution=96, warmup=0, iterations=2, threads=1
    )
    name = "ssdlite_mobilenet_v2_1.0_96"
    assert [(r.model, r.runtime, r.precision, r.batch, r.resolution) for r in records] == [
        (name, bench.EAGER, "fp32", 1, 96),
        (name, bench.ORT, "fp32", 1, 96),
    ]
    assert records[1].source == "export_onnx of random weights (a registered name)"
    assert all(0 < r.median_ms <= r.p90_ms and r.size_mb > 0 for r in records)
    assert records[1].latency_vs_eager == pytest.approx(records[1].median_ms / records[0].median_ms)
    _check_fastest(records)


def test_a_detector_runs_in_openvino_too_and_the_fastest_row_is_marked(detector):
    records = bench.run_benchmarks(
        [detector], batches=(1, 2), warmup=0, iterations=2, threads=1, openvino=True
    )
    assert [(r.runtime, r.batch) for r in records] == [
        (bench.EAGER, 1),
        (bench.ORT, 1),
        (bench.OPENVINO, 1),
        (bench.EAGER, 2),
        (bench.ORT, 2),
        (bench.OPENVINO, 2),
    ]
    assert {r.model for r in records} == {"ssdlite_mobilenet_v2_0.35_96"}
    assert records[2].size_mb == records[1].size_mb  # the same file
    _check_fastest(records)
    marked = [row for row in bench.table_rows(records) if row[-2].endswith(bench.FASTEST_MARK)]
    assert len(marked) == 2 and [row[3] for row in marked] == ["1", "2"]
    assert any("marks the fastest runtime" in line for line in bench.notes(records))
    assert bench.markdown_table(records).count(bench.FASTEST_MARK) == 2
    assert all("fastest" in r.to_dict() for r in records)


def test_mark_fastest_marks_exactly_the_smallest_median_first_of_ties():
    common = {"model": "m", "resolution": 32, "threads": 1}
    records = [
        bench._record(common, runtime, "fp32", 1, bench.Timing(median, median), None, 2.0, "s")
        for runtime, median in [(bench.EAGER, 2.0), (bench.ORT, 0.5), (bench.OPENVINO, 0.5)]
    ]
    assert not any(r.fastest for r in records)  # BenchRecord's default: set after measuring
    assert [r.fastest for r in bench.mark_fastest(records)] == [False, True, False]
    assert bench.mark_fastest([]) == []


def test_a_detection_checkpoint_is_measured_and_its_onnx_file_too(detector, tmp_path):
    from mobilenets.core.detector import SSDLite
    from mobilenets.core.weights import save_weights

    path = tmp_path / "best.safetensors"
    save_weights(detector, path)
    source = bench.load_source(str(tmp_path))  # the run folder: its best
    assert isinstance(source.model, SSDLite) and source.model.config == detector.config
    assert source.resolution == 96 and source.weights == f"checkpoint {path}"
    at_128 = bench.load_source(str(path), 128)  # rebuilt for its default boxes, same weights
    assert at_128.resolution == 128 == at_128.model.resolution
    torch.testing.assert_close(at_128.model.state_dict(), detector.state_dict(), rtol=0, atol=0)

    records = bench.run_benchmarks([path], batches=(1,), warmup=0, iterations=2, threads=1)
    assert [(r.model, r.runtime) for r in records] == [
        ("ssdlite_mobilenet_v2_0.35_96", bench.EAGER),
        ("ssdlite_mobilenet_v2_0.35_96", bench.ORT),
    ]
    assert records[1].source == f"export_onnx of checkpoint {path}"

    # the raw head outputs, a dynamic batch, and a detection config its eager twin rebuilds from
    written = tmp_path / "ssdlite.onnx"
    bench._export_dense_onnx(detector, written, 96)
    graph = onnx.load(str(written)).graph
    assert [output.name for output in graph.output] == list(bench.DETECTOR_OUTPUTS)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param
    records = bench.run_benchmarks([written], batches=(2,), warmup=0, iterations=2, threads=1)
    assert [(r.runtime, r.batch) for r in records] == [(bench.EAGER, 2), (bench.ORT, 2)]


# --- the accuracy column (--data) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    from mobilenets.core.models import build_model
    from mobilenets.core.spec import ModelConfig
    from mobilenets.data.classification import load_splits
    from mobilenets.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            arch="mobilenet_v2", alpha=0.35, resolution=32, num_classes=10, small_input=True
        )
    ).eval()
    splits = load_splits("synthetic:64", 32)
    path = tmp_path_factory.mktemp("bench-data") / "model.safetensors"
    return save_checkpoint(model, path, splits.classes, splits.preprocessing)


def test_data_scores_every_runtime_on_the_validation_split_and_calibrates_on_training_images(
    classifier_checkpoint, capsys
):
    from mobilenets.data.classification import load_splits
    from mobilenets.data.transforms import eval_transform
    from mobilenets.engine.checkpoint import load_checkpoint
    from mobilenets.engine.evaluate import evaluate
    from mobilenets.engine.loop import ordered_loader

    args = [
        "bench",
        str(classifier_checkpoint),
        "--batch",
        "1",
        "--warmup",
        "0",
        "--iterations",
        "1",
        "--threads",
        "1",
        "--int8",
        "--openvino",
        "--data",
        "synthetic:64",
        "--calibration-images",
        "16",
        "--json",
    ]
    json_path = classifier_checkpoint.parent / "records.json"
    assert main([*args, str(json_path)]) == 0
    records = json.loads(json_path.read_text())
    assert [(r["runtime"], r["precision"]) for r in records] == [
        (bench.EAGER, "fp32"),
        (bench.ORT, "fp32"),
        (bench.ORT, "int8"),
        (bench.OPENVINO, "fp32"),
        (bench.OPENVINO, "int8"),
    ]
    checkpoint = load_checkpoint(classifier_checkpoint)
    splits = load_splits("synthetic:64", 32)
    splits.val.transform = eval_transform(checkpoint.preprocessing)
    top1 = evaluate(checkpoint.model, ordered_loader(splits.val, 16), 10).top1
    assert all(r["metric"] == "top-1" for r in records)
    # fp32 in every runtime gives the same logits to 1e-4, hence the same top-1 as PyTorch's
    assert [r["accuracy"] for r in records if r["precision"] == "fp32"] == [top1] * 3
    assert all(0 <= r["accuracy"] <= 1 for r in records if r["precision"] == "int8")
    int8 = [r for r in records if r["precision"] == "int8"]
    assert all(r["note"] == "calibrated on 16 training images" for r in int8)
    out = capsys.readouterr().out
    assert f"top-1 {top1:.4f}" in out and bench.SYNTHETIC_NOTE not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["mobilenet_v2_0.35_96", "--data", "synthetic:64"],
            "--data scores checkpoints, and 'mobilenet_v2_0.35_96' is a registered name",
        ),
    ],
)
def test_data_errors_are_one_line(capsys, argv, message):
    assert main(["bench", *argv, "--batch", "1", "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobilenets bench: error: ") and message in err, err
    assert err.count("\n") == 1


@pytest.fixture
def shapes_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_DATA", str(tmp_path / "data"))
    return "synthetic-shapes:12"  # 12 training and a few validation images


@pytest.mark.slow
def test_data_scores_a_detector_with_the_coco_evaluation_in_every_runtime(shapes_data, tmp_path):
    pytest.importorskip("executorch")
    from random_weights import randomize_torch

    from mobilenets.cli.bench import bench_validation
    from mobilenets.data.detection import detection_preprocessing, load_detection_data
    from mobilenets.engine.checkpoint import save_checkpoint
    from mobilenets.tasks.detection.evaluate import evaluate_detector
    from mobilenets.tasks.detection.inference import checkpoint_data, load_detection_checkpoint
    from mobilenets.zoo.detectors import create_detector

    data = load_detection_data(shapes_data, splits=("val",))
    torch.manual_seed(0)
    model = randomize_torch(
        create_detector(
            "ssdlite_mobilenet_v2", alpha=0.35, resolution=64, num_classes=len(data.class_names)
        )
    )
    path = tmp_path / "best.safetensors"
    save_checkpoint(
        model,
        path,
        data.class_names,
        detection_preprocessing(64, None),
        category_ids=list(data.category_ids),
    )
    records = bench.run_benchmarks(
        [str(path)],
        batches=(1,),
        warmup=0,
        iterations=1,
        threads=1,
        int8=True,
        pte=True,
        calibration_images=4,
        validation=partial(bench_validation, data=shapes_data),
    )
    # int8 ONNX by onnxruntime's quantize_static, and .pte files fp32 and int8 (PT2E), each
    # checked against PyTorch (its quantized reference for int8) when it is written
    assert [(r.runtime, r.precision) for r in records] == EVERY_RUNTIME
    check_int8_sizes(records)
    assert all(
        r.note == "calibrated on 4 training images" for r in records if r.precision == "int8"
    )
    _check_fastest(records)
    checkpoint = load_detection_checkpoint(path)
    expected = evaluate_detector(checkpoint.model, checkpoint_data(checkpoint, shapes_data).val)
    assert all(r.metric == "AP50" for r in records)
    fp32 = [r.accuracy for r in records if r.precision == "fp32"]
    assert fp32 == pytest.approx([expected["AP50"]] * 3, abs=1e-6)  # eager, onnx, pte
    assert all(0 <= r.accuracy <= 1 for r in records if r.precision == "int8")


EVERY_RUNTIME = [
    (bench.EAGER, "fp32"),
    (bench.ORT, "fp32"),
    (bench.ORT, "int8"),
    (bench.PTE, "fp32"),
    (bench.PTE, "int8"),
]


def check_int8_sizes(records) -> None:
    fp32_onnx, int8_onnx, fp32_pte, int8_pte = (r.size_mb for r in records[1:])
    assert int8_onnx < fp32_onnx / 2 and int8_pte < fp32_pte / 2  # int8 weights


def test_data_scores_a_segmenter_by_its_miou(shapes_data, tmp_path):
    # onnxruntime only: bench's .pte export and scoring of dense outputs is the detector's above,
    # and a segmenter's int8 .pte is tests/deploy/test_segmentation_int8.py's
    from random_weights import randomize_torch

    from mobilenets.cli.bench import bench_validation
    from mobilenets.core.preprocessing import Preprocessing
    from mobilenets.data.segmentation import load_segmentation_data
    from mobilenets.data.segmentation_transforms import eval_transform
    from mobilenets.engine.checkpoint import save_checkpoint
    from mobilenets.tasks.segmentation.evaluate import evaluate_segmenter
    from mobilenets.tasks.segmentation.int8 import SquareInputSegmenter
    from mobilenets.zoo.segmenters import create_segmenter

    classes = ("background", "circle", "square", "triangle", "star")
    preprocessing = Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    model = randomize_torch(
        create_segmenter("deeplabv3_mobilenet_v2", alpha=0.35, resolution=64, num_classes=5)
    ).eval()
    path = tmp_path / "best.safetensors"
    save_checkpoint(model, path, classes, preprocessing)
    records = bench.run_benchmarks(
        [str(path)],
        batches=(1,),
        warmup=0,
        iterations=1,
        threads=1,
        int8=True,
        calibration_images=4,
        validation=partial(bench_validation, data=shapes_data),
    )
    val = load_segmentation_data(shapes_data, splits=("val",)).val
    val.transform = eval_transform(preprocessing)
    expected = evaluate_segmenter(SquareInputSegmenter(model, 64, 5), val, batch_size=1)["mIoU"]
    assert [(r.runtime, r.precision) for r in records] == EVERY_RUNTIME[:3]
    assert all(r.metric == "mIoU" for r in records)
    assert records[2].size_mb < records[1].size_mb / 2  # int8 weights
    _check_fastest(records)
    assert [r.accuracy for r in records[:2]] == pytest.approx([expected] * 2, abs=1e-6)
    assert 0 <= records[2].accuracy <= 1
