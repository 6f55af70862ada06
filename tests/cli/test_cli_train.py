"""The train, eval and predict commands end to end: one tiny run through the CLI, then its
checkpoint evaluated and used for prediction; every user error is one line and exit status 2."""

import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from mobilenets import cost, load_model
from mobilenets.cli import main
from mobilenets.data.classification import load_synthetic
from mobilenets.data.transforms import eval_transform
from mobilenets.engine.checkpoint import STATE_FILE, load_checkpoint
from mobilenets.tasks.classification.evaluate import evaluate
from mobilenets.tasks.classification.inference import predict

# The run: a 0.35-wide small-input V2 on 32x32 synthetic images, ten steps of 16.
TRAIN = [
    "train",
    "--data",
    "synthetic:160",
    "--model",
    "mobilenet_v2",
    "--alpha",
    "0.35",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--lr",
    "0.05",
    "--augment",
    "basic",
    "--random-erasing",
    "0",
    "--no-progress",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch's intra-op threads spin while waiting; on a machine whose cores are busy with
    other work that makes these tiny steps many times slower. One thread is plenty here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The run folder and what `mobilenets train` printed."""
    out = tmp_path_factory.mktemp("cli") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*TRAIN, "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue()


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, command):
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert err.startswith(f"mobilenets {command}: error: "), err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three validation images of the synthetic set as 32x32 RGB PNG files (lossless), with
    their uint8 tensors."""
    folder = tmp_path_factory.mktemp("images")
    val = load_synthetic(160).val
    paths, tensors = [], []
    for index in range(3):
        tensor = val.images[index]
        path = folder / f"sample_{index}.png"
        Image.fromarray(tensor.permute(1, 2, 0).numpy(), "RGB").save(path)
        paths.append(path)
        tensors.append(tensor)
    return paths, tensors


# --- train ----------------------------------------------------------------------------------------


def test_train_prints_where_the_checkpoint_and_plots_are(run):
    out, printed = run
    assert re.search(r"^epoch 1/1: train loss \d", printed, re.MULTILINE)
    checkpoint = re.search(r"^checkpoint: (\S+) \(last: (\S+)\)$", printed, re.MULTILINE)
    plots = re.search(r"^plots: (\S+), (\S+)$", printed, re.MULTILINE)
    metrics = re.search(r"^metrics: (\S+), (\S+)$", printed, re.MULTILINE)
    paths = [Path(p) for match in (checkpoint, plots, metrics) for p in match.groups()]
    assert [p.name for p in paths] == [
        "best.safetensors",
        "last.safetensors",
        "curves.png",
        "confusion.png",
        "metrics.jsonl",
        "eval.json",
    ]
    for path in paths:
        assert path.parent == out and path.is_file() and path.stat().st_size > 0, path
    for plot in paths[2:4]:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_a_v3_variant(capsys, tmp_path):
    """The V3 flags reach the model that is trained and stored."""
    out = tmp_path / "run"
    argv = [arg if arg != "mobilenet_v2" else "mobilenet_v3_small" for arg in TRAIN]
    flags = ["--minimalistic", "--width-rule", "torchvision"]
    code, printed, err = run_cli(capsys, *argv, *flags, "--out", out)
    assert code == 0, err
    assert "best val top-1" in printed
    model = load_checkpoint(out / "best.safetensors").model
    assert model.name == "mobilenet_v3_small_minimalistic_0.35_32_small_tv"
    assert (model.config.minimalistic, model.config.width_rule) == (True, "torchvision")
    assert model.spec.pre_logits is not None and model.config.num_classes == 10
    assert sum(p.numel() for p in model.parameters()) == cost(model).params


# --- eval -----------------------------------------------------------------------------------------


def test_eval_prints_the_tables_and_matches_the_run(run, capsys, tmp_path):
    out, _ = run
    record = tmp_path / "eval.json"
    code, printed, _ = run_cli(
        capsys, "eval", "--checkpoint", out, "--data", "synthetic:160", "--json", record
    )
    assert code == 0
    model = load_model(out / "best.safetensors")
    report = cost(model)
    assert model.name == "mobilenet_v2_0.35_32_small"
    # The model's own cost, not a registered variant's.
    assert (report.params, report.macs) == (
        cost("mobilenet_v2", alpha=0.35, resolution=32, num_classes=10, small_input=True).params,
        cost("mobilenet_v2", alpha=0.35, resolution=32, num_classes=10, small_input=True).macs,
    )

    summary, per_class = printed.split("\n\n")[:2]
    header, _, row = summary.splitlines()
    assert header.split() == ["model", "params", "MACs", "top-1", "%", "top-5", "%", "images"]
    saved = json.loads((out / "eval.json").read_text())
    assert row.split() == [
        model.name,
        f"{report.params:,}",
        f"{report.macs / 1e6:.1f}M",
        f"{100 * saved['top1']:.2f}",
        f"{100 * saved['top5']:.2f}",
        "40",
    ]
    lines = per_class.splitlines()
    assert lines[0].split() == ["class", "top-1", "%", "images"]
    assert [line.split()[0] for line in lines[2:]] == [f"class_{i}" for i in range(10)]
    assert all(line.split()[2] == "4" for line in lines[2:])
    assert f"wrote {record}" in printed

    data = json.loads(record.read_text())
    # Same data, same preprocessing, same weights: the run's own final evaluation.
    assert (data["top1"], data["top5"], data["count"]) == (
        saved["top1"],
        saved["top5"],
        saved["count"],
    )
    assert data["confusion"] == saved["confusion"]
    assert (data["params"], data["macs"], data["passes"]) == (report.params, report.macs, 1)
    assert (data["model"], data["data"]) == (model.name, "synthetic:160")
    assert data["checkpoint"] == str(out / "best.safetensors")


def test_eval_with_flip_tta_scores_the_images_and_their_mirrors(run, capsys, tmp_path):
    out, _ = run
    record = tmp_path / "eval.json"
    code, printed, _ = run_cli(
        capsys,
        "eval",
        "--checkpoint",
        out,
        "--data",
        "synthetic:160",
        "--tta",
        "flip",
        "--json",
        record,
    )
    assert code == 0
    data = json.loads(record.read_text())
    assert (data["tta"], data["passes"]) == ("flip", 2)
    checkpoint = load_checkpoint(out)
    expected = evaluate(checkpoint, "synthetic:160", progress=False, tta="flip")
    assert (data["top1"], data["top5"], data["confusion"]) == (
        expected.top1,
        expected.top5,
        expected.confusion.tolist(),
    )
    plain = json.loads((out / "eval.json").read_text())
    assert data["loss"] != plain["loss"]  # the mirrors were scored too
    row = printed.split("\n\n")[0].splitlines()[2]
    report = cost(checkpoint.model)
    assert row.split()[:9] == [
        checkpoint.model.name,
        "+",
        "flip",
        "TTA",
        f"{report.params:,}",
        "2",
        "x",
        f"{report.macs / 1e6:.1f}M",
        f"{100 * expected.top1:.2f}",
    ]

    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main(["eval", "--checkpoint", str(out), "--data", "synthetic:160", "--tta", "crop"])
    _, err = capsys.readouterr()
    assert_one_line_error(exit_info.value.code, err, "eval")
    assert "--tta: invalid choice: 'crop' (choose from 'none', 'flip')" in err


def test_eval_on_data_with_other_classes(run, capsys, tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog", "fox"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), (40, 80, 120)).save(folder / "a.png")
    code, out, err = run_cli(capsys, "eval", "--checkpoint", run[0], "--data", tmp_path)
    assert_one_line_error(code, err, "eval")
    assert out == ""
    assert "has 10 classes (class_0, class_1" in err
    assert f"--data {str(tmp_path)!r} has 3 (cat, dog, fox)" in err


# --- predict --------------------------------------------------------------------------------------


def test_predict_prints_sorted_top_k(run, images, capsys):
    paths, _ = images
    code, out, _ = run_cli(capsys, "predict", *paths, "--checkpoint", run[0], "--topk", "3")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4 * len(paths)
    for index, path in enumerate(paths):
        block = lines[4 * index : 4 * index + 4]
        assert block[0] == str(path)
        rows = [re.fullmatch(r"\s+([\d.]+)%  (class_\d)", line) for line in block[1:]]
        assert all(rows), block
        percents = [float(row.group(1)) for row in rows]
        assert percents == sorted(percents, reverse=True)
        assert sum(percents) <= 100 + 3 * 0.005  # each printed to two decimals
        assert len({row.group(2) for row in rows}) == 3


def test_predict_json_equals_the_model_on_the_same_pixels(run, images, capsys):
    paths, tensors = images
    code, out, _ = run_cli(
        capsys, "predict", *paths, "--checkpoint", run[0], "--json", "--topk", "10"
    )
    assert code == 0
    predictions = json.loads(out)
    assert [p["path"] for p in predictions] == [str(path) for path in paths]
    checkpoint = load_checkpoint(run[0])
    transform = eval_transform(checkpoint.preprocessing)
    with torch.no_grad():
        expected = checkpoint.model(torch.stack([transform(t) for t in tensors])).softmax(1)
    for prediction, row in zip(predictions, expected, strict=True):
        probabilities = prediction["probabilities"]
        assert len(prediction["classes"]) == len(probabilities) == 10
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        indices = [checkpoint.classes.index(name) for name in prediction["classes"]]
        assert torch.allclose(torch.tensor(probabilities), row[indices], atol=1e-6)


def test_predict_with_flip_tta_gives_the_mean_of_the_image_and_its_mirror(run, images, capsys):
    paths, tensors = images
    code, out, _ = run_cli(
        capsys, "predict", *paths, "--checkpoint", run[0], "--json", "--topk", "10", "--tta", "flip"
    )
    assert code == 0
    library = predict(load_checkpoint(run[0]), paths, 10, tta="flip")
    assert out.strip() == json.dumps([dataclasses.asdict(p) for p in library])

    # Ten steps leave the run's scores nearly alike for every image: a linear model of the
    # pixels, which a mirror image moves, stands in for it.
    torch.manual_seed(0)
    checkpoint = dataclasses.replace(
        load_checkpoint(run[0]),
        model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)),
    )
    batch = torch.stack([eval_transform(checkpoint.preprocessing)(t) for t in tensors])
    with torch.no_grad():
        plain = checkpoint.model(batch).softmax(1)
        expected = (plain + checkpoint.model(batch.flip(-1)).softmax(1)) / 2
    assert not torch.allclose(expected, plain, atol=1e-2)
    for prediction, row in zip(predict(checkpoint, paths, 10, tta="flip"), expected, strict=True):
        indices = [checkpoint.classes.index(name) for name in prediction.classes]
        assert torch.allclose(torch.tensor(prediction.probabilities), row[indices], atol=1e-6)


