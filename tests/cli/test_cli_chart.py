"""zoo --chart: redrawn from its JSON, the trained picture, and one-line errors (the measuring
itself is tested in tests/deploy/bench/test_family.py)."""

import json
import re

import pytest

from mobilenets.cli import chart as cli_chart
from mobilenets.cli import main
from mobilenets.deploy.bench import family

CHART = {
    "kind": family.CHART_KIND,
    "environment": "torch 2, onnxruntime 1, Some CPU (x86_64): AVX2, 2 CPUs, 2 threads",
    "threads": 2,
    "warmup": 3,
    "iterations": 20,
    "int8": True,
    "runtimes": ["onnxruntime"],
    "versions": {"mobilenets": "0.1.0", "torch": "2"},
    "commit": "abc1234",
    "date": "2026-12-08 03:00 UTC",
    "rows": [
        {
            "name": "mobilenet_v1_1.0_224",
            "family": "v1",
            "params": 4231976,
            "macs": 568740352,
            "top1": 70.9,
            "fp32_ms": 20.0,
            "fp32_runtime": "onnxruntime",
            "int8_ms": 9.0,
            "int8_runtime": "onnxruntime",
            "front": ["fp32", "int8"],
        },
        {
            "name": "mobilenet_v3_small_0.5_224",
            "family": "v3",
            "params": 1e6,
            "macs": 2e7,
            "top1": None,
            "fp32_ms": 3.0,
            "fp32_runtime": "onnxruntime",
            "int8_ms": 2.0,
            "int8_runtime": "onnxruntime",
            "front": [],
        },
    ],
}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_flag_defaults_are_the_librarys():
    assert cli_chart.CHART_ITERATIONS == family.CHART_ITERATIONS
    assert cli_chart.CHART_WARMUP == family.CHART_WARMUP


def test_the_chart_is_redrawn_from_its_json_with_table_and_markdown(capsys, tmp_path):
    source = tmp_path / "chart.json"
    source.write_text(json.dumps(CHART))
    out_png, markdown = tmp_path / "chart.png", tmp_path / "chart.md"
    code, out, _ = run(
        capsys,
        "zoo",
        "--chart",
        str(out_png),
        "--chart-from",
        str(source),
        "--chart-markdown",
        str(markdown),
    )
    assert code == 0 and out_png.stat().st_size > 10_000
    line = next(line for line in out.splitlines() if line.startswith("mobilenet_v1_1.0_224"))
    assert line.split()[1:7] == ["v1", "4.23", "568.7", "70.9", "20.00", "9.00"]
    assert line.endswith("fp32 + int8")
    assert "Not plotted, no published top-1: mobilenet_v3_small_0.5_224." in out
    assert "commit abc1234, 2026-12-08 03:00 UTC" in out
    text = markdown.read_text()
    assert text.startswith("| variant | family |") and "| mobilenet_v1_1.0_224 | v1 |" in text
    code, out, _ = run(
        capsys, "zoo", "--chart", str(out_png), "--chart-from", str(source), "--json"
    )
    assert code == 0 and json.loads(out) == CHART


def test_the_trained_chart_from_a_bench_json(capsys, tmp_path, monkeypatch):
    rows = [
        {
            "name": "mobilenet_v2_1.0_28_small",
            "family": "v2",
            "params": 2.2e6,
            "macs": 6e6,
            "metric": "top-1",
            "fp32_ms": 3.0,
            "int8_ms": 2.5,
            "fp32_accuracy": 0.88,
            "int8_accuracy": 0.87,
            "fp32_runtime": "onnxruntime",
            "int8_runtime": "onnxruntime",
        },
    ]
    monkeypatch.setattr(family, "trained_rows", lambda path: rows)
    code, out, _ = run(capsys, "zoo", "--chart", str(tmp_path / "t.png"), "--trained", "b.json")
    assert code == 0 and (tmp_path / "t.png").stat().st_size > 10_000
    line = next(line for line in out.splitlines() if line.startswith("mobilenet_v2_1.0_28_small"))
    assert line.split()[1:8] == ["v2", "2.20", "6.0", "0.8800", "0.8700", "3.00", "2.50"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--chart", "x.jpg"], "--chart takes a file ending in .png, .pdf, .svg, got 'x.jpg'"),
        (
            ["--chart-json", "x.json"],
            "--chart-json draws or measures the family chart: add --chart",
        ),
        (["--threads", "2"], "--threads draws or measures the family chart: add --chart FILE"),
        (["--no-int8"], "--int8 draws or measures the family chart"),
        (["--chart", "x.png", "--plot", "y.png"], "--plot and --chart draw different pictures"),
        (["--chart", "x.png", "--trained", "a", "--chart-from", "b"], "--trained and --chart-from"),
        (["--chart", "/no/such/folder/x.png"], "cannot write '/no/such/folder/x.png': its folder"),
        (["--chart", "x.png", "--chart-from", "/no/chart.json"], "cannot read '/no/chart.json'"),
        (["--chart", "x.png", "--models", "nothing_*"], "models: 'nothing_\\*' matches no"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(capsys, argv, message):
    code, _, err = run(capsys, "zoo", *argv)
    assert code != 0
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_an_unknown_family_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["zoo", "--chart", "x.png", "--family", "v9"])
    assert exit_info.value.code == 2
    assert "argument --family: invalid choice: 'v9'" in capsys.readouterr().err
