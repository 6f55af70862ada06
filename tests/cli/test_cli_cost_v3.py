"""`mobilenets cost` for MobileNetV3: the variant flags (--width-rule, --minimalistic,
--reduced-tail) reach the count, `cost --table v3` prints paper Table 3 and the TF-slim README's
rows beside ours, and a bad flag is one line."""

import json
import re

import pytest
from test_cli_cost_segmentation import run_cli, totals  # main's code and output; the totals line

from mobilenets import ModelConfig, cost
from mobilenets.cli import main
from mobilenets.core.published_v3 import v3_table

# V3 Table 3, then the TF-slim README's rows, as published: (model, MAdds M, params M)
PUBLISHED = [
    ("mobilenet_v3_large_1.0_224", "219", "5.4"),
    ("mobilenet_v3_large_0.75_224", "155", "4.0"),
    ("mobilenet_v3_small_1.0_224", "56", "2.5"),
    ("mobilenet_v3_small_0.75_224", "44", "2.0"),
    ("mobilenet_v3_large_1.0_224", "217", "5.4"),
    ("mobilenet_v3_large_0.75_224", "155", "4.0"),
    ("mobilenet_v3_large_minimalistic_1.0_224", "209", "3.9"),
    ("mobilenet_v3_small_1.0_224", "66", "2.9"),
    ("mobilenet_v3_small_0.75_224", "44", "2.4"),
    ("mobilenet_v3_small_minimalistic_1.0_224", "65", "2.0"),
]


@pytest.mark.parametrize(
    "argv, fields, expected",
    [
        ([], {}, (5_483_032, 216_589_760)),
        (
            ["--alpha", "0.75", "--width-rule", "torchvision"],
            {"alpha": 0.75, "width_rule": "torchvision"},
            (3_377_576, 140_033_816),
        ),
        (["--alpha", "0.75"], {"alpha": 0.75}, (3_993_528, 154_560_624)),
        (["--minimalistic"], {"minimalistic": True}, (3_924_288, 209_136_704)),
        (["--reduced-tail"], {"reduced_tail": True}, (2_569_352, 182_302_720)),
    ],
)
def test_v3_flags_reach_the_count(capsys, argv, fields, expected):
    code, out, err = run_cli(capsys, "cost", "mobilenet_v3_large", *argv)
    assert (code, err) == (0, "")
    config = ModelConfig("mobilenet_v3_large", **fields)
    assert out.startswith(f"{config.name}: alpha ")
    assert totals(out) == expected == (cost(config).params, cost(config).macs)


def test_v3_flags_with_json_and_small_input(capsys):
    argv = ["cost", "mobilenet_v3_small", "--minimalistic", "--resolution", "32", "--small-input"]
    code, out, _ = run_cli(capsys, *argv, "--json")
    data = json.loads(out)
    config = ModelConfig("mobilenet_v3_small", resolution=32, small_input=True, minimalistic=True)
    assert code == 0
    assert (data["name"], data["macs"]) == (config.name, cost(config).macs)
    assert not [layer for layer in data["layers"] if layer["kind"] == "squeeze_excite"]


def test_table_v3_prints_the_published_rows_beside_ours(capsys):
    code, out, err = run_cli(capsys, "cost", "--table", "v3")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    rows = lines[start : start + len(PUBLISHED)]
    for line, (model, macs_m, params_m), ours in zip(rows, PUBLISHED, v3_table(), strict=True):
        cells = re.split(r"\s{2,}", line.strip())
        assert cells[1:4] == [model, macs_m, f"{ours.macs / 1e6:.2f}"]
        assert cells[5:8] == [
            f"{(ours.macs + ours.elementwise) / 1e6:.2f}",
            params_m,
            f"{ours.params / 1e6:.3f}",
        ]
    assert rows[0].startswith("Howard et al. 2019, Table 3  mobilenet_v3_large_1.0_224")
    assert "216.59   -1.1%       218.70" in rows[0]  # 219M: ours with the SE and h-swish multiplies
    assert "No one convention gives every row: see docs/cost.md." in out


def test_table_v3_json(capsys):
    code, out, _ = run_cli(capsys, "cost", "--table", "v3", "--json")
    records = json.loads(out)
    assert code == 0
    assert [(r["config"], r["published"]["macs_m"]) for r in records] == [
        (model, int(macs)) for model, macs, _ in PUBLISHED
    ]
    assert records[0]["macs"] == 216_589_760
    assert records[0]["elementwise_multiplies"] == 2_108_672


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["mobilenet_v2", "--minimalistic"],
            "minimalistic applies to mobilenet_v3_large, mobilenet_v3_small only, got "
            "--minimalistic for mobilenet_v2",
        ),
        (
            ["mobilenet_v1_1.0_224", "--width-rule", "tf"],
            "width_rule applies to mobilenet_v3_large, mobilenet_v3_small only, got "
            "--width-rule 'tf' for mobilenet_v1",
        ),
        (
            ["ssdlite_mobilenet_v2", "--reduced-tail"],
            "--reduced-tail applies to a classifier name, not to 'ssdlite_mobilenet_v2'",
        ),
        (
            ["--table", "v3", "--minimalistic"],
            "--table v3 prints V3 Table 3 and TF-slim's V3 rows as published; it takes no "
            "--minimalistic (--json only)",
        ),
        (
            ["mobilenet_v3_large", "--table", "v3"],
            "--table v3 prints V3 Table 3 and TF-slim's V3 rows as published; it takes no NAME",
        ),
        (
            ["--table", "v3", "--alpha", "0.75"],
            "--table v3 prints V3 Table 3 and TF-slim's V3 rows as published; it takes no --alpha "
            "(--json only)",
        ),
        (
            ["--table7", "--table", "v3"],
            "--table7 prints the paper's six configurations as published; it takes no --table",
        ),
        (
            [],
            "give a model NAME, or --table7 for V2 Table 7, --table v3 for V3 Table 3 or "
            "--table v4 for V4 Table 6",
        ),
    ],
)
def test_errors_are_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, "cost", *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(f"mobilenets cost: error: {message}")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--width-rule", "keras"], "invalid choice: 'keras' (choose from 'tf', 'torchvision')"),
        (["--table", "v5"], "invalid choice: 'v5' (choose from 'v3', 'v4')"),
    ],
)
def test_bad_choices_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["cost", "mobilenet_v3_small", *argv])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and message in err
