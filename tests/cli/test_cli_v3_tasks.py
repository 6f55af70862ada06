"""Detection and segmentation on a MobileNetV3 through the same commands as V1 and V2: a tiny
``detect train`` of SSDLite-V3-Small and its ``detect eval``; a tiny ``segment train`` of
LR-ASPP-V3-Small and its ``segment export`` to ONNX (checked against PyTorch by the export
pipeline); ``cost`` beside the V3 paper's tables."""

from __future__ import annotations

import json
import math

import pytest
from task_runs import DATA, own_data_dir, run, train

pytestmark = pytest.mark.usefixtures("one_thread")  # small nets: threads contend
data_dir = pytest.fixture(scope="module", autouse=True)(own_data_dir)


def test_detect_train_and_eval_ssdlite_on_v3_small(capsys, tmp_path):
    out = tmp_path / "run"
    size = ["--resolution", "64"]
    saved = train(capsys, "detect", "ssdlite_mobilenet_v3_small", size, out, "detection_config")
    assert saved["backbone"]["arch"] == "mobilenet_v3_small" and saved["backbone"]["reduced_tail"]
    assert saved["resolution"] == 64
    run(capsys, "detect", "eval", out, "--data", DATA, "--json", tmp_path / "eval.json")
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert math.isfinite(scores["AP"])


def test_segment_train_and_onnx_export_of_lraspp_on_v3_small(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "run"
    size = ["--crop", "64"]
    saved = train(capsys, "segment", "lraspp_mobilenet_v3_small", size, out, "segmentation_config")
    assert (saved["head"], saved["head_channels"], saved["backbone"]["reduced_tail"]) == (
        "lraspp",
        128,
        True,
    )
    path = tmp_path / "lraspp.onnx"
    printed = run(
        capsys, "segment", "export", out, "--format", "onnx", "--out", path, "--resolution", "64"
    )
    assert path.is_file() and f"wrote {path}" in printed
    assert "onnxruntime" in printed and "vs PyTorch" in printed


def test_cost_sets_lraspp_beside_v3_table7_and_ssdlite_beside_table6(capsys):
    printed = run(capsys, "cost", "lraspp_mobilenet_v3_small")
    assert "Howard et al. 2019, Table 7, LR-ASPP, Cityscapes at 1024x2048): 0.47M params" in printed
    assert (
        "with 19 classes at 1024x2048: 515,614 params (506,414 without BN), 2.83B MACs" in printed
    )
    printed = run(capsys, "cost", "ssdlite_mobilenet_v3_large")
    assert "total: 3,248,255 params, 506,563,904 MACs" in printed
    assert "Howard et al. 2019, Table 6, SSDLite at 320x320 (COCO)): 3.22M params" in printed
