"""int8 detectors and the ExecuTorch detector: an int8 ONNX file whose every conv reads int8
weights while its decoding (and NMS) stays float and equals the float end on its own network's
outputs; an fp32 .pte within 1e-4 of PyTorch; an int8 .pte within INT8_TOLERANCE_STEPS steps of
the head outputs of its quantized reference; the COCO AP of the fp32 model and of the file; user
errors as one line; no file left by a failed check. ``head_steps`` itself is checked on moves of
known size.

The detector is SSDLite 0.35 at 64 px with random weights and BN statistics, its class heads
tuned (as in tests/tasks/detection/test_export.py) so that tens of detections pass the
score threshold; the data are 20 training and 4 validation synthetic-shapes images. Its AP is
about 0 and is not asserted beyond being a finite fraction: these tests hold the mechanics, the
demo checkpoint's measured drop is in docs/detection.md. Lowering to ExecuTorch takes tens of
seconds, so the module lowers twice (fp32 and int8), and the checks that refuse a program reuse
those programs. The programs are of the same detector on V1 0.25 (63 convs to V2 0.35's 88):
XNNPACK's lowering takes time that grows with the graph's size, and the .pte path treats every
backbone alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from random_weights import background_leaning_detector

from mobilenets.cli import detect as detect_cli
from mobilenets.cli import main
from mobilenets.core.boxes import decode, postprocess
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import save_weights
from mobilenets.data.detection import (
    collate_detections,
    detection_preprocessing,
    load_detection_data,
)
from mobilenets.data.detection_transforms import eval_transform
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import quantize as onnx_int8
from mobilenets.deploy.quantize import conv_weight_sources
from mobilenets.engine.checkpoint import save_checkpoint
from mobilenets.engine.device import cpu_info
from mobilenets.tasks.detection import export as detection_export
from mobilenets.tasks.detection import quantize as detection_int8
from mobilenets.tasks.detection.graphs import Decoding, compare_detections, head_steps
from mobilenets.tasks.detection.inference import (
    class_scores,
    load_detection_checkpoint,
    score_logits,
)
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.segmenters import create_segmenter

pytestmark = pytest.mark.usefixtures("one_thread", "data_dir")

DATA = "synthetic-shapes:20"  # 20 training and 4 validation images
RESOLUTION = 64
CALIBRATION = 8
SIZES = [(96, 128), (128, 128), (64, 80)]  # (height, width) of the images detections scale to
PTE_MODEL = "ssdlite_mobilenet_v1_0.25_64"  # the .pte programs' detector
PTE_CONVS = 63  # V1's 27, the extra layers' 12 and the heads' 24
PTE_BN_FOLDED = 51  # all but the heads' 12 1x1 convs, which have a bias
needs_executorch = pytest.mark.skipif(
    mobile.executorch_version() is None,
    reason="executorch is not installed (pip install 'mobilenets[mobile]')",
)
AP_LINE = re.compile(
    r"fp32 AP (\d\.\d{3}) AP50 (\d\.\d{3}), int8 AP (\d\.\d{3}) AP50 (\d\.\d{3}) \(AP50 "
    r"[-+]\d+\.\d points, AP [-+]\d+\.\d\) on 4 validation images"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic data is generated into $MOBILENETS_DATA: a folder of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_DATA", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def checkpoint_file(data_dir, tmp_path_factory) -> Path:
    """A detector checkpoint for the synthetic shapes' classes: random weights and BN
    statistics, the heads' weights scaled down and the class bias favouring the background."""
    data = load_detection_data(DATA, splits=("val",))
    model = background_leaning_detector(len(data.class_names), RESOLUTION)
    path = tmp_path_factory.mktemp("checkpoint") / "best.safetensors"
    save_checkpoint(
        model,
        path,
        data.class_names,
        detection_preprocessing(RESOLUTION, None),
        category_ids=list(data.category_ids),
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(checkpoint_file):
    return load_detection_checkpoint(checkpoint_file)


@pytest.fixture(scope="module")
def pte_checkpoint_file(data_dir, tmp_path_factory) -> Path:
    """As ``checkpoint_file``, on V1 0.25: the .pte programs' detector."""
    data = load_detection_data(DATA, splits=("val",))
    model = background_leaning_detector(
        len(data.class_names), RESOLUTION, backbone="mobilenet_v1", alpha=0.25
    )
    path = tmp_path_factory.mktemp("pte-checkpoint") / "best.safetensors"
    save_checkpoint(
        model,
        path,
        data.class_names,
        detection_preprocessing(RESOLUTION, None),
        category_ids=list(data.category_ids),
    )
    return path


@pytest.fixture(scope="module")
def pte_checkpoint(pte_checkpoint_file):
    return load_detection_checkpoint(pte_checkpoint_file)


def val_images(checkpoint, count: int = 2) -> torch.Tensor:
    dataset = load_detection_data(DATA, splits=("val",)).val
    dataset.transform = eval_transform(checkpoint.preprocessing)
    images, _ = collate_detections([dataset[i] for i in range(count)])
    return images


def calibration(checkpoint, batch: int = 1) -> list[torch.Tensor]:
    dataset = load_detection_data(DATA, splits=("train",)).train
    dataset.transform = eval_transform(checkpoint.preprocessing)
    images = torch.stack([dataset[(i, 0)][0] for i in range(CALIBRATION)])
    return list(images.split(batch))


def run_cli(capsys, *argv):
    code = main(["detect", *(str(arg) for arg in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def run_captured(*argv) -> tuple[int, str]:
    """A command run outside a test's own capture (by a module's fixture): status and output."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([str(arg) for arg in argv])
    return code, printed.getvalue()


def head_outputs(path: Path, images: torch.Tensor) -> list[np.ndarray]:
    """``cls_logits`` and ``box_regression`` inside a joined int8 file: its network's outputs."""
    network = onnx.utils.Extractor(onnx.load(str(path))).extract_model(
        ["input"], list(detection_int8.HEAD_NAMES)
    )
    session = onnxruntime.InferenceSession(
        network.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"input": images.numpy()})


def as_outputs(found: list[dict], sizes) -> list[np.ndarray]:
    """Detections in pixels (as the evaluation reads them from a file) as an ``nms=True`` file's
    outputs, normalized, for compare_detections."""
    rows = max(len(image["scores"]) for image in found)
    boxes, scores = np.zeros((len(found), rows, 4)), np.zeros((len(found), rows))
    classes, count = np.zeros((len(found), rows), np.int64), np.zeros(len(found), np.int64)
    for index, (image, (height, width)) in enumerate(zip(found, sizes, strict=True)):
        kept = count[index] = len(image["scores"])
        boxes[index, :kept] = image["boxes"].numpy() / np.array([width, height, width, height])
        scores[index, :kept] = image["scores"].numpy()
        classes[index, :kept] = image["labels"].numpy()
    return [boxes, scores, classes, count]


def tail_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.name.startswith(detection_int8.TAIL_PREFIX)]


def parse_ap(line: str) -> tuple[float, ...]:
    match = AP_LINE.fullmatch(line)
    assert match, line
    values = tuple(float(value) for value in match.groups())
    assert all(0 <= value <= 1 for value in values)
    return values


# --- head_steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["softmax", "focal"])
def test_head_steps_finds_how_far_the_head_outputs_moved(loss):
    """Decoded outputs of head outputs moved by up to 5 steps each are found within 5 steps and
    more than 2.5 (the range allows every other output to move too); moved by 120, beyond 48."""
    anchors = create_detector(
        "ssdlite_mobilenet_v2", num_classes=5, alpha=0.35, resolution=RESOLUTION
    ).anchors()
    generator = torch.Generator().manual_seed(0)
    heads = (
        3 * torch.randn(1, len(anchors), 5, generator=generator),
        torch.randn(1, len(anchors), 4, generator=generator),
    )
    scales = (0.05, 0.02)

    def moved(steps: float):
        cls_logits, box_regression = (
            head + steps * scale * (2 * torch.rand(head.shape, generator=generator) - 1)
            for head, scale in zip(heads, scales, strict=True)
        )
        return Decoding(anchors, loss)(cls_logits, box_regression)

    assert head_steps(moved(0), heads, anchors, loss, scales, limit=48) < 0.01
    found = head_steps(moved(5), heads, anchors, loss, scales, limit=48)
    assert 2.5 < found <= 5.001, found
    assert head_steps(moved(120), heads, anchors, loss, scales, limit=48) == math.inf


# --- int8 ONNX ----------------------------------------------------------------------------------


def test_int8_onnx_from_the_command_line(checkpoint_file, checkpoint, tmp_path, capsys):
    path = tmp_path / "int8.onnx"
    code, out, err = run_cli(
        capsys,
        "export",
        checkpoint_file,
        "--out",
        path,
        "--int8",
        "--data",
        DATA,
        "--calibration-images",
        CALIBRATION,
    )
    assert code == 0, err
    wrote, int8, check, accuracy, arithmetic = out.splitlines()
    assert wrote.startswith(
        f"wrote {path} (ssdlite_mobilenet_v2_0.35_64; opset 18, input 1x3x64x64"
    )
    bound = onnx_int8.int16_pair_bound(onnx.load(str(path)))
    assert bound.fits_int16 and arithmetic == (
        f"int8 measured on {cpu_info().describe()}; 7-bit weights, largest pair of int8 products "
        f"{bound.value:,} (int16 holds 32,767): the same results with or without VNNI"
    )
    assert int8 == (
        f"int8: 88 of 88 convs with int8 weights (QDQ, u8 activations, minmax ranges from "
        f"{CALIBRATION} training images of {DATA}); decoding, scores float"
    )
    assert check.startswith("onnxruntime ") and "float end on its int8 network's outputs" in check
    parse_ap(accuracy)

    model = onnx.load(str(path))
    assert conv_weight_sources(model) == (88, ())  # the backbone, extras and heads' convs
    assert tail_nodes(model) and not any(
        node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in tail_nodes(model)
    )
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(metadata["classes"]) == list(checkpoint.classes)
    assert json.loads(metadata["detection_config"])["resolution"] == RESOLUTION
    assert "NMS not included" in metadata["outputs"]
    quantization = json.loads(metadata["quantization"])
    assert quantization["calibration_images"] == CALIBRATION
    assert quantization["float"] == "box decoding, scores"

    # the decoding in the file is the float decoding of its own network's outputs
    images = val_images(checkpoint, 3)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    heads = []
    for image in images:
        boxes, scores = session.run(["boxes", "scores"], {"input": image[None].numpy()})
        cls_logits, box_regression = head_outputs(path, image[None])
        want_boxes, want_scores = Decoding(checkpoint.model.anchors())(
            torch.from_numpy(cls_logits), torch.from_numpy(box_regression)
        )
        assert np.abs(boxes - want_boxes.numpy()).max() <= 1e-4
        assert np.abs(scores - want_scores.numpy()).max() <= 1e-4
        # and the network is quantized: near the fp32 model's outputs, not equal to them
        with torch.no_grad():
            fp32 = checkpoint.model(image[None])["cls_logits"].numpy()
        assert 1e-4 < np.abs(cls_logits - fp32).max() < 1.0
        heads.append((torch.from_numpy(cls_logits), torch.from_numpy(box_regression)))

    # what the evaluation reads from the file (3 images through its batch of 1) is postprocess
    cls_logits, box_regression = (torch.cat(parts) for parts in zip(*heads, strict=True))
    wanted = postprocess(
        score_logits(cls_logits, checkpoint.loss), box_regression, checkpoint.model.anchors()
    )
    assert all(len(found["scores"]) >= 5 for found in wanted)  # detections to compare
    found = detection_int8.ExportedDetector(path)(images, SIZES)
    assert compare_detections(as_outputs(found, SIZES), wanted) <= 1e-4


def test_int8_onnx_with_nms_inside_keeps_nms_float(checkpoint, tmp_path):
    path = tmp_path / "int8-nms.onnx"
    report = detection_int8.quantize_detector_onnx(
        checkpoint, path, calibration(checkpoint, batch=4), nms=True, dynamic_batch=True
    )
    model = onnx.load(str(path))
    assert conv_weight_sources(model) == (88, ())
    producers = {output: node for node in model.graph.node for output in node.output}
    (nms,) = (node for node in model.graph.node if node.op_type == "NonMaxSuppression")
    assert nms.name.startswith(detection_int8.TAIL_PREFIX)
    boxes, scores = (producers[name] for name in nms.input[:2])  # then its constants
    assert boxes.op_type != "DequantizeLinear" and scores.op_type != "DequantizeLinear"
    assert not any(
        node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in tail_nodes(model)
    )
    assert report.input_shape == ("batch", 3, RESOLUTION, RESOLUTION)
    assert report.int8.calibration_images == CALIBRATION

    # the file's detections are postprocess's on its own int8 network's outputs
    images = val_images(checkpoint, 3)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(list(detection_export.NMS_OUTPUT_NAMES), {"input": images.numpy()})
    cls_logits, box_regression = (torch.from_numpy(value) for value in head_outputs(path, images))
    wanted = postprocess(
        score_logits(cls_logits, checkpoint.loss), box_regression, checkpoint.model.anchors()
    )
    assert all(len(found["scores"]) >= 5 for found in wanted)  # detections to compare
    assert compare_detections(ours, wanted) <= 1e-4
    found = detection_int8.ExportedDetector(path)(images, SIZES)  # what the evaluation reads
    assert compare_detections(as_outputs(found, SIZES), wanted) <= 1e-4


def test_a_failed_int8_onnx_check_leaves_no_file(checkpoint, tmp_path, monkeypatch):
    class Shifted(detection_int8.OnnxHeads):
        """Head outputs that are not the file's: the check must refuse the file."""

        def forward(self, images):
            out = super().forward(images)
            return {**out, "box_regression": out["box_regression"] + 0.5}

    monkeypatch.setattr(detection_int8, "OnnxHeads", Shifted)
    path = tmp_path / "out" / "int8.onnx"
    with pytest.raises(MobileNetsError, match="the ONNX model's boxes disagree with PyTorch"):
        detection_int8.quantize_detector_onnx(checkpoint, path, calibration(checkpoint))
    assert list(path.parent.iterdir()) == []


# --- ExecuTorch ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32_pte(pte_checkpoint_file, tmp_path_factory):
    """The fp32 program written by the command, its exit status and what it printed."""
    path = tmp_path_factory.mktemp("pte") / "detector.pte"
    return path, *run_captured("detect", "export", pte_checkpoint_file, "--out", path)


@pytest.fixture(scope="module")
def int8_pte(pte_checkpoint_file, tmp_path_factory):
    """The int8 program written by the command, its exit status and what it printed."""
    path = tmp_path_factory.mktemp("pte-int8") / "detector.int8.pte"
    return path, *run_captured(
        "detect",
        "export",
        pte_checkpoint_file,
        "--out",
        path,
        "--int8",
        "--data",
        DATA,
        "--calibration-images",
        CALIBRATION,
    )


@pytest.mark.slow
@needs_executorch
def test_fp32_pte_decodes_inside_and_matches_pytorch(fp32_pte, pte_checkpoint):
    checkpoint = pte_checkpoint
    path, code, out = fp32_pte
    assert code == 0, out
    wrote, check, nms = out.splitlines()
    assert wrote.startswith(f"wrote {path} ({PTE_MODEL}; ExecuTorch ")
    anchors = len(checkpoint.model.anchors())
    assert f"input 1x3x64x64, outputs boxes [1, {anchors}, 4] and scores [1, {anchors}, 5]" in wrote
    assert wrote.endswith(f"{PTE_BN_FOLDED} BN folded, 1 XNNPACK partition, ops outside it: none)")
    match = re.fullmatch(r"ExecuTorch \S+ vs PyTorch: max abs diff (\S+)", check)
    assert match and float(match.group(1)) <= 1e-4, check
    assert nms.startswith("NMS is left to the caller")
    metadata = mobile.read_pte_metadata(path)
    assert metadata["classes"] == list(checkpoint.classes)
    assert metadata["category_ids"] == list(checkpoint.category_ids)
    assert metadata["detection_config"]["resolution"] == RESOLUTION
    assert "NMS not included" in metadata["outputs"] and "quantization" not in metadata
    method = mobile.load_method(mobile.load_pte(path))
    model = checkpoint.model
    for image in val_images(checkpoint):
        boxes, scores = mobile.run_pte_outputs(method, image[None])
        with torch.no_grad():
            heads = model(image[None])
        want_boxes = decode(heads["box_regression"], model.anchors()).clamp(0, 1)
        assert (boxes - want_boxes).abs().max() <= 1e-4
        assert (scores - class_scores(heads["cls_logits"], "softmax")).abs().max() <= 1e-4


@pytest.mark.slow
@needs_executorch
def test_int8_pte_from_the_command_line(int8_pte, fp32_pte):
    path, code, out = int8_pte
    assert code == 0, out
    metadata = mobile.read_pte_metadata(path)
    quantization = metadata["quantization"]
    assert quantization["calibration_images"] == CALIBRATION
    assert quantization["decoding"] == "float" and quantization["flow"] == "pt2e"
    assert "NMS not included" in metadata["outputs"]
    assert path.stat().st_size < 0.5 * fp32_pte[0].stat().st_size  # int8 weights
    wrote, int8, check, accuracy, cpu = out.splitlines()
    assert cpu == f"int8 measured on {cpu_info().describe()}"
    assert wrote.startswith(f"wrote {path} ({PTE_MODEL}; ExecuTorch ")
    assert "1 XNNPACK partition, ops outside it: none" in wrote
    assert int8 == (
        f"int8: {PTE_CONVS} of {PTE_CONVS} convs with int8 weights, "
        f"{int8.split(', ')[1].split()[0]} activation quantize ops, calibrated on "
        f"{CALIBRATION} training images of {DATA}; decoding and scores float"
    )
    match = re.fullmatch(
        r"ExecuTorch \S+ int8 vs its PyTorch reference: within (\d+\.\d) quantization steps "
        r"of the head outputs \(allowed 48\); vs the fp32 model: max abs diff \S+",
        check,
    )
    assert match and float(match.group(1)) <= 48, check
    print(f"\nint8 .pte: {match.group(1)} steps of the head outputs from its reference")
    parse_ap(accuracy)


@pytest.mark.slow
@needs_executorch
def test_a_program_that_disagrees_leaves_no_file(
    pte_checkpoint, fp32_pte, int8_pte, tmp_path, monkeypatch
):
    """The fp32 check refuses the int8 program, the int8 check one beyond its steps (the fp32
    program, allowed 0 steps); neither leaves a file."""
    int8_program, fp32_program = int8_pte[0].read_bytes(), fp32_pte[0].read_bytes()
    lowered = iter([(int8_program, 1, ()), (fp32_program, 1, ())])
    monkeypatch.setattr(mobile, "lower_to_xnnpack", lambda *args: next(lowered))
    with pytest.raises(MobileNetsError, match="the ExecuTorch program's (boxes|scores) disagree"):
        detection_export.export(pte_checkpoint, tmp_path / "fp32.pte")
    monkeypatch.setattr(detection_export, "INT8_TOLERANCE_STEPS", 0)
    with pytest.raises(MobileNetsError, match="int8 ExecuTorch program disagrees with its"):
        detection_export.export(
            pte_checkpoint,
            tmp_path / "int8.pte",
            int8=True,
            calibration=calibration(pte_checkpoint, batch=4),
        )
    assert list(tmp_path.iterdir()) == []


# --- Errors -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("others")
    classifier = build_model(
        ModelConfig(
            arch="mobilenet_v2", alpha=0.35, resolution=32, num_classes=10, small_input=True
        )
    )
    segmenter = create_segmenter(alpha=0.35, resolution=64, num_classes=3)
    return {
        "classifier": save_weights(classifier, folder / "classifier.safetensors"),
        "segmenter": save_weights(segmenter, folder / "segmenter.safetensors"),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/x.onnx", "--int8"], "--int8 needs --data SPEC, the checkpoint's dataset"),
        (
            ["--out", "{tmp}/x.pte", "--nms"],
            "--nms applies to --format onnx only: a .pte program leaves NMS to its caller",
        ),
        (
            [
                "--out",
                "{tmp}/x.pte",
                "--format",
                "pte",
                "--int8",
                "--data",
                DATA,
                "--calibrate",
                "entropy",
            ],
            "--calibrate applies to --format onnx only, not to pte",
        ),
        (["--out", "{tmp}/x.onnx", "--data", DATA], "--data applies to --int8 only"),
        (["--out", "{tmp}/x.onnx", "--format", "pte"], "the output must be a .pte file"),
        (
            ["--out", "{tmp}/x.onnx", "--int8", "--data", DATA, "--calibration-images", "0"],
            "calibration images must be from 1 to 20 (the training split's size), got 0",
        ),
        (["--out", "{tmp}/x.onnx", "--int8", "--data", "synthetic:64"], "is not one of"),
    ],
)
def test_user_errors_are_one_line_and_write_nothing(
    checkpoint_file, tmp_path, capsys, args, message
):
    args = [arg.format(tmp=tmp_path) for arg in args]
    code, out, err = run_cli(capsys, "export", checkpoint_file, *args)
    assert code == 2 and message in err, err
    assert err.startswith("mobilenets detect: error: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_another_tasks_checkpoint_is_named(other_checkpoints, kind, tmp_path, capsys):
    path = other_checkpoints[kind]
    task = "classification" if kind == "classifier" else "segmentation"
    for extra in ([], ["--int8", "--data", DATA]):
        code, _, err = run_cli(capsys, "export", path, "--out", tmp_path / "x.onnx", *extra)
        assert code == 2 and err.count("\n") == 1
        assert f"{str(path)!r} is a {task} checkpoint, not a detector's" in err
    assert list(tmp_path.iterdir()) == []


def test_the_command_shows_the_librarys_defaults():
    assert detect_cli.CALIBRATION_IMAGES == detection_int8.DEFAULT_CALIBRATION_IMAGES
    assert detect_cli.CALIBRATE == tuple(onnx_int8.CALIBRATE_METHODS)