def test_predict_corrupt_image_names_its_path(run, images, capsys, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code, out, err = run_cli(capsys, "predict", images[0][0], bad, "--checkpoint", run[0])
    assert_one_line_error(code, err, "predict")
    assert out == ""
    assert f"cannot read image {str(bad)!r}" in err


def test_predict_topk_zero(run, images, capsys):
    code, _, err = run_cli(capsys, "predict", images[0][0], "--checkpoint", run[0], "--topk", "0")
    assert_one_line_error(code, err, "predict")
    assert "topk must be a positive integer, got 0" in err


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_training_state_is_not_a_checkpoint(run, images, capsys, command):
    state = run[0] / STATE_FILE
    assert state.is_file()
    given = ["--data", "synthetic:160"] if command == "eval" else [images[0][0]]
    code, _, err = run_cli(capsys, command, "--checkpoint", state, *given)
    assert_one_line_error(code, err, command)
    assert f"{str(state)!r} is a training state, which resuming a run reads" in err
    assert "give best.safetensors" in err


# --- train errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "nope"], "--data 'nope' is not one of: fashion-mnist, cifar10:DIR"),
        (
            ["--data", "synthetic:160", "--preset", "fast"],
            "preset must be one of paper, modern, got 'fast'",
        ),
        (["--data", "synthetic:160", "--lr", "-1"], "lr must be positive, got -1.0"),
        (
            ["--data", "synthetic:160", "--model", "mobilenet_v9"],
            "unknown model 'mobilenet_v9'; did you mean mobilenet_v2, mobilenet_v1",
        ),
        (
            ["--data", "synthetic:160", "--model", "mobilenet_v2", "--minimalistic"],
            "minimalistic applies to mobilenet_v3_large, mobilenet_v3_small only, got "
            "--minimalistic for mobilenet_v2",
        ),
        (
            ["--data", "synthetic:160", "--model", "mobilenet_v3_large", "--width-rule", "keras"],
            "width_rule must be one of tf, torchvision for mobilenet_v3_large, got 'keras'",
        ),
    ],
)
def test_train_errors_are_one_line(capsys, tmp_path, argv, message):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *argv, "--no-progress", "--out", out)
    assert_one_line_error(code, err, "train")
    assert message in err
    assert not out.exists()  # refused before anything was written


def test_train_refuses_an_out_that_holds_a_run(run, capsys):
    out = run[0]
    before = (out / "metrics.jsonl").read_text()
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    assert_one_line_error(code, err, "train")
    assert f"{str(out)!r} already holds a run; pass --resume to continue it" in err
    assert (out / "metrics.jsonl").read_text() == before


def test_resume_takes_no_settings(run, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", "--epochs", "3", "--out", run[0])
    assert_one_line_error(code, err, "train")
    assert (
        "--resume continues the saved run with its own settings; drop --epochs (it may change "
        "only --device, --workers, --state-every, --state-minutes)" in err
    )


def test_resume_an_empty_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path)
    assert_one_line_error(code, err, "train")
    state = tmp_path / STATE_FILE
    assert f"--resume: no training state at {str(state)!r}" in err
