"""The family chart's numbers: the Pareto front, the measured rows, the JSON, the trained rows."""

import json

import pytest

from mobilenets import create_model
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import write_json
from mobilenets.core.weights import save_weights
from mobilenets.deploy.bench.family import (
    CHART_KIND,
    mark_front,
    measure_family,
    pareto_front,
    read_chart,
    trained_rows,
)
from mobilenets.zoo.factory import cost

TINY = ["mobilenet_v1_0.25_128", "mobilenet_v2_0.35_96", "mobilenet_v3_small_0.5_224"]


@pytest.fixture(scope="session")
def chart():
    """Three small variants of three families, two timed runs each: the expensive part, once."""
    return measure_family(models=TINY, threads=1, warmup=0, iterations=2, openvino=False)


def test_the_pareto_front_keeps_exactly_the_undominated_points():
    points = [(1.0, 50.0), (2.0, 60.0), (1.5, 55.0), (2.5, 58.0), (3.0, 70.0), (1.0, 45.0)]
    assert pareto_front(points) == [0, 1, 2, 4]
    assert pareto_front([(1.0, 50.0), (1.0, 50.0)]) == [0, 1]  # equal points both stay
    assert pareto_front([(2.0, 50.0), (1.0, 50.0)]) == [1]  # as accurate and faster wins
    assert pareto_front([]) == []


def test_the_front_spans_both_precisions_and_skips_unpublished_rows():
    rows = [
        {"name": "a", "top1": 70.0, "fp32_ms": 10.0, "int8_ms": 4.0},
        {"name": "b", "top1": 60.0, "fp32_ms": 5.0, "int8_ms": 3.0},
        {"name": "c", "top1": None, "fp32_ms": 1.0, "int8_ms": 0.5},
        {"name": "d", "top1": 50.0, "fp32_ms": 6.0, "int8_ms": None},
    ]
    mark_front(rows)
    # a's int8 point is as accurate as its fp32 one and faster; b's fp32 point is slower and
    # less accurate than a's int8 one
    assert [row["front"] for row in rows] == [["int8"], ["int8"], [], []]


def test_every_variant_is_measured_in_both_precisions(chart):
    rows = chart["rows"]
    assert [row["name"] for row in rows] == TINY
    assert [row["family"] for row in rows] == ["v1", "v2", "v3"]
    for row in rows:
        assert row["params"] == cost(row["name"]).params
        assert row["fp32_ms"] > 0 and row["int8_ms"] > 0
        assert row["fp32_runtime"] == row["int8_runtime"] == "onnxruntime"
    assert rows[-1]["top1"] is None and rows[-1]["front"] == []  # V3-Small 0.5: no published top-1
    assert rows[0]["top1"] == 41.5 and rows[1]["top1"] == 45.5
    points = [(row[f"{p}_ms"], row["top1"]) for row in rows[:2] for p in ("fp32", "int8")]
    members = {divmod(index, 2) for index in pareto_front(points)}
    marked = {(i, ("fp32", "int8").index(p)) for i, row in enumerate(rows) for p in row["front"]}
    assert marked == members and marked


def test_the_chart_says_where_and_how_it_was_measured(chart):
    assert chart["kind"] == CHART_KIND
    assert (chart["threads"], chart["warmup"], chart["iterations"]) == (1, 0, 2)
    assert chart["runtimes"] == ["onnxruntime"] and chart["int8"] is True
    assert "1 thread" in chart["environment"] and "torch " in chart["environment"]
    assert set(chart["versions"]) == {"mobilenets", "torch"} and chart["date"].endswith("UTC")


def test_the_chart_round_trips_through_json(chart, tmp_path):
    path = tmp_path / "chart.json"
    write_json(path, chart)
    assert read_chart(path) == chart
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(MobileNetsError, match="is not a family chart's JSON"):
        read_chart(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MobileNetsError, match="is not JSON"):
        read_chart(tmp_path / "bad.json")
    with pytest.raises(MobileNetsError, match="cannot read '.*missing.json'"):
        read_chart(tmp_path / "missing.json")


def test_unknown_names_and_families_are_refused():
    with pytest.raises(MobileNetsError, match="family must be one of v1, v2, v3, v4, got 'v9'"):
        measure_family(["v9"])
    with pytest.raises(MobileNetsError, match="models: 'mobilenet_v1_\\*' matches no registered"):
        measure_family(["v2"], models=["mobilenet_v2_*_224", "mobilenet_v1_*"])


def _record(model, source, runtime, precision, median_ms, accuracy):
    return {
        "model": model,
        "runtime": runtime,
        "precision": precision,
        "batch": 1,
        "median_ms": median_ms,
        "source": source,
        "accuracy": accuracy,
        "metric": "top-1",
    }


def test_trained_rows_read_a_bench_json_and_its_checkpoints(tmp_path):
    model = create_model("mobilenet_v2", alpha=0.35, resolution=32, num_classes=10)
    save_weights(model, tmp_path / "run" / "best.safetensors")
    source = f"checkpoint {tmp_path / 'run' / 'best.safetensors'}"
    records = [
        _record("tiny", source, "pytorch eager", "fp32", 9.0, 0.81),
        _record("tiny", "export_onnx of x", "onnxruntime", "fp32", 3.0, 0.81),
        _record("tiny", "quantize_file of x", "onnxruntime", "int8", 2.0, 0.8),
        {**_record("tiny", source, "pytorch eager", "fp32", 90.0, 0.81), "batch": 32},
    ]
    write_json(tmp_path / "bench.json", records)
    (row,) = trained_rows(tmp_path / "bench.json")
    assert row["params"] == cost(model).params and row["macs"] == cost(model).macs
    assert (row["family"], row["resolution"], row["metric"]) == ("v2", 32, "top-1")
    assert (row["fp32_ms"], row["fp32_runtime"], row["fp32_accuracy"]) == (3.0, "onnxruntime", 0.81)
    assert (row["int8_ms"], row["int8_accuracy"]) == (2.0, 0.8)


def test_trained_rows_need_scored_checkpoints(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"kind": CHART_KIND}))
    with pytest.raises(MobileNetsError, match="is not a bench run's JSON"):
        trained_rows(bench)
    write_json(
        bench,
        [_record("tiny", "checkpoint nowhere.safetensors", "pytorch eager", "fp32", 1.0, 0.5)],
    )
    with pytest.raises(MobileNetsError, match="tiny: the bench records name no checkpoint"):
        trained_rows(bench)
    write_json(bench, [_record("tiny", "checkpoint x", "pytorch eager", "fp32", 1.0, None)])
    with pytest.raises(MobileNetsError, match="no accuracy at batch 1 for every model"):
        trained_rows(bench)
