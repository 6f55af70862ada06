"""A bench run: the records of each runtime and batch, the fastest marked, the files the CLI
writes, one-line errors, and the accuracy column (--data). Nothing here asserts how fast anything
is (benchmarks/ does that)."""

import json
from functools import partial

import pytest
import torch

from mobilenets.cli import main
from mobilenets.deploy import bench

pytestmark = pytest.mark.usefixtures("one_thread")

BATCHES = (1, 2)


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
    from mobilenets.core.detection_spec import DetectionConfig
    from mobilenets.core.spec import ModelConfig
    from mobilenets.data.detection import detection_preprocessing, load_detection_data
    from mobilenets.engine.checkpoint import save_checkpoint
    from mobilenets.tasks.detection.evaluate import evaluate_detector
    from mobilenets.tasks.detection.inference import checkpoint_data, load_detection_checkpoint
    from mobilenets.zoo.detectors import create_detector

    data = load_detection_data(shapes_data, splits=("val",))
    torch.manual_seed(0)
    # SSDLite on V1 0.25 (63 convs to V2 0.35's 88): the two .pte programs' lowering takes most
    # of this test's time, which grows with the graph's size, and bench treats every backbone
    # alike (the registered V2 detector is benched above and in tests/tasks/detection)
    backbone = ModelConfig(arch="mobilenet_v1", alpha=0.25)
    model = randomize_torch(
        create_detector(DetectionConfig(backbone), resolution=64, num_classes=len(data.class_names))
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
    # and a segmenter's int8 .pte is tests/tasks/segmentation/test_quantize.py's
    from random_weights import randomize_torch

    from mobilenets.cli.bench import bench_validation
    from mobilenets.core.preprocessing import Preprocessing
    from mobilenets.data.segmentation import load_segmentation_data
    from mobilenets.data.segmentation_transforms import eval_transform
    from mobilenets.engine.checkpoint import save_checkpoint
    from mobilenets.tasks.segmentation.evaluate import evaluate_segmenter
    from mobilenets.tasks.segmentation.quantize import SquareInputSegmenter
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
