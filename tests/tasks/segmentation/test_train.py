"""Segmentation training: the loss, a run's outputs, exact resume, the auxiliary head, backbone
weights, evaluation at another output stride and with flips, prediction and its PNG files, and
the settings a user can get wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from run_files import interrupted_and_resumed, read_metrics
from safetensors.torch import load_file
from segmentation_files import write_folder

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import MobileNetV2
from mobilenets.core.preprocessing import imagenet_preprocessing
from mobilenets.data.segmentation import IGNORE_INDEX, collate_segmentation, load_segmentation_data
from mobilenets.data.segmentation_transforms import eval_transform, segmentation_preprocessing
from mobilenets.engine.checkpoint import STATE_FILE, save_checkpoint, save_state
from mobilenets.engine.device import Distributed
from mobilenets.engine.loop import EpochState, Trainer, train_epoch
from mobilenets.engine.optim import make_optimizer
from mobilenets.engine.run import RunContext
from mobilenets.tasks.detection import train as detection_train
from mobilenets.tasks.segmentation.evaluate import evaluate, evaluate_segmenter
from mobilenets.tasks.segmentation.inference import (
    load_segmentation_checkpoint,
    overlay,
    palette,
    predict,
    save_prediction,
    with_output_stride,
)
from mobilenets.tasks.segmentation.train import (
    Segmentation,
    TrainConfig,
    fit,
    pixel_cross_entropy,
    segmentation_config,
    segmentation_loss,
)
from mobilenets.zoo.segmenters import create_segmenter

pytestmark = pytest.mark.usefixtures("one_thread", "data_dir")  # small nets: threads contend

# A tiny run: a 0.35-wide DeepLabv3 on 64 px crops of 10 training and 2 validation images of
# 128 px (synthetic shapes, 5 classes), two steps of 4 per epoch.
DATA = "synthetic-shapes:10"
CLASSES = ["background", "circle", "square", "triangle", "star"]
TINY = dict(data=DATA, alpha=0.35, crop=64, epochs=2, batch_size=4, lr=0.02)
CPU = RunContext(torch.device("cpu"), None, Distributed(), False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic data is generated into $MOBILENETS_DATA: a folder of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_DATA", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """A run with the auxiliary head (weight 0.4)."""
    out = tmp_path_factory.mktemp("run")
    return out, fit(tiny_config(aux_loss=0.4), out, progress=False)


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


def val_image(index: int = 0) -> Path:
    files = load_segmentation_data(DATA, splits=("val",)).val.files
    return files[index][0]


# --- The loss -----------------------------------------------------------------------------------


def test_pixel_cross_entropy_averages_over_labelled_pixels_only():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator)
    masks = torch.randint(0, 4, (2, 5, 6), generator=generator)
    masks[0, :2] = IGNORE_INDEX
    per_pixel = F.cross_entropy(logits, masks.clamp(max=3), reduction="none")
    expected = per_pixel[masks != IGNORE_INDEX].mean()
    assert torch.allclose(pixel_cross_entropy(logits, masks), expected)
    # A crop of padding only has no labelled pixel: 0, not NaN (which would stop the run).
    nothing = torch.full((1, 5, 6), IGNORE_INDEX)
    assert pixel_cross_entropy(logits[:1], nothing).item() == 0.0


@pytest.mark.parametrize("aux_loss", [0.0, 0.4])
def test_a_few_steps_on_one_batch_lower_the_loss_with_and_without_aux(aux_loss):
    config = tiny_config(aux_loss=aux_loss, lr=0.05)
    data = load_segmentation_data(DATA, splits=("train",))
    data.train.transform = eval_transform(segmentation_preprocessing(None, 64))
    torch.manual_seed(0)
    model = create_segmenter(segmentation_config(config, num_classes=5))
    assert (model.aux is not None) == (aux_loss > 0)
    batch = collate_segmentation([data.train[i] for i in range(2)])
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer = Trainer(optimizer, scheduler, scaler, config, torch.device("cpu"))
    losses = []
    for _ in range(8):  # the same batch again and again: the loss must fall
        state = EpochState()
        train_epoch(
            model, [batch], trainer, state, loss_fn=segmentation_loss(aux_loss), progress=False
        )
        losses.append(state.loss_sum / state.seen)
        main = state.sums["ce_sum"] / state.seen
        aux = state.sums.get("aux_sum", 0.0) / state.seen
        assert set(state.sums) == ({"ce_sum", "aux_sum"} if aux_loss else {"ce_sum"})
        assert losses[-1] == pytest.approx(main + aux_loss * aux, rel=1e-5)
    assert losses[-1] < 0.7 * losses[0], losses


# --- A run --------------------------------------------------------------------------------------


def test_a_run_leaves_metrics_checkpoints_evaluation_plots_and_overlays(finished_run):
    out, result = finished_run
    record = json.loads((out / "train_config.json").read_text())
    assert record["task"] == "segmentation" and record["classes"] == CLASSES
    assert record["train_config"] == tiny_config(aux_loss=0.4).to_dict()
    saved = record["segmentation_config"]
    assert (saved["num_classes"], saved["aux"], saved["output_stride"], saved["resolution"]) == (
        5,
        True,
        16,
        64,
    )
    rows = read_metrics(out)
    assert [row["epoch"] for row in rows] == [1, 2] and result.epochs == 2
    for row in rows:
        assert {
            "train_ce_loss",
            "train_aux_loss",
            "val_mIoU",
            "val_pixel_accuracy",
            "val_mean_accuracy",
            "val_fwIoU",
        } <= set(row)
        assert row["train_loss"] == pytest.approx(
            row["train_ce_loss"] + 0.4 * row["train_aux_loss"], rel=1e-6
        )
        assert all(0 <= row[f"val_{name}"] <= 1 for name in ("mIoU", "pixel_accuracy"))
    assert result.best == max(row["val_mIoU"] for row in rows)
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["data"] == DATA and evaluation["classes"] == CLASSES
    assert evaluation["model"] == "deeplabv3_mobilenet_v2_0.35_64_os16"
    assert evaluation["mIoU"] == result.final["mIoU"] == rows[-1]["val_mIoU"]
    assert len(evaluation["IoU"]) == 5 and evaluation["pixels"] == 2 * 128 * 128
    assert all(iou is None or 0 <= iou <= 1 for iou in evaluation["IoU"])
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 4)
    for plot in ("curves.png", "iou.png"):
        assert Image.open(out / plot).format == "PNG"
    overlays = sorted((out / "overlays").iterdir())
    assert [path.name for path in overlays] == ["000000.png", "000001.png"]
    assert Image.open(overlays[0]).size == (2 * 128 + 4, 128)  # truth | gap | prediction
    assert not list(out.rglob("*.tmp"))
    # The checkpoint alone rebuilds the segmenter, its classes and preprocessing.
    checkpoint = load_segmentation_checkpoint(out)
    assert checkpoint.path.name == "best.safetensors" and checkpoint.classes == tuple(CLASSES)
    assert checkpoint.model.config.aux and checkpoint.model.num_classes == 5
    assert checkpoint.preprocessing == segmentation_preprocessing(None, 64)
    assert checkpoint.train_config == record["train_config"]
    best = max(rows, key=lambda row: row["val_mIoU"])  # the first of equals
    assert checkpoint.metrics == best


def test_the_overlays_show_the_truth_beside_the_prediction(finished_run):
    out, _ = finished_run
    checkpoint = load_segmentation_checkpoint(out / "last.safetensors")
    data = load_segmentation_data(DATA, splits=("val",)).val
    image, truth = data.load(1)
    prediction = predict(checkpoint, image)
    drawn = np.asarray(Image.open(out / "overlays" / "000001.png"))
    assert np.array_equal(drawn[:, :128], np.asarray(overlay(image, np.asarray(truth))))
    assert np.array_equal(drawn[:, 132:], np.asarray(overlay(image, prediction)))
    assert (drawn[:, 128:132] == 255).all()


def test_an_existing_run_is_kept_and_resume_is_refused_as_another_task(finished_run, tmp_path):
    out, _ = finished_run
    with pytest.raises(MobileNetsError, match="already holds a run; pass resume=True"):
        fit(tiny_config(aux_loss=0.4), out, progress=False)
    with pytest.raises(MobileNetsError, match=r"other settings: epochs=5 \(saved 2\)"):
        fit(tiny_config(aux_loss=0.4, epochs=5), out, resume=True, progress=False)
    with pytest.raises(MobileNetsError, match="holds a segmentation run, not a detection run"):
        detection_train.fit(None, out, resume=True, progress=False)
    # A detection run's state (the fields open_run reads) is not resumed as segmentation.
    save_state(tmp_path / STATE_FILE, {"run": {"task": "detection", "train_config": {}}})
    with pytest.raises(
        MobileNetsError,
        match="holds a detection run, not a segmentation run; resume it as detection training",
    ):
        fit(None, tmp_path, resume=True, progress=False)


def test_interrupted_then_resumed_run_finishes_exactly_as_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    # Random scales, crops and flips, and the head's dropout: the resumed run must replay them.
    # Without the auxiliary head, which the weights then do not hold.
    config = tiny_config(state_every=1)
    straight, stopped, state = interrupted_and_resumed(fit, config, tmp_path, monkeypatch)
    assert (state["epoch"], state["epoch_state"]["batch"], state["step"]) == (1, 1, 3)
    assert "train_aux_loss" not in read_metrics(stopped)[0]
    for name in ("last.safetensors", "best.safetensors"):
        assert not any(key.startswith("aux.") for key in load_file(stopped / name))
    evaluation = json.loads((stopped / "eval.json").read_text())
    assert evaluation == json.loads((straight / "eval.json").read_text())


# --- Backbone weights ---------------------------------------------------------------------------


def test_backbone_weights_from_a_classification_checkpoint_of_ours(tmp_path):
    classifier = MobileNetV2(alpha=0.35, num_classes=10)
    with torch.no_grad():
        for parameter in classifier.parameters():
            parameter.add_(torch.randn_like(parameter))
    path = save_checkpoint(
        classifier,
        tmp_path / "ours.safetensors",
        [str(i) for i in range(10)],
        imagenet_preprocessing(224),
    )
    job = Segmentation().prepare(tiny_config(backbone_weights=path), None, CPU)
    backbone = job.model.backbone.state_dict()
    copied = {
        k: v
        for k, v in classifier.state_dict().items()
        if not k.startswith(("classifier.", "head."))
    }
    assert set(copied) == set(backbone)
    assert all(torch.equal(backbone[key], value) for key, value in copied.items())
    assert job.model.num_classes == 5 and job.preprocessing.resolution == 64
    assert tiny_config(backbone_weights=path).backbone_weights == str(path)  # stored as text


def test_backbone_weights_of_another_width_are_refused_with_the_differences(tmp_path):
    path = save_checkpoint(
        MobileNetV2(alpha=0.5, num_classes=3),
        tmp_path / "wide.safetensors",
        ["a", "b", "c"],
        imagenet_preprocessing(224),
    )
    with pytest.raises(
        MobileNetsError,
        match=r"do not fit deeplabv3_mobilenet_v2_0.35_64_os16: "
        r"alpha 0.5 \(need 0.35\)",
    ):
        fit(tiny_config(backbone_weights=path), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written


# --- Evaluation and prediction ------------------------------------------------------------------


def test_eval_at_output_stride_8_of_a_model_trained_at_16(finished_run):
    out, _ = finished_run
    checkpoint = load_segmentation_checkpoint(out)
    model8 = with_output_stride(checkpoint.model, 8)
    assert model8.config.output_stride == 8 and model8.num_classes == 5
    assert model8.config.atrous_rates == (12, 24, 36)  # the rates double with the stride
    weights8, weights16 = model8.state_dict(), checkpoint.model.state_dict()
    assert weights8.keys() == weights16.keys()
    assert all(torch.equal(weights8[key], weights16[key]) for key in weights16)
    assert with_output_stride(checkpoint.model, 16) is checkpoint.model
    at8 = evaluate(checkpoint, DATA, output_stride=8, device="cpu")
    at16 = evaluate(checkpoint, DATA, device="cpu")
    assert at8["classes"] == at16["classes"] == CLASSES and len(at8["IoU"]) == 5
    assert at8["pixels"] == at16["pixels"] == 2 * 128 * 128 and 0 <= at8["mIoU"] <= 1
    assert at16["mIoU"] == json.loads((out / "eval.json").read_text())["mIoU"]


def test_eval_with_flip_tta_is_the_library_evaluation_with_flips(finished_run):
    out, _ = finished_run
    checkpoint = load_segmentation_checkpoint(out)
    flipped = evaluate(checkpoint, DATA, tta="flip", device="cpu")
    dataset = load_segmentation_data(DATA, splits=("val",)).val
    dataset.transform = eval_transform(checkpoint.preprocessing)
    expected = evaluate_segmenter(
        checkpoint.model, dataset, tta="flip", batch_size=1, progress=False
    )
    assert flipped == expected
    with pytest.raises(MobileNetsError, match="tta 'mirror' is not one of none, flip, multiscale"):
        evaluate(checkpoint, DATA, tta="mirror")


def test_eval_refuses_data_with_other_classes(finished_run, tmp_path):
    out, _ = finished_run
    write_folder(tmp_path, class_names=["sky", "sea", "sand"])
    with pytest.raises(
        MobileNetsError,
        match=r"segments 5 classes \(background, circle, .*"
        r"data='folder:.*' has 3 \(sky, sea, sand\)",
    ):
        evaluate(load_segmentation_checkpoint(out), f"folder:{tmp_path}")


def test_predict_gives_class_indices_and_writes_mask_and_overlay_pngs(finished_run, tmp_path):
    out, _ = finished_run
    checkpoint = load_segmentation_checkpoint(out)
    path = val_image(0)
    mask = predict(checkpoint, path)
    image = Image.open(path).convert("RGB")
    assert mask.shape == (128, 128) and mask.dtype == torch.int64
    # The model's argmax on the normalized image, at its own size.
    inputs, _ = eval_transform(checkpoint.preprocessing)(image, Image.new("L", image.size))
    with torch.no_grad():
        expected = checkpoint.model.eval()(inputs[None]).argmax(1)[0]
    assert torch.equal(mask, expected)
    mask_path, overlay_path = save_prediction(image, mask, tmp_path / "out", "sample")
    assert (mask_path.name, overlay_path.name) == ("sample_mask.png", "sample_overlay.png")
    written = Image.open(mask_path)
    assert written.mode == "P" and written.getpalette()[: 3 * 256] == palette()
    assert np.array_equal(np.asarray(written), mask.numpy())  # pixel values: class indices
    assert Image.open(overlay_path).mode == "RGB" and Image.open(overlay_path).size == (128, 128)
    assert not list(tmp_path.rglob("*.tmp"))


# --- Settings -----------------------------------------------------------------------------------


def test_the_defaults_are_deeplabs_recipe():
    config = TrainConfig()
    assert (config.optimizer, config.lr, config.momentum, config.nesterov) == (
        "sgd",
        0.007,
        0.9,
        False,
    )
    assert (config.schedule, config.weight_decay, config.output_stride, config.crop) == (
        "poly",
        4e-5,
        16,
        513,
    )
    model = segmentation_config(config, num_classes=21)
    assert model.name == "deeplabv3_mobilenet_v2_1.0_513_os16" and not model.aux
    v1 = segmentation_config(tiny_config(model="deeplabv3_mobilenet_v1", aux_loss=1.0), 3)
    assert (v1.aspp, v1.aux, v1.resolution) == (True, True, 64)
    assert not segmentation_config(tiny_config(model="deeplabv3_mobilenet_v1", aspp=False), 3).aspp
    assert segmentation_config(tiny_config(resolution=96), 3).resolution == 96


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(output_stride=32), "output_stride must be one of 8, 16, got 32"),
        (dict(aspp="yes"), r"aspp must be True, False or None \(the model's\), got 'yes'"),
        (dict(flip=None), "flip must be True or False, got None"),
        (dict(crop=16), "crop must be an integer >= 32, got 16"),
        (dict(crop=64.0), "crop must be an integer >= 32, got 64.0"),
        (dict(resolution=8), "resolution must be an integer >= 32, got 8"),
        (dict(min_scale=0), "min_scale must be positive, got 0"),
        (dict(min_scale=1.5, max_scale=1.0), r"max_scale must be >= min_scale \(1.5\), got 1.0"),
        (dict(max_scale=float("inf")), "max_scale must be a number, got inf"),
        (dict(aux_loss=-0.1), "aux_loss must be >= 0, got -0.1"),
        (dict(eval_batch_size=0), "eval_batch_size must be an integer >= 1, got 0"),
        (dict(backbone_weights=3), "backbone_weights must be 'torchvision', 'timm', 'keras'"),
        (dict(model="deeplabv3_mobilenet_v3"), "unknown segmenter 'deeplabv3_mobilenet_v3'"),
        (
            dict(model="mobilenet_v2"),
            "unknown segmenter 'mobilenet_v2'; did you mean deeplabv3_mobilenet_v2",
        ),
        (
            dict(model="ssdlite_mobilenet_v2"),
            "'ssdlite_mobilenet_v2' is a detection model, not a segmentation model",
        ),
        (dict(alpha=-1.0), "alpha"),
        (dict(schedule="step"), "schedule must be one of cosine, exponential, poly, got 'step'"),
        (dict(data=""), "data must be a data spec, got ''"),
    ],
)
def test_bad_settings_name_the_value_and_what_is_allowed(changes, message):
    with pytest.raises(MobileNetsError, match=message):
        tiny_config(**changes)
