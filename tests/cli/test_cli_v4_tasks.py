"""Detection and segmentation on a MobileNetV4 through the same commands as the other families: a
tiny ``detect train`` of SSDLite on V4 Conv-S, its ``detect eval``, ``predict`` and ``export``
(ONNX, checked against PyTorch by the export pipeline); a tiny ``segment train`` of DeepLabv3 on
the hybrid V4 (Mobile MQA) and its ``segment quantize`` to an int8 ONNX file; the hybrid at output
stride 8 is one line."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image
from task_runs import COMMON, DATA, own_data_dir, run, train

from mobilenets.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # small nets: threads contend
data_dir = pytest.fixture(scope="module", autouse=True)(own_data_dir)


def test_detect_train_eval_predict_and_export_ssdlite_on_v4_conv_small(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "run"
    size = ["--resolution", "64", "--alpha", "0.5"]
    saved = train(
        capsys, "detect", "ssdlite_mobilenet_v4_conv_small", size, out, "detection_config"
    )
    assert (saved["backbone"]["arch"], saved["resolution"]) == ("mobilenet_v4_conv_small", 64)
    run(capsys, "detect", "eval", out, "--data", DATA, "--json", tmp_path / "eval.json")
    assert math.isfinite(json.loads((tmp_path / "eval.json").read_text())["AP"])
    image = tmp_path / "image.png"
    Image.new("RGB", (80, 64), (120, 30, 200)).save(image)
    printed = run(capsys, "detect", "predict", out, image, "--out", tmp_path / "boxes.png")
    assert (tmp_path / "boxes.png").is_file(), printed
    path = tmp_path / "ssdlite.onnx"
    printed = run(capsys, "detect", "export", out, "--format", "onnx", "--out", path)
    assert path.is_file() and f"wrote {path}" in printed
    assert "onnxruntime" in printed and "vs PyTorch" in printed


def test_segment_train_and_int8_onnx_of_deeplabv3_on_the_hybrid_v4(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "run"
    size = ["--crop", "64", "--alpha", "0.25"]
    model = "deeplabv3_mobilenet_v4_hybrid_medium"
    saved = train(capsys, "segment", model, size, out, "segmentation_config")
    assert (saved["backbone"]["arch"], saved["output_stride"]) == ("mobilenet_v4_hybrid_medium", 16)
    path = tmp_path / "deeplab_int8.onnx"
    printed = run(
        capsys, "segment", "quantize", out, "--format", "onnx", "--out", path, "--data", DATA
    )
    assert path.is_file() and "int8" in printed


def test_a_hybrid_segmenter_at_output_stride_8_is_one_line(capsys, tmp_path):
    argv = ["segment", "train", "--model", "deeplabv3_mobilenet_v4_hybrid_medium"]
    argv += ["--output-stride", "8", *COMMON, "--crop", "64", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        "mobilenets segment: error: mobilenet_v4_hybrid_medium at --output-stride 8: "
    )
    assert "allowed output strides for mobilenet_v4_hybrid_medium: 16, or None (32)" in err
    assert not (tmp_path / "run").exists()
