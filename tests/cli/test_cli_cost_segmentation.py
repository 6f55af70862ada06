"""`mobilenets cost` for segmenters: the per-layer table of a Mobile DeepLabv3 with its output
stride, ASPP and resolution, its totals beside the V2 Table 7 row of the same configuration, and
`cost --table7`, the six rows side by side. The printed numbers are checked against the library's
(`zoo.factory.cost`, `core.segmentation_cost`), the paper's as published."""

import json
import re

import pytest

from mobilenets.cli import main
from mobilenets.core.segmentation_cost import inference_macs, table7
from mobilenets.zoo.factory import cost
from mobilenets.zoo.registry import resolve_segmentation_config

# V2 Table 7 as published: (arch, output stride, ASPP, MF, mIoU, params M, MAdds B)
PUBLISHED = [
    ("mobilenet_v1", 16, "yes", "no", "75.29", "11.15", "14.25"),
    ("mobilenet_v1", 8, "yes", "yes", "78.56", "11.15", "941.9"),
    ("mobilenet_v2", 16, "yes", "no", "75.70", "4.52", "5.8"),
    ("mobilenet_v2", 8, "yes", "yes", "78.42", "4.52", "387"),
    ("mobilenet_v2", 16, "no", "no", "75.32", "2.11", "2.75"),
    ("mobilenet_v2", 8, "no", "yes", "77.33", "2.11", "152.6"),
]


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def totals(out: str) -> tuple[int, int]:
    match = re.search(r"^total: ([\d,]+) params, ([\d,]+) MACs", out, re.M)
    return int(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))


def test_a_segmenter_prints_its_layers_and_the_papers_row(capsys):
    code, out, err = run_cli(capsys, "cost", "deeplabv3_mobilenet_v2")
    assert code == 0, err
    report = cost("deeplabv3_mobilenet_v2")
    assert out.startswith(
        "deeplabv3_mobilenet_v2_1.0_513_os16: alpha 1.0, 513x513 input, 21 classes"
    )
    layers = [
        line.split()[0] for line in out.splitlines() if line.startswith(("backbone.", "head."))
    ]
    assert layers[-2:] == ["head.aspp0.conv", "head.project.conv"]  # no atrous branches
    assert re.search(r"^classifier +pointwise +256x33x33 +21x33x33 ", out, re.M)
    assert totals(out) == (report.params, report.macs)
    paper = (
        "\npaper (Sandler et al. 2018, Table 7, PASCAL VOC 2012 val at 513x513, OS 16): 2.11M "
        "params, 2.75B MAdds, 75.32% mIoU\n"
    )
    assert paper in out
    config = resolve_segmentation_config("deeplabv3_mobilenet_v2")
    tf = inference_macs(config, space_to_batch=True)
    assert (
        f"ours / paper: params {report.params / 2.11e6:.3f}, MACs {report.macs / 2.75e9:.3f}, MACs "
        f"with dilated convs counted as TF's space_to_batch runs them {tf / 2.75e9:.3f} "
        f"({tf / 1e9:.2f}B)\n"
    ) in out
    assert "different networks" not in out


