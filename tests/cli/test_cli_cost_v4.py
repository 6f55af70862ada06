"""`mobilenets cost` for MobileNetV4: `cost --table v4` prints paper Table 6 beside our exact
counts (params equal timm's, MACs with Mobile MQA's attention), and `cost NAME` lists the
attention layers of a hybrid with their MACs and activation memory."""

import json
import re

import pytest
from test_cli import run_usage_error
from test_cli_cost_segmentation import run_cli, totals  # main's code and output; the totals line

from mobilenets import cost

# Table 6 as published (params M, MACs G) and ours: timm's params, our MACs at the native size
TABLE6 = [
    ("mobilenet_v4_conv_small_1.0_224", "3.8", "0.2", 3_774_024, 186_005_568, 0),
    ("mobilenet_v4_conv_medium_1.0_256", "9.2", "1.0", 9_715_512, 1_080_244_224, 0),
    ("mobilenet_v4_hybrid_medium_1.0_256", "10.5", "1.2", 11_074_648, 1_271_183_360, 41_943_040),
    ("mobilenet_v4_conv_large_1.0_384", "31.0", "5.9", 32_590_864, 6_376_220_672, 0),
    ("mobilenet_v4_hybrid_large_1.0_384", "35.9", "7.2", 37_764_624, 7_711_877_120, 339_738_624),
]


def test_table_v4_prints_table6_beside_ours(capsys):
    code, out, err = run_cli(capsys, "cost", "--table", "v4")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    rows = lines[start : start + len(TABLE6)]
    for line, (model, params_m, macs_g, params, macs, attention) in zip(rows, TABLE6, strict=True):
        cells = re.split(r"\s{2,}", line.strip())
        assert cells[:3] == [model, params_m, f"{params / 1e6:.3f}"]
        assert cells[4:6] == [macs_g, f"{macs / 1e9:.3f}"]
        assert cells[7] == f"{attention / 1e9:.3f}"
        assert len(cells) == 9 and cells[8]  # every row says why the figures differ
    assert "params: not what the paper's code builds (ours equal timm's)" in rows[1]
    assert "1.23G without the attention matmuls rounds to 1.2G" in rows[2]
    assert "*: the paper's figure as quoted, Table 6 not re-read here." in out


def test_table_v4_json(capsys):
    code, out, _ = run_cli(capsys, "cost", "--table", "v4", "--json")
    records = json.loads(out)
    assert code == 0
    assert [(r["config"], r["params"], r["macs"], r["attention_macs"]) for r in records] == [
        (model, params, macs, attention) for model, _, _, params, macs, attention in TABLE6
    ]
    assert records[0]["source"] == "Qin et al. 2024, Table 6"
    assert records[1]["published"]["params_m"] == 9.2
    assert records[1]["params_error"] == pytest.approx(9_715_512 / 9.2e6 - 1)


def test_a_hybrid_lists_its_attention_layers(capsys):
    name = "mobilenet_v4_hybrid_medium_1.0_256"
    code, out, err = run_cli(capsys, "cost", name)
    assert (code, err) == (0, "")
    report = cost(name)
    assert totals(out) == (report.params, report.macs) == (11_074_648, 1_271_183_360)
    attention = [line.split() for line in out.splitlines() if line.split()[1:2] == ["attention"]]
    assert len(attention) == 8  # one per Mobile MQA block
    assert attention[0][:5] == ["blocks.7.attention", "attention", "256x16x16", "256x16x16", "0"]
    assert attention[0][5:] == ["8,388,608", "131.1"]  # q.k + attn.v MACs; activation KB
    for kind in ("norm", "scale"):
        assert any(line.split()[1:2] == [kind] for line in out.splitlines())


def test_a_hybrid_as_json_has_attention_rows(capsys):
    code, out, _ = run_cli(capsys, "cost", "mobilenet_v4_hybrid_large_1.0_384", "--json")
    data = json.loads(out)
    attention = [layer for layer in data["layers"] if layer["kind"] == "attention"]
    assert code == 0 and attention
    assert sum(layer["macs"] for layer in attention) == 339_738_624
    assert all(layer["params"] == 0 and layer["activation_bytes"] > 0 for layer in attention)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--table", "v4", "--alpha", "0.5"],
            "--table v4 prints V4 Table 6 as published; it takes no --alpha (--json only)",
        ),
        (
            ["mobilenet_v4_conv_small", "--table", "v4"],
            "--table v4 prints V4 Table 6 as published; it takes no NAME",
        ),
    ],
)
def test_table_v4_errors_are_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, "cost", *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(f"mobilenets cost: error: {message}")


def test_an_unknown_table_is_a_usage_error(capsys):
    code, _, err = run_usage_error(capsys, "cost", "--table", "v5")
    assert code == 2
    assert err.count("\n") == 1 and "invalid choice: 'v5' (choose from 'v3', 'v4')" in err
