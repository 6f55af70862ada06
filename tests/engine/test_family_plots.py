"""The family chart's pictures, drawn from hand-made rows (no measuring)."""

import pytest

from mobilenets.core.errors import MobileNetsError
from mobilenets.engine.family_plots import plot_family_chart, plot_trained

PNG = b"\x89PNG\r\n\x1a\n"


def chart_of(rows):
    return {
        "threads": 2,
        "environment": "torch 2, onnxruntime 1, Some CPU (x86_64): AVX2",
        "rows": rows,
    }


ROWS = [
    {
        "name": "mobilenet_v1_1.0_224",
        "family": "v1",
        "top1": 70.9,
        "fp32_ms": 20.0,
        "int8_ms": 9.0,
        "front": ["fp32", "int8"],
    },
    {
        "name": "mobilenet_v2_1.0_224",
        "family": "v2",
        "top1": 71.8,
        "fp32_ms": 15.0,
        "int8_ms": 12.0,
        "front": ["fp32"],
    },
    {
        "name": "mobilenet_v3_small_0.5_224",
        "family": "v3",
        "top1": None,
        "fp32_ms": 3.0,
        "int8_ms": 2.0,
        "front": [],
    },
]


def test_the_cpu_chart_is_written_as_a_png(tmp_path):
    path = plot_family_chart(chart_of(ROWS), tmp_path / "family.png")
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["family.png"]  # atomic: no temporary left


def test_the_cpu_chart_needs_a_published_point_and_a_writable_path(tmp_path):
    with pytest.raises(MobileNetsError, match="no variant in this chart has a published top-1"):
        plot_family_chart(chart_of(ROWS[2:]), tmp_path / "family.png")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(MobileNetsError, match=r"^cannot write plot '.*a-file/family\.png'"):
        plot_family_chart(chart_of(ROWS), tmp_path / "a-file" / "family.png")


def test_the_trained_chart_has_three_panels(tmp_path):
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
        },
        {
            "name": "mobilenet_v3_small_1.0_28_small",
            "family": "v3",
            "params": 1.5e6,
            "macs": 2e6,
            "metric": "top-1",
            "fp32_ms": 2.0,
            "int8_ms": None,
            "fp32_accuracy": 0.86,
            "int8_accuracy": None,
        },
    ]
    path = plot_trained(rows, tmp_path / "trained.svg")
    assert path.read_bytes().startswith(b"<?xml") and path.stat().st_size > 10_000
    with pytest.raises(MobileNetsError, match="no trained model to plot"):
        plot_trained([], tmp_path / "empty.png")
