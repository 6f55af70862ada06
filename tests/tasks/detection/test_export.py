"""``detect export --nms``: the ONNX file's own NMS gives postprocess's detections (same classes
and scores, boxes within 1e-4, same order) on synthetic images; a dynamic batch, a focal-loss
model and an overflowing pre-NMS top-k do too; a failed check leaves no file; the settings'
errors name the value; the CLI flags show postprocess's defaults.

A detector with random weights and BN statistics (no training) gives boxes of every size and
scores that vary per anchor and class; the class heads' bias makes some of them pass the score
threshold. One export is shared by most tests: each takes seconds.
"""

import inspect
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from random_weights import background_leaning_detector

from mobilenets.cli import build_parser, main
from mobilenets.core.boxes import postprocess
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.data.detection import CocoDetection, collate_detections
from mobilenets.data.detection_transforms import eval_transform
from mobilenets.data.shapes import make_synthetic_coco
from mobilenets.deploy.onnx_export import read_onnx_metadata
from mobilenets.engine.checkpoint import save_checkpoint
from mobilenets.tasks.detection import export as detection_export
from mobilenets.tasks.detection.graphs import NMSSettings
from mobilenets.tasks.detection.inference import (
    DetectionCheckpoint,
    class_scores,
    load_detection_checkpoint,
    score_logits,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("background", "circle", "square", "triangle", "star")
RESOLUTION = 96
PREPROCESSING = Preprocessing(RESOLUTION, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def random_detector(loss: str = "softmax") -> DetectionCheckpoint:
    """SSDLite 0.35 at 96 px, random weights and BN statistics; the class heads give logits of
    about 1 and favour the background, so that tens of (anchor, class) pairs per image pass
    postprocess's 0.01 and NMS has overlapping boxes of one class to suppress."""
    model = background_leaning_detector(len(CLASSES), RESOLUTION)
    return DetectionCheckpoint(
        model.eval(), CLASSES, (0, 1, 2, 3, 4), PREPROCESSING, Path("random.safetensors"), loss=loss
    )


def synthetic_images(root, count: int = 4) -> torch.Tensor:
    splits = make_synthetic_coco(root, num_train=1, num_val=count, image_size=RESOLUTION)
    dataset = CocoDetection(*splits["val"], transform=eval_transform(PREPROCESSING))
    images, _ = collate_detections([dataset[i] for i in range(count)])
    return images


def run_file(path, images: torch.Tensor) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = list(detection_export.NMS_OUTPUT_NAMES)
    return [session.run(names, {"input": image[None].numpy()}) for image in images]


def expected(checkpoint: DetectionCheckpoint, images: torch.Tensor, **settings) -> list[dict]:
    model = checkpoint.model
    with torch.no_grad():
        out = model(images)
    return postprocess(
        score_logits(out["cls_logits"], checkpoint.loss),
        out["box_regression"],
        model.anchors(),
        **settings,
    )


def assert_same_detections(ours: list[np.ndarray], want: dict, max_detections: int = 100):
    """Exactly postprocess's detections in its order: classes equal, scores within float32
    folding error, boxes within 1e-4; rows past the count zeros."""
    boxes, scores, classes, count = (value[0] for value in ours)
    found = int(count)
    assert boxes.shape == (max_detections, 4) and scores.shape == classes.shape
    assert classes.dtype == np.int64 and found == len(want["labels"])
    np.testing.assert_array_equal(classes[:found], want["labels"].numpy())
    np.testing.assert_allclose(scores[:found], want["scores"].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(boxes[:found], want["boxes"].numpy(), rtol=0, atol=1e-4)
    assert not boxes[found:].any() and not scores[found:].any() and not classes[found:].any()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    checkpoint = random_detector()
    path = tmp_path_factory.mktemp("nms") / "detector.onnx"
    report = detection_export.export(checkpoint, path, nms=True)
    return checkpoint, path, report


def test_the_graph_does_postprocess_on_synthetic_images(exported, tmp_path):
    checkpoint, path, report = exported
    images = synthetic_images(tmp_path)
    wanted = expected(checkpoint, images)
    counts = [len(found["labels"]) for found in wanted]
    # the test means something: detections of several classes, NMS removed some candidates
    assert all(count >= 5 for count in counts), counts
    assert len(torch.cat([found["labels"] for found in wanted]).unique()) >= 2
    with torch.no_grad():
        out = checkpoint.model(images)
    candidates = torch.softmax(out["cls_logits"], -1)[..., 1:] > 0.01
    assert (candidates.flatten(1).sum(1) > torch.tensor(counts)).all()
    for ours, want in zip(run_file(path, images), wanted, strict=True):
        assert_same_detections(ours, want)
    assert report.nms == NMSSettings() and report.input_shape == (1, 3, RESOLUTION, RESOLUTION)
    assert report.max_abs_diff <= 1e-4


def test_the_graph_uses_onnx_non_max_suppression_and_records_its_settings(exported):
    _, path, _ = exported
    model = onnx.load(str(path))
    assert "NonMaxSuppression" in {node.op_type for node in model.graph.node}
    assert [output.name for output in model.graph.output] == ["boxes", "scores", "classes", "count"]
    metadata = read_onnx_metadata(path)
    assert metadata["nms"] == {
        "score_threshold": 0.01,
        "nms_iou": 0.6,
        "max_detections": 100,
        "pre_nms_top_k": 1000,
    }
    assert "NMS included" in metadata["outputs"] and metadata["classes"] == list(CLASSES)


@pytest.mark.slow
def test_dynamic_batch_focal_loss_and_an_overflowing_top_k(tmp_path):
    """Batch 3 in one run, the focal loss's scores, and pre_nms_top_k below the number of
    candidates, with a stricter IoU and fewer detections than found."""
    checkpoint = random_detector(loss="focal")
    settings = dict(score_threshold=0.02, nms_iou=0.45, max_detections=10, pre_nms_top_k=40)
    path = tmp_path / "detector.onnx"
    report = detection_export.export(checkpoint, path, nms=True, dynamic_batch=True, **settings)
    assert report.input_shape == ("batch", 3, RESOLUTION, RESOLUTION)
    images = torch.randn(3, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    wanted = expected(checkpoint, images, **settings)
    assert [len(found["labels"]) for found in wanted] == [10, 10, 10]
    with torch.no_grad():
        scores = class_scores(checkpoint.model(images)["cls_logits"], "focal")
    assert ((scores[..., 1:] > 0.02).flatten(1).sum(1) > 40).all()  # the top-k cuts
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(detection_export.NMS_OUTPUT_NAMES), {"input": images.numpy()})
    for image, want in enumerate(wanted):
        assert_same_detections([value[image : image + 1] for value in outputs], want, 10)


def test_a_failed_check_leaves_no_file(tmp_path, monkeypatch):
    def shifted(*args):
        found = postprocess_reference(*args)
        return [{**detections, "scores": detections["scores"] + 1e-3} for detections in found]

    postprocess_reference = detection_export.reference_detections
    monkeypatch.setattr(detection_export, "reference_detections", shifted)
    path = tmp_path / "detector.onnx"
    with pytest.raises(MobileNetsError, match="disagree with PyTorch's postprocess on image 0"):
        detection_export.export(random_detector(), path, nms=True, max_detections=5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(score_threshold=1.0), "score_threshold must be in [0, 1), got 1.0"),
        (dict(nms_iou=0.0), "nms_iou must be in (0, 1], got 0.0"),
        (dict(max_detections=0), "max_detections must be an integer >= 1, got 0"),
        (dict(pre_nms_top_k=2.5), "pre_nms_top_k must be an integer >= 1, got 2.5"),
    ],
)
def test_settings_errors_name_the_value(tmp_path, settings, message):
    with pytest.raises(MobileNetsError, match=re.escape(message)):
        detection_export.export(random_detector(), tmp_path / "x.onnx", nms=True, **settings)
    assert list(tmp_path.iterdir()) == []


def test_the_defaults_are_postprocess_defaults():
    ours = inspect.signature(detection_export.export).parameters
    theirs = inspect.signature(postprocess).parameters
    names = ("score_threshold", "nms_iou", "max_detections", "pre_nms_top_k")
    for name in names:
        assert ours[name].default == theirs[name].default == getattr(NMSSettings(), name)
    detect = build_parser()._subparsers._group_actions[0].choices["detect"]
    export = detect._subparsers._group_actions[0].choices["export"]
    flags = {action.dest: action for action in export._actions}
    for name in names:
        assert f"(default {theirs[name].default})" in flags[name].help


def test_nms_settings_without_nms_are_refused(tmp_path, capsys):
    assert (
        main(
            [
                "detect",
                "export",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "x.onnx"),
                "--max-detections",
                "5",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert "--max-detections applies with --nms" in error and error.count("\n") == 1


@pytest.mark.slow
def test_the_command_writes_the_nms_file(tmp_path, capsys):
    checkpoint = random_detector()
    weights = tmp_path / "best.safetensors"
    save_checkpoint(checkpoint.model, weights, CLASSES, PREPROCESSING, category_ids=[0, 1, 2, 3, 4])
    path = tmp_path / "detector.onnx"
    assert (
        main(
            [
                "detect",
                "export",
                str(weights),
                "--out",
                str(path),
                "--nms",
                "--max-detections",
                "20",
                "--score-threshold",
                "0.05",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "NMS in the graph" in printed and "classes [N, 20]" in printed
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(2))
    loaded = load_detection_checkpoint(weights)
    wanted = expected(loaded, images, score_threshold=0.05, max_detections=20)
    for ours, want in zip(run_file(path, images), wanted, strict=True):
        assert_same_detections(ours, want, 20)
