"""The command line: tables, JSON, the plot, and one-line errors."""

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from mobilenets import cost, list_models
from mobilenets.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_usage_error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_zoo_table_lists_every_variant_with_references(capsys):
    code, out, _ = run(capsys, "zoo")
    assert code == 0
    for name in list_models():
        assert f"\n{name} " in out
    line = next(line for line in out.splitlines() if line.startswith("mobilenet_v1_1.0_224 "))
    assert line.split()[3:9] == ["4.23", "568.7", "4.24", "569", "70.9", "89.9"]


def test_zoo_family_and_json(capsys):
    code, out, _ = run(capsys, "zoo", "--family", "v2", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 30 and all(r["arch"] == "mobilenet_v2" for r in rows)
    row = next(r for r in rows if r["name"] == "mobilenet_v2_1.0_224")
    assert (row["params"], row["reference"]["top1"]) == (3_504_872, 71.8)


def test_zoo_plot_writes_a_png(capsys, tmp_path):
    path = tmp_path / "zoo.png"
    code, out, _ = run(capsys, "zoo", "--plot", str(path))
    assert code == 0 and f"wrote {path}" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_cost_json_matches_the_library(capsys):
    code, out, _ = run(capsys, "cost", "mobilenet_v1_1.0_224", "--standard", "--json", "--by-kind")
    data = json.loads(out)
    report = cost("mobilenet_v1_1.0_224")
    assert code == 0
    assert (data["params"], data["macs"], data["resolution"]) == (4_231_976, 568_740_352, 224)
    assert (data["standard_params"], data["standard_macs"]) == (
        report.standard_params,
        report.standard_macs,
    )
    assert len(data["layers"]) == len(report.layers) == 28
    assert [row["label"] for row in data["by_kind"]][0] == "Conv 1x1"


def test_cost_table_with_alpha_rho_breakdown_and_counterfactual(capsys):
    code, out, _ = run(capsys, "cost", "mobilenet_v1", "--alpha", "1.0", "--by-kind", "--standard")
    assert code == 0
    assert "total: 4,231,976 params, 568,740,352 MACs" in out
    assert "94.86%" in out and "29.3M" in out
    code, out, _ = run(capsys, "cost", "mobilenet_v2", "--alpha", "0.5", "--rho", "0.571", "--json")
    data = json.loads(out)
    assert (data["alpha"], data["resolution"]) == (0.5, 128)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cost", "mobilenet_v1", "--alpha", "0"], "alpha must be a positive number, got 0.0"),
        (
            ["cost", "mobilenet_v1", "--resolution", "16"],
            "resolution must be an integer >= 32, got 16",
        ),
        (["cost", "mobilenet_v1", "--rho", "2"], "rho must be a number in (0, 1], got 2.0"),
        (
            ["cost", "mobilenet_v3"],
            "unknown model 'mobilenet_v3'; did you mean mobilenet_v2, mobilenet_v1",
        ),
        (["cost", "mobilenet_v1", "--expansion", "4"], "expansion applies to mobilenet_v2 only"),
        (["zoo", "--plot", "/nonexistent/dir/zoo.png"], "cannot write plot"),
        (
            ["zoo", "--plot", "zoo.txt"],
            "--plot takes a file ending in .png, .pdf, .svg, got 'zoo.txt'",
        ),
        (["zoo", "--plot", ""], "--plot takes a file ending in .png, .pdf, .svg, got ''"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cost", "mobilenet_v1", "--alpha", "abc"], "invalid float value: 'abc'"),
        (["cost", "mobilenet_v1", "--resolution", "160", "--rho", "0.5"], "not allowed with"),
        (["zoo", "--family", "v5"], "invalid choice: 'v5'"),
        (["deploy"], "invalid choice: 'deploy'"),
        (["train"], "the following arguments are required: --out"),
    ],
)
def test_usage_errors_are_one_line_too(capsys, argv, message):
    code, _, err = run_usage_error(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_installed_console_script_and_module():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("mobilenets") == "mobilenets.cli:main"
    result = subprocess.run(
        [sys.executable, "-m", "mobilenets", "cost", "mobilenet_v2_1.0_224", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == 3_504_872
    failed = subprocess.run(
        [sys.executable, "-m", "mobilenets", "cost", "nope"], capture_output=True, text=True
    )
    assert failed.returncode == 2 and failed.stderr.startswith("mobilenets cost: error: unknown")
    assert "Traceback" not in failed.stderr