def test_output_stride_aspp_and_resolution_reach_the_cost_and_the_multiscale_row(capsys):
    argv = [
        "cost",
        "deeplabv3_mobilenet_v2",
        "--output-stride",
        "8",
        "--aspp",
        "--resolution",
        "513",
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    report = cost("deeplabv3_mobilenet_v2", output_stride=8, aspp=True, resolution=513)
    assert report.name == "deeplabv3_mobilenet_v2_1.0_513_os8_aspp"
    assert out.startswith(f"{report.name}: ") and totals(out) == (report.params, report.macs)
    assert re.search(r"^head\.aspp3\.conv +conv +320x65x65 +256x65x65 ", out, re.M)
    assert "OS 8, MF): 4.52M params, 387B MAdds, 78.42% mIoU\n" in out
    config = resolve_segmentation_config("deeplabv3_mobilenet_v2", output_stride=8, aspp=True)
    multiscale = inference_macs(config, multiscale=True)
    tf = inference_macs(config, multiscale=True, space_to_batch=True)
    assert f"ours summed over the same: {multiscale / 1e9:.2f}B\n" in out
    assert (
        f"ours / paper: params {report.params / 4.52e6:.3f}, MACs {multiscale / 387e9:.3f}, MACs "
        f"with dilated convs counted as TF's space_to_batch runs them {tf / 387e9:.3f}"
    ) in out


def test_v1_has_aspp_and_a_configuration_the_paper_lacks_says_so(capsys):
    code, out, _ = run_cli(capsys, "cost", "deeplabv3_mobilenet_v1")
    assert code == 0 and "OS 16): 11.15M params, 14.25B MAdds, 75.29% mIoU\n" in out
    report = cost("deeplabv3_mobilenet_v1")
    assert totals(out) == (report.params, report.macs)
    code, out, _ = run_cli(capsys, "cost", "deeplabv3_mobilenet_v1", "--no-aspp")
    assert code == 0
    assert out.rstrip().endswith(
        "V2 Table 7 has no row for mobilenet_v1 at output stride 16 without ASPP"
    )


def test_another_width_is_compared_but_named_a_different_network(capsys):
    code, out, _ = run_cli(
        capsys,
        "cost",
        "deeplabv3_mobilenet_v2",
        "--alpha",
        "0.35",
        "--resolution",
        "129",
        "--num-classes",
        "5",
    )
    report = cost("deeplabv3_mobilenet_v2", alpha=0.35, resolution=129, num_classes=5)
    assert code == 0 and totals(out) == (report.params, report.macs)
    assert (
        "(the paper's row is deeplabv3_mobilenet_v2_1.0_513_os16 with 21 classes, this is "
        "deeplabv3_mobilenet_v2_0.35_129_os16 with 5: different networks)"
    ) in out


def test_a_classifier_takes_an_output_stride_too(capsys):
    code, out, _ = run_cli(capsys, "cost", "mobilenet_v2_1.0_224", "--output-stride", "16")
    report = cost("mobilenet_v2_1.0_224", output_stride=16)
    assert code == 0 and out.startswith("mobilenet_v2_1.0_224_os16: ")
    assert totals(out) == (report.params, report.macs)
    assert report.macs > cost("mobilenet_v2_1.0_224").macs  # the last stage runs at 14x14
    assert "Table 7" not in out


def test_table7_prints_the_papers_rows_beside_ours(capsys):
    code, out, err = run_cli(capsys, "cost", "--table7")
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("backbone"))
    rows = [line.split() for line in lines[header + 2 : header + 8]]
    assert len(rows) == 6
    for cells, published, ours in zip(rows, PUBLISHED, table7(), strict=True):
        arch, stride, aspp, mf, miou, params_m, madds_b = published
        # the paper's figures, as published
        assert cells[:6] == [arch, str(stride), aspp, mf, miou, params_m] and cells[8] == madds_b
        assert cells[6:8] == [f"{ours.params / 1e6:.3f}", f"{100 * ours.params_error:+.2f}%"]
        assert cells[9:] == [
            f"{ours.macs / 1e9:.2f}",
            f"{100 * ours.macs_error:+.1f}%",
            f"{ours.space_to_batch_macs / 1e9:.2f}",
            f"{100 * ours.space_to_batch_error:+.1f}%",
        ]
        # the relative differences are against the published figures
        assert ours.params_error == pytest.approx(ours.params / (float(params_m) * 1e6) - 1)
        assert ours.macs_error == pytest.approx(ours.macs / (float(madds_b) * 1e9) - 1)
    assert "MF: multi-scale and mirrored inputs, 12 inferences" in out


def test_table7_as_json(capsys):
    code, out, _ = run_cli(capsys, "cost", "--table7", "--json")
    records = json.loads(out)
    assert code == 0 and len(records) == 6
    for record, ours, published in zip(records, table7(), PUBLISHED, strict=True):
        assert (record["paper"]["params_m"], record["paper"]["madds_b"]) == (
            float(published[5]),
            float(published[6]),
        )
        assert (record["params"], record["macs"], record["space_to_batch_macs"]) == (
            ours.params,
            ours.macs,
            ours.space_to_batch_macs,
        )
        assert record["config"] == ours.config.name


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give a model NAME, or --table7"),
        (
            ["mobilenet_v2", "--aspp"],
            "--aspp applies to a segmenter (deeplabv3_mobilenet_v1, "
            "deeplabv3_mobilenet_v2), not to 'mobilenet_v2'",
        ),
        (
            ["--table7", "deeplabv3_mobilenet_v2", "--alpha", "0.5"],
            "--table7 prints the paper's six configurations as "
            "published; it takes no NAME, --alpha",
        ),
        (["deeplabv3_mobilenet_v2", "--output-stride", "32"], "output_stride must be 8 or 16"),
        (["deeplabv3_mobilenet_v2", "--rho", "0.5"], "do not apply to a segmenter"),
        (["ssdlite_mobilenet_v2", "--output-stride", "8"], "do not apply to a detector"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, "cost", *argv)
    assert code == 2 and out == ""
    assert err.startswith("mobilenets cost: error: ") and message in err, err
    assert err.count("\n") == 1


def test_zoo_lists_classifiers_only_as_for_detectors(capsys):
    code, out, _ = run_cli(capsys, "zoo", "--json")
    names = [row["name"] for row in json.loads(out)]
    assert code == 0 and names and all(name.startswith("mobilenet_v") for name in names)
