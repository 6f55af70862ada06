"""Detection training: the loss falls, a run's outputs, exact resume, NaN stop, data specs, the
``mobilenets detect`` commands end to end, and the ONNX export against PyTorch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_files import interrupted_and_resumed, read_metrics
from safetensors.torch import load_file

from mobilenets.cli import main
from mobilenets.core.boxes import assign_batch, decode
from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.detection import (
    collate_detections,
    detection_preprocessing,
    load_detection_data,
)
from mobilenets.data.detection_transforms import eval_transform
from mobilenets.engine import run
from mobilenets.engine.checkpoint import STATE_FILE
from mobilenets.engine.device import unwrap
from mobilenets.engine.loop import EpochState, Trainer, TrainingDiverged, train_epoch
from mobilenets.engine.optim import make_optimizer
from mobilenets.tasks.classification.train import fit as fit_classifier
from mobilenets.tasks.detection.evaluate import evaluate
from mobilenets.tasks.detection.inference import load_detection_checkpoint
from mobilenets.tasks.detection.loss import MultiBoxLoss
from mobilenets.tasks.detection.train import (
    AssignTargets,
    TrainConfig,
    detection_loss,
    fit,
)
from mobilenets.zoo.registry import resolve_detection_config

pytestmark = pytest.mark.usefixtures("one_thread", "data_dir")  # small nets: threads contend

# A tiny run: 0.35-wide SSDLite at 64 px on 8 training and 2 validation synthetic images.
DATA = "synthetic-shapes:10"
TINY = dict(
    data=DATA,
    alpha=0.35,
    resolution=64,
    epochs=2,
    batch_size=4,
    lr=3e-3,
    warmup_epochs=0.0,
    augment="flip",
)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic data is generated into $MOBILENETS_DATA: a folder of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_DATA", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(**TINY)
    return out, fit(config, out, progress=False)


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


# --- Training -----------------------------------------------------------------------------------


def test_a_few_steps_of_training_lower_the_loss():
    config = tiny_config()
    data = load_detection_data(DATA)
    preprocessing = detection_preprocessing(64, None)
    data.train.transform = eval_transform(preprocessing)
    torch.manual_seed(0)
    model = SSDLite(
        resolve_detection_config(
            config.model,
            alpha=config.alpha,
            resolution=config.resolution,
            num_classes=len(data.class_names),
        )
    )
    batch = AssignTargets(model.anchors())([data.train[i] for i in range(4)])
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer = Trainer(optimizer, scheduler, scaler, config, torch.device("cpu"))
    losses = []
    for _ in range(12):  # the same batch again and again: the loss must fall
        state = EpochState()
        loss_fn = detection_loss(MultiBoxLoss())
        train_epoch(model, [batch], trainer, state, loss_fn=loss_fn, progress=False)
        losses.append(state.loss_sum / state.seen)
    assert trainer.step == 12
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_loader_workers_match_boxes_to_anchors_as_the_main_process_would():
    config = tiny_config()
    data = load_detection_data(DATA)
    data.train.transform = eval_transform(detection_preprocessing(64, None))
    model = SSDLite(
        resolve_detection_config(
            config.model,
            alpha=config.alpha,
            resolution=config.resolution,
            num_classes=len(data.class_names),
        )
    )
    collate = AssignTargets(model.anchors(), iou_threshold=0.4)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=3, num_workers=1, collate_fn=collate
    )
    images, targets, labels, box_targets = next(iter(loader))
    expected_images, expected_targets = collate_detections([data.train[i] for i in range(3)])
    expected_labels, expected_boxes = assign_batch(model.anchors(), expected_targets, 0.4)
    assert torch.equal(images, expected_images)
    assert torch.equal(labels, expected_labels) and torch.equal(box_targets, expected_boxes)
    assert labels.shape == (3, model.anchors().shape[0]) and box_targets.shape[-1] == 4
    objects = sum(len(target["labels"]) for target in targets)
    assert objects > 0 and (labels > 0).sum() >= objects  # every object has a positive anchor


def test_a_run_leaves_config_metrics_checkpoints_and_coco_metrics(finished_run):
    out, result = finished_run
    run = json.loads((out / "train_config.json").read_text())
    assert run["train_config"] == tiny_config().to_dict()
    assert run["detection_config"]["num_classes"] == 5
    assert run["classes"] == ["__background__", "circle", "square", "triangle", "star"]
    rows = read_metrics(out)
    assert [row["epoch"] for row in rows] == [1, 2] and result.epochs == 2
    assert all(0 <= rows[-1][f"val_{name}"] <= 1 for name in ("AP", "AP50", "AP75", "AR100"))
    assert set(result.final) == {*METRICS, "AR100"}
    assert json.loads((out / "eval.json").read_text())["AP50"] == result.final["AP50"]
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 4
    assert json.loads(json.dumps(state["run"])) == run
    # The checkpoint alone rebuilds the detector with its classes and preprocessing.
    checkpoint = load_detection_checkpoint(out)
    assert checkpoint.path.name == "best.safetensors"
    assert checkpoint.model.name == "ssdlite_mobilenet_v2_0.35_64"
    assert checkpoint.classes == tuple(run["classes"])
    assert checkpoint.preprocessing.resolution == 64
    assert checkpoint.train_config == run["train_config"]
    best = max(rows, key=lambda row: row["val_AP"])  # the first of equals
    assert checkpoint.metrics == best
    last = load_file(out / "last.safetensors")
    assert checkpoint.metrics["epoch"] == 1 or all(
        torch.equal(last[key], value) for key, value in checkpoint.model.state_dict().items()
    )


def test_an_existing_run_is_not_overwritten_and_resume_needs_a_run(finished_run, tmp_path):
    out, _ = finished_run
    with pytest.raises(MobileNetsError, match="already holds a run; pass resume=True"):
        fit(tiny_config(), out, progress=False)
    with pytest.raises(MobileNetsError, match="resume=True: no training state"):
        fit(None, tmp_path, resume=True, progress=False)
    with pytest.raises(MobileNetsError, match=r"other settings: epochs=5 \(saved 2\)"):
        fit(tiny_config(epochs=5), out, resume=True, progress=False)
    # The one engine resumes a run only as the task that started it.
    with pytest.raises(MobileNetsError, match="holds a detection run, not a classification run"):
        fit_classifier(None, out, resume=True, progress=False)


def test_interrupted_then_resumed_run_finishes_exactly_as_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    # The SSD augmentation draws random crops, zooms and flips: the resumed run must replay them.
    config = tiny_config(state_every=1, augment="ssd")
    _, _, state = interrupted_and_resumed(fit, config, tmp_path, monkeypatch)
    assert (state["epoch"], state["epoch_state"]["batch"], state["step"]) == (1, 1, 3)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = run.train_epoch

    def poisoned(model, loader, trainer, *args, **kwargs):
        handle = None
        if trainer.step >= 2:  # the second epoch: its first forward gives NaN
            head = unwrap(model).class_heads[0]
            handle = head.register_forward_hook(lambda module, inputs, output: output * math.nan)
        try:
            return original(model, loader, trainer, *args, **kwargs)
        finally:
            if handle is not None:
                handle.remove()

    monkeypatch.setattr(run, "train_epoch", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 2.*last good"):
        fit(tiny_config(epochs=3), tmp_path, progress=False)
    assert len(read_metrics(tmp_path)) == 1
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and all(v.isfinite().all() for v in state["model"].values())
    weights = load_file(tmp_path / "last.safetensors")
    assert all(v.isfinite().all() for v in weights.values() if v.is_floating_point())


@pytest.mark.slow
def test_torchrun_trains_on_two_cpu_processes_and_gathers_the_evaluation(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "-m",
        "mobilenets",
        "detect",
        "train",
        "--data",
        DATA,
        "--alpha",
        "0.35",
        "--resolution",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--augment",
        "flip",
        "--no-progress",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert json.loads((out / "train_config.json").read_text())["world_size"] == 2
    rows = read_metrics(out)
    assert len(rows) == 1 and rows[0]["step"] == 8 // (2 * 2)  # each process trains on half
    assert finished.stdout.count("checkpoint:") == 1  # only rank 0 reports
    # Each process detected on one of the two validation images; the gathered detections
    # score as one process scoring both.
    checkpoint = load_detection_checkpoint(out / "last.safetensors")
    alone = evaluate(checkpoint, DATA, device="cpu")
    assert json.loads((out / "eval.json").read_text()) == {"data": DATA, **alone}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(loss="hinge"), "loss must be one of softmax, focal, got 'hinge'"),
        (dict(augment="mixup"), "augment must be one of ssd, flip, got 'mixup'"),
        (dict(batch_size=0), "batch_size must be positive, got 0"),
        (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\), got 1.0"),
        (dict(match_iou=0.0), r"match_iou must be in \(0, 1\], got 0.0"),
    ],
)
def test_bad_settings_name_the_value_and_what_is_allowed(changes, message):
    with pytest.raises(MobileNetsError, match=message):
        tiny_config(**changes)


# --- Data specs ---------------------------------------------------------------------------------


def write_voc(root: Path, splits: tuple[str, ...]) -> Path:
    xml = (
        "<annotation><size><width>40</width><height>30</height></size><object><name>dog"
        "</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox>"
        "</object></annotation>"
    )
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "Annotations/0001.xml").write_text(xml)
    Image.new("RGB", (40, 30), (90, 90, 90)).save(root / "JPEGImages/0001.jpg")
    for split in splits:
        (root / f"ImageSets/Main/{split}.txt").write_text("0001\n")
    return root


def test_data_specs_synthetic_coco_folder_and_voc(tmp_path):
    synthetic = load_detection_data(DATA)
    assert (len(synthetic.train), len(synthetic.val)) == (10, 2)
    assert synthetic.category_ids == (0, 1, 2, 3, 4)
    root = Path(synthetic.val.images).parent  # the generated folder has the coco:DIR layout
    coco = load_detection_data(f"coco:{root}", splits=("val",))
    assert coco.train is None and len(coco.val) == 2 and coco.class_names == synthetic.class_names
    files = ",".join(
        str(p)
        for s in ("train", "val")
        for p in (root / s, root / "annotations" / f"instances_{s}.json")
    )
    assert len(load_detection_data(f"coco:{files}").train) == 10
    voc = load_detection_data(f"voc:{write_voc(tmp_path / 'a', ('trainval', 'test'))}")
    assert (voc.train.split, voc.val.split, voc.class_names[12]) == ("trainval", "test", "dog")
    voc = load_detection_data(f"voc:{write_voc(tmp_path / 'b', ('train', 'val'))}")
    assert (voc.train.split, voc.val.split) == ("train", "val")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenet", r"data='imagenet' is not one of: synthetic-shapes\[:N\].*voc:ROOT"),
        ("synthetic-shapes:zero", r"positive number of training images, got 'zero'"),
        ("coco:/no/such/dir", r"coco:/no/such/dir needs train/ and val/ image folders"),
        ("coco:a,b", r"coco: takes DIR or TRAIN_IMAGES,TRAIN_JSON,VAL_IMAGES,VAL_JSON"),
        ("voc:/no/such/voc", r"cannot read .*/no/such/voc/ImageSets/Main/train\.txt"),
    ],
)
def test_bad_data_specs_name_the_value(spec, message):
    with pytest.raises(MobileNetsError, match=message):
        load_detection_data(spec)


# --- The detect commands ------------------------------------------------------------------------


def test_detect_train_eval_predict_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "detect",
            "train",
            "--data",
            DATA,
            "--alpha",
            "0.35",
            "--resolution",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--augment",
            "flip",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "val AP" in printed and (out / "best.safetensors").is_file()

    report = tmp_path / "eval.json"
    assert main(["detect", "eval", str(out), "--data", DATA, "--json", str(report)]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[:3] == ["model", "params", "MACs"] and header[3:9] == list(METRICS)
    record = json.loads(report.read_text())
    assert record["model"] == "ssdlite_mobilenet_v2_0.35_64" and set(METRICS) <= set(record)

    image = Path(load_detection_data(DATA, splits=("val",)).val.images) / "000000.jpg"
    drawn = tmp_path / "drawn.png"
    # Threshold 0: an untrained model's boxes are drawn too, which is what is checked here.
    args = ["detect", "predict", str(out), str(image), "--out", str(drawn)]
    assert main([*args, "--score-threshold", "0", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["detections"], found
    before = np.asarray(Image.open(image).convert("RGB"))
    after = np.asarray(Image.open(drawn))
    assert after.shape == before.shape
    x1, y1, x2, y2 = (round(v) for v in found["detections"][0]["box"])
    x1, y1 = min(x1, before.shape[1] - 1), min(y1, before.shape[0] - 1)
    assert (after[y1, x1:x2] != before[y1, x1:x2]).any()  # the top edge of the best box
    assert main([*args, "--score-threshold", "0.99"]) == 0
    assert "0 detections with score >= 0.99" in capsys.readouterr().out


def test_export_with_decoding_matches_pytorch(finished_run, tmp_path, capsys):
    import onnxruntime

    out, _ = finished_run
    path = tmp_path / "detector.onnx"
    assert main(["detect", "export", str(out), "--out", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "NMS is left to the caller" in printed and "input 1x3x64x64" in printed
    checkpoint = load_detection_checkpoint(out)
    model = checkpoint.model.eval()
    dataset = load_detection_data(DATA, splits=("val",)).val
    dataset.transform = eval_transform(checkpoint.preprocessing)
    images, _ = collate_detections([dataset[1]])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["boxes", "scores"], {"input": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    want_boxes = decode(expected["box_regression"], model.anchors()).clamp(0, 1)
    assert np.abs(boxes - want_boxes.numpy()).max() < 1e-4
    assert np.abs(scores - torch.softmax(expected["cls_logits"], -1).numpy()).max() < 1e-4
    assert scores.shape == (1, model.anchors().shape[0], 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--data", "nope:1", "--out", "{tmp}/x"],
            "--data 'nope:1' is not one of: synthetic-shapes[:N]",
        ),
        (
            ["train", "--data", DATA, "--loss", "hinge", "--out", "{tmp}/x"],
            "loss must be one of softmax, focal, got 'hinge'",
        ),
        (["train", "--resume", "--epochs", "3", "--out", "{tmp}/x"], "drop --epochs (it may"),
        (["eval", "{tmp}/missing.safetensors", "--data", DATA], "missing.safetensors' does not"),
        (["predict", "{run}", "{tmp}/bad.jpg"], "cannot read image"),
        (["predict", "{run}", "{tmp}/bad.jpg", "--out", "{tmp}/x.gif"], "--out must end in .png"),
        (["export", "{run}", "--out", "{tmp}/x.pb"], "the output must be a .onnx file"),
    ],
)
def test_user_errors_are_one_line_and_a_nonzero_exit(finished_run, tmp_path, capsys, args, message):
    (tmp_path / "bad.jpg").write_text("not an image")
    run, _ = finished_run
    args = [a.format(tmp=tmp_path, run=run) for a in args]
    assert main(["detect", *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mobilenets detect: error: ") and message in error
    assert error.count("\n") == 1 and "Traceback" not in error
