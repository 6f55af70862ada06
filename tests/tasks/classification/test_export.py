"""The classifier's export adapter: a registered name or checkpoint written through the deploy
pipeline, by the path's suffix, with the one report type."""

import pytest

from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy.onnx_export import read_onnx_metadata
from mobilenets.deploy.pipeline import ExportReport
from mobilenets.tasks.classification.export import export


def test_a_registered_name_to_onnx(tmp_path):
    path = tmp_path / "v1.onnx"
    report = export("mobilenet_v1_0.25_128", path, resolution=32, dynamic_batch=True)
    assert isinstance(report, ExportReport)
    assert (report.path, report.format, report.model_name) == (path, "onnx", "mobilenet_v1_0.25_32")
    assert report.source == "random weights (no published weights asked for)"
    assert report.input_shape == ("batch", 3, 32, 32) and report.output_names == ("logits",)
    assert set(report.checks) == {(1, 3, 32, 32), (3, 3, 32, 32)}
    assert report.max_abs_diff == max(report.checks.values()) <= 1e-4
    assert report.runtime.startswith("onnxruntime ") and report.opset == 18
    assert read_onnx_metadata(path)["source"] == "random initialisation"


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("m.tflite", {}, r"must be a \.onnx or \.pte file, got '.*m\.tflite'"),
        ("m.pte", {"opset": 18}, "opset= applies to an ONNX file only"),
        ("m.pte", {"dynamic_batch": True}, "dynamic_batch= applies to an ONNX file only"),
        ("m.onnx", {"opset": 9}, "opset must be an integer from 18 to 23"),
    ],
)
def test_options_are_checked_before_anything_is_loaded(tmp_path, name, options, message):
    with pytest.raises(MobileNetsError, match=message):
        export("no-such-model", tmp_path / name, **options)
    assert list(tmp_path.iterdir()) == []
