"""``mobilenets segment``: one tiny run through the CLI, its checkpoint evaluated (at output
stride 8, with flips) and used for prediction; the export flags' wiring; the defaults and choices
the flags repeat equal to the library's; every user error one line, exit status 2 and no file
left half-written."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segmentation_files import write_folder, write_voc

from mobilenets.cli import arguments, build_parser, main, segment
from mobilenets.cli.training import default_text, field_defaults
from mobilenets.core.models import MobileNetV1
from mobilenets.core.preprocessing import imagenet_preprocessing
from mobilenets.core.segmentation_spec import SEGMENTATION_OUTPUT_STRIDES
from mobilenets.data.segmentation import load_segmentation_data
from mobilenets.deploy.pipeline import ExportReport
from mobilenets.engine.checkpoint import save_checkpoint
from mobilenets.engine.settings import TrainSettings
from mobilenets.tasks.segmentation import export as segmentation_export
from mobilenets.tasks.segmentation.evaluate import evaluate
from mobilenets.tasks.segmentation.inference import (
    TTA_MODES,
    load_segmentation_checkpoint,
    predict,
)
from mobilenets.tasks.segmentation.train import TrainConfig

DATA = "synthetic-shapes:10"
CLASSES = ["background", "circle", "square", "triangle", "star"]
TINY = ["--alpha", "0.35", "--crop", "64", "--epochs", "1", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small nets at small sizes: one intra-op thread is faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    """Synthetic data is generated into $MOBILENETS_DATA: a folder of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_DATA", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The run folder of `segment train` and what it printed."""
    out = tmp_path_factory.mktemp("cli") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["segment", "train", "--data", DATA, *TINY, "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue()


def run_cli(capsys, *argv):
    code = main(["segment", *(str(arg) for arg in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, message):
    assert code == 2, err
    assert err.startswith("mobilenets segment: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err, err


def no_temporary_files(folder: Path) -> bool:
    return not list(folder.rglob("*.tmp"))


# --- train, eval, predict -----------------------------------------------------------------------


def test_train_prints_the_result_and_where_the_files_are(trained):
    out, printed = trained
    assert "epoch 1/1: train loss" in printed and "val mIoU" in printed
    assert f"checkpoint: {out / 'best.safetensors'}" in printed
    assert f"plots: {out / 'curves.png'}, {out / 'iou.png'}, {out / 'overlays'}" in printed
    for name in (
        "best.safetensors",
        "last.safetensors",
        "metrics.jsonl",
        "eval.json",
        "curves.png",
        "iou.png",
        "train_config.json",
    ):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 2
    config = json.loads((out / "train_config.json").read_text())["train_config"]
    assert config == TrainConfig(data=DATA, alpha=0.35, crop=64, epochs=1, batch_size=4).to_dict()


def test_eval_at_output_stride_8_with_flips_prints_tables_and_writes_json(
    trained, capsys, tmp_path
):
    out, _ = trained
    report = tmp_path / "eval.json"
    code, printed, err = run_cli(
        capsys,
        "eval",
        out,
        "--data",
        DATA,
        "--output-stride",
        "8",
        "--tta",
        "flip",
        "--device",
        "cpu",
        "--json",
        report,
    )
    assert code == 0, err
    lines = printed.splitlines()
    assert lines[0].split() == [
        "model",
        "params",
        "MACs",
        "mIoU",
        "pixel",
        "acc",
        "mean",
        "acc",
        "fwIoU",
    ]
    assert lines[2].split()[0] == "deeplabv3_mobilenet_v2_0.35_64_os8"
    assert [line.split()[0] for line in lines[6:11]] == CLASSES  # the IoU of each class
    assert "tta flip" in printed and f"wrote {report}" in printed
    record = json.loads(report.read_text())
    assert (record["output_stride"], record["tta"], record["classes"]) == (8, "flip", CLASSES)
    expected = evaluate(
        load_segmentation_checkpoint(out), DATA, output_stride=8, tta="flip", device="cpu"
    )
    assert {key: record[key] for key in expected} == expected


def test_predict_writes_a_mask_of_class_indices_and_an_overlay_per_image(trained, capsys, tmp_path):
    out, _ = trained
    files = load_segmentation_data(DATA, splits=("val",)).val.files
    images = [image for image, _ in files]
    code, printed, err = run_cli(
        capsys, "predict", out, *images, "--out", tmp_path / "pred", "--json"
    )
    assert code == 0, err
    records = json.loads(printed)
    checkpoint = load_segmentation_checkpoint(out)
    for record, image in zip(records, images, strict=True):
        assert record["mask"] == str(tmp_path / "pred" / f"{image.stem}_mask.png")
        mask = np.asarray(Image.open(record["mask"]))
        assert np.array_equal(mask, predict(checkpoint, image).numpy())
        assert set(np.unique(mask).tolist()) <= set(range(5))
        assert set(record["classes"]) <= set(CLASSES)
        assert sum(record["classes"].values()) == pytest.approx(1, abs=1e-3)
        assert Image.open(record["overlay"]).size == Image.open(image).size
    code, printed, _ = run_cli(capsys, "predict", out, images[0], "--out", tmp_path / "plain")
    assert code == 0 and f"wrote {tmp_path / 'plain' / images[0].stem}_mask.png" in printed
    assert no_temporary_files(tmp_path)


def test_export_passes_its_flags_to_the_segmentation_export(trained, capsys, tmp_path, monkeypatch):
    out, _ = trained
    calls = []

    def fake_export(checkpoint, path, **options):
        calls.append((checkpoint, path, options))
        return ExportReport(
            path=Path(path),
            format=options["format"],
            model_name="deeplabv3_x",
            input_shape=(1, 3, 96, 96),
            output_names=("labels",),
            max_abs_diff=None,
            bn_folded=40,
            file_bytes=2_000_000,
            runtime="onnxruntime 1.0",
            opset=19,
            details={"source": "ckpt", "output_shape": (1, 96, 96), "differing_pixels": 0},
        )

    monkeypatch.setattr(segmentation_export, "export", fake_export)
    path = tmp_path / "model.onnx"
    code, printed, err = run_cli(
        capsys,
        "export",
        out,
        "--format",
        "onnx",
        "--out",
        path,
        "--argmax",
        "--resolution",
        "96",
        "--opset",
        "19",
    )
    assert code == 0, err
    ((checkpoint, given, options),) = calls
    assert checkpoint.path == out / "best.safetensors" and given == str(path)
    assert options == dict(format="onnx", resolution=96, argmax=True, opset=19)
    assert printed.splitlines() == [
        f"wrote {path} (deeplabv3_x from ckpt; opset 19, input 1x3x96x96, output labels "
        "[1, 96, 96], 2.0 MB, 40 BN folded)",
        "onnxruntime 1.0 vs PyTorch: 0 pixel(s) of another class, each where PyTorch's two best "
        "logits nearly tie",
    ]
    code, _, _ = run_cli(capsys, "export", out, "--format", "pte", "--out", tmp_path / "m.pte")
    assert code == 0
    assert calls[-1][2] == dict(format="pte", resolution=None, argmax=False, opset=None)


# --- the flags' defaults and choices ------------------------------------------------------------


def subparser(*words: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in ("segment", *words):
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = action.choices[word]
    return parser


def help_of(parser: argparse.ArgumentParser, dest: str) -> str:
    (action,) = [action for action in parser._actions if action.dest == dest]
    return argparse.HelpFormatter(parser.prog)._expand_help(action)


def test_the_train_flags_show_the_configs_defaults():
    parser = subparser("train")
    defaults = field_defaults(TrainConfig)
    checked = 0
    for action in parser._actions:
        value = defaults.get(action.dest)
        if value in (None, "") or action.dest == "data":  # --data: required unless --resume
            continue
        assert f"(default {default_text(value)})" in help_of(parser, action.dest), action.dest
        checked += 1
    assert checked >= 27
    assert "(default poly)" in help_of(parser, "schedule")  # not TrainSettings' cosine
    assert "(default 513)" in help_of(parser, "crop")
    assert "(default: the model's" in help_of(parser, "aspp")
    # Every config field has its flag, but RMSProp's decay and epsilon (as in the other commands).
    flags = {action.dest for action in parser._actions}
    assert set(defaults) - flags == {"rmsprop_decay", "rmsprop_eps"}


def test_the_choices_and_defaults_the_cli_repeats_are_the_librarys():
    # What train_defaults shows: TrainSettings' defaults with the repeated ones on top.
    shown = {
        **field_defaults(TrainSettings),
        "aspp": None,
        "backbone_weights": None,
        **segment.SEGMENTATION_DEFAULTS,
    }
    library = field_defaults(TrainConfig)
    assert {**shown, "data": library["data"]} == library
    assert segment.TTA_MODES == TTA_MODES
    assert segment.OUTPUT_STRIDES == SEGMENTATION_OUTPUT_STRIDES
    assert arguments.EXPORT_FORMATS == segmentation_export.FORMATS
    eval_parser = subparser("eval")
    assert eval_parser.get_default("batch_size") == 1  # as evaluate's
    assert eval_parser.get_default("tta") == "none"


# --- errors -------------------------------------------------------------------------------------


@pytest.fixture
def folder_data(tmp_path):
    """folder:ROOT data with the synthetic run's classes: 4 training and 2 validation images of
    32x24 px."""
    root = tmp_path / "data"
    write_folder(root, {"train": 4, "val": 2}, class_names=CLASSES)
    return root


def test_a_mask_value_outside_the_classes_stops_eval_and_train(
    trained, folder_data, capsys, tmp_path
):
    out, _ = trained
    bad = folder_data / "val" / "masks" / "val_001.png"
    pixels = np.asarray(Image.open(bad)).copy()
    pixels[5, 5] = 7
    Image.fromarray(pixels).save(bad)
    report = tmp_path / "report.json"
    code, _, err = run_cli(
        capsys, "eval", out, "--data", f"folder:{folder_data}", "--json", report, "--device", "cpu"
    )
    assert_one_line_error(
        code,
        err,
        f"mask '{bad}' holds values [7]; allowed are the class indices 0..4 and 255 (ignore)",
    )
    assert not report.exists()
    # In training the bad mask is met in the first batch: no checkpoint, no half-written file.
    for path in (folder_data / "train" / "masks").iterdir():
        Image.fromarray(np.full((24, 32), 9, dtype=np.uint8)).save(path)
    run = tmp_path / "run"
    code, _, err = run_cli(
        capsys,
        "train",
        "--data",
        f"folder:{folder_data}",
        "--alpha",
        "0.35",
        "--crop",
        "32",
        "--batch-size",
        "2",
        "--out",
        run,
        "--no-progress",
    )
    assert_one_line_error(code, err, "holds values [9]; allowed are the class indices 0..4")
    assert not list(run.glob("*.safetensors")) and not (run / "metrics.jsonl").exists()
    assert no_temporary_files(tmp_path)


def test_an_image_and_mask_of_different_sizes_is_named(trained, folder_data, capsys):
    out, _ = trained
    mask = folder_data / "val" / "masks" / "val_000.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(mask)
    code, _, err = run_cli(capsys, "eval", out, "--data", f"folder:{folder_data}")
    image = folder_data / "val" / "images" / "val_000.png"
    assert_one_line_error(code, err, f"image '{image}' is 32x24 but its mask '{mask}' is 16x16")


def test_an_unreadable_png_is_named_and_nothing_is_written(trained, folder_data, capsys, tmp_path):
    out, _ = trained
    broken = folder_data / "val" / "images" / "val_001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, _, err = run_cli(capsys, "eval", out, "--data", f"folder:{folder_data}")
    assert_one_line_error(code, err, f"cannot read image '{broken}'")
    # predict reads every image before it writes: the good first one leaves nothing either.
    good = folder_data / "val" / "images" / "val_000.png"
    code, _, err = run_cli(capsys, "predict", out, good, broken, "--out", tmp_path / "pred")
    assert_one_line_error(code, err, f"cannot read image '{broken}'")
    assert not (tmp_path / "pred").exists()


def test_a_missing_split_file_is_named_before_anything_is_written(capsys, tmp_path):
    root = tmp_path / "voc"
    write_voc(root, {"val": ["a", "b"]})  # no train.txt
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", f"voc:{root}", *TINY, "--out", run)
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    assert_one_line_error(code, err, f"cannot read the split file '{split}' (a VOC root holds")
    assert not run.exists()


def test_backbone_weights_of_another_architecture_are_refused(capsys, tmp_path):
    weights = save_checkpoint(
        MobileNetV1(alpha=0.35, num_classes=3),
        tmp_path / "v1.safetensors",
        ["a", "b", "c"],
        imagenet_preprocessing(224),
    )
    run = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--data", DATA, *TINY, "--backbone-weights", weights, "--out", run
    )
    assert_one_line_error(
        code,
        err,
        "do not fit deeplabv3_mobilenet_v2_0.35_64_os16: arch 'mobilenet_v1' (need 'mobilenet_v2')",
    )
    assert not run.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--out", "{tmp}/x"], "--data is required (one of: synthetic-shapes[:N]"),
        (
            ["train", "--data", "nope:1", "--out", "{tmp}/x"],
            "--data 'nope:1' is not one of: synthetic-shapes[:N]",
        ),
        (
            ["train", "--data", DATA, "--crop", "16", "--out", "{tmp}/x"],
            "crop must be an integer >= 32, got 16",
        ),
        (
            ["train", "--data", DATA, "--output-stride", "32", "--out", "{tmp}/x"],
            "output_stride must be one of 8, 16, got 32",
        ),
        (
            ["train", "--data", DATA, "--model", "ssdlite_mobilenet_v2", "--out", "{tmp}/x"],
            "'ssdlite_mobilenet_v2' is a detection model, not a segmentation model",
        ),
        (["train", "--resume", "--epochs", "3", "--out", "{tmp}/x"], "drop --epochs (it may"),
        (["train", "--resume", "--out", "{tmp}/x"], "--resume: no training state at"),
        (["train", "--data", DATA, "--out", "{run}"], "already holds a run; pass --resume"),
        (["eval", "{tmp}/missing.safetensors", "--data", DATA], "missing.safetensors' does not"),
        (["eval", "{run}/state/last.pt", "--data", DATA], "is a training state"),
        (
            ["predict", "{run}", "{tmp}/a/x.png", "{tmp}/b/x.png"],
            "would both write x_mask.png; give images of different names",
        ),
        (
            ["export", "{run}", "--format", "pte", "--opset", "18", "--out", "{tmp}/x.pte"],
            "--opset applies to --format onnx only",
        ),
    ],
)
def test_user_errors_are_one_line_and_a_nonzero_exit(trained, capsys, tmp_path, args, message):
    run, _ = trained
    args = [arg.format(tmp=tmp_path, run=run) for arg in args]
    code = main(["segment", *args])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "x").exists() and no_temporary_files(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--output-stride", "4"],
            "argument --output-stride: invalid choice: 4 (choose from 8, 16)",
        ),
        (["--tta", "mirror"], "argument --tta: invalid choice: 'mirror'"),
    ],
)
def test_usage_errors_are_one_line_too(trained, capsys, args, message):
    run, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "eval", str(run), "--data", DATA, *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("mobilenets segment eval: error: ")
    assert message in err and err.count("\n") == 1, err
