"""The export pipeline is one pipeline: one place calls the ONNX exporter, one lowers to
ExecuTorch, every task's ``export`` returns the one report type, and the report reads a task's
own entries as attributes."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

import mobilenets
from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy import export as pipeline_export
from mobilenets.deploy.pipeline import Agreement, ExportReport, check_metadata, write_checked

SOURCE = Path(mobilenets.__file__).parent


def callers(*dotted: str) -> set[str]:
    """The source files (relative to the package, without .py) that call ``X.<dotted>(...)``:
    ``callers("onnx", "export")`` finds ``torch.onnx.export(...)``."""
    found = set()
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _ends_with(node.func, dotted):
                found.add(path.relative_to(SOURCE).with_suffix("").as_posix())
    return found


def _ends_with(node: ast.expr, dotted: tuple[str, ...]) -> bool:
    for name in reversed(dotted):
        if not isinstance(node, ast.Attribute) or node.attr != name:
            return False
        node = node.value
    return True


def test_one_onnx_writer():
    """torch.onnx.export is called by the ONNX writer's module alone (onnx_program)."""
    assert callers("onnx", "export") == {"deploy/onnx_export"}


def test_one_pte_writer():
    """The lowering to ExecuTorch is called by the .pte writer's module alone."""
    assert callers("to_edge_transform_and_lower") == {"deploy/executorch_export"}


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_every_task_exports_through_one_report_type(task):
    module = __import__(f"mobilenets.tasks.{task}.export", fromlist=["export"])
    hints = typing.get_type_hints(module.export, vars(module))
    assert hints["return"] is ExportReport


def test_each_format_has_one_writer():
    assert pipeline_export.file_format("m.onnx") == "onnx"
    assert pipeline_export.file_format(Path("m.pte")) == "pte"
    with pytest.raises(MobileNetsError, match=r"must be a \.onnx or \.pte file, got 'm\.tflite'"):
        pipeline_export.file_format("m.tflite")


def test_a_tasks_details_read_as_attributes():
    report = ExportReport(
        Path("m.onnx"),
        "onnx",
        "net",
        ("batch", 3, 8, 8),
        ("logits",),
        10,
        1e-6,
        2,
        "onnxruntime 1.2.3",
        opset=18,
        details={"num_boxes": 7},
    )
    assert (report.num_boxes, report.onnxruntime_version, report.output_name) == (
        7,
        "1.2.3",
        "logits",
    )
    assert not hasattr(report, "num_classes") and not hasattr(report, "executorch_version")
    with pytest.raises(AttributeError, match="ExportReport has no 'num_classes'"):
        print(report.num_classes)
    with pytest.raises(AttributeError, match="no 'executorch_version'"):  # an onnx file's
        print(report.executorch_version)


def test_metadata_is_strings_and_leaves_reserved_keys_alone():
    assert check_metadata({"a": "b"}, ("model_config",), "w") == {"a": "b"}
    with pytest.raises(MobileNetsError, match="strings to strings"):
        check_metadata({"a": 1}, (), "w")
    with pytest.raises(MobileNetsError, match=r"keys \['model_config'\] are written by w itself"):
        check_metadata({"model_config": "{}"}, ("model_config",), "w")


def test_a_failed_check_leaves_the_previous_file(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"previous")

    def refuse(written: Path) -> Agreement:
        assert written.read_bytes() == b"new" and written != path
        raise MobileNetsError("disagrees")

    with pytest.raises(MobileNetsError, match="disagrees"):
        write_checked(path, lambda temporary: Path(temporary).write_bytes(b"new"), refuse)
    assert path.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [path]
    agreement, size = write_checked(
        path, lambda temporary: Path(temporary).write_bytes(b"new"), lambda _: Agreement(0.5)
    )
    assert (agreement.max_abs_diff, size, path.read_bytes()) == (0.5, 3, b"new")
