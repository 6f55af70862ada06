"""The `weights`, `convert`, and published-weights `eval`/`predict` commands, run in process.

Weights come from reference files generated in their native formats (see test_pretrained),
given by path or served from 127.0.0.1 under copies of the real records. No network.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image
from published_files import (
    TOLERANCE,
    keras_reference,
    max_difference,
    record_of,
    serve,
    torchvision_reference,
    use_records,
    write_image,
    write_imagenet_folder,
)
from torchvision.models import MobileNet_V2_Weights
from torchvision.transforms.v2 import functional as TF

from mobilenets import create_model, load_model
from mobilenets.cli import main
from mobilenets.zoo.pretrained import RECORDS, imagenet_categories
from mobilenets.zoo.registry import TFSLIM_V2

WEIGHTS_KEYS = set(
    "model source tag url sha256 license preprocessing padding bn_eps top1 top5 reference "
    "num_classes in_chans small_input bn_momentum width_rule source_inputs "
    "test_preprocessing".split()
)

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, command: str, **paths) -> tuple[int, str, str]:
    """``main`` on ``command`` split at spaces, each ``{name}`` token replaced by ``paths[name]``
    (after the split, so a path may hold spaces): exit status, stdout, stderr."""
    code = main([token.format(**paths) for token in command.split()])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, command: str) -> None:
    assert code == 2
    assert err.startswith(f"mobilenets {command}: error: ")
    assert err.endswith("\n") and err.count("\n") == 1  # one line, no traceback


def torchvision_top(model, image_path, k: int) -> tuple[list[str], list[float]]:
    """The top-k classes of torchvision's model with torchvision's own ImageNet transforms."""
    transforms = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    with Image.open(image_path) as image:
        inputs = transforms(image.convert("RGB"))[None]  # resized by PIL, as torchvision does
    with torch.no_grad():
        probabilities = model.eval()(inputs).softmax(1)[0]
    values, indices = probabilities.topk(k)
    return [imagenet_categories()[i] for i in indices.tolist()], values.tolist()


def keras_top(model, image_path, k: int) -> list[str]:
    """The top-k classes with Keras's evaluation written out: resize the short side to
    96 / 0.875 = 110, center crop 96, x / 127.5 - 1."""
    with Image.open(image_path) as image:
        pixels = TF.pil_to_tensor(image.convert("RGB"))
    pixels = TF.center_crop(TF.resize(pixels, [110], antialias=True), [96])
    with torch.no_grad():
        logits = model.eval()(pixels.float()[None] / 127.5 - 1)
    return [imagenet_categories()[i] for i in logits[0].topk(k).indices.tolist()]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    folder = tmp_path_factory.mktemp("references")
    return {"torchvision": torchvision_reference(folder), "keras": keras_reference(folder)}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A 300x240 image: the resize to 256 and the crop to 224 both change it."""
    path = tmp_path_factory.mktemp("images") / "photo.png"
    write_image(path, (300, 240), seed=3)
    return path


# --- weights -----------------------------------------------------------------------------------


def test_weights_lists_every_record(capsys):
    code, out, err = run(capsys, "weights")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert (
        lines[0].split() == "model source tag top-1 top-5 resize/crop inputs padding bn_eps".split()
    )
    rows = [line.split() for line in lines[2 : lines.index("")]]
    assert len(rows) == len(RECORDS)
    assert {row[1] for row in rows} == {"keras", "torchvision", "timm", "mobilenets"}
    torchvision = "mobilenet_v2_1.0_224 torchvision IMAGENET1K_V1 71.9 90.3 256/224 bilinear"
    assert f"{torchvision} ImageNet mean/std symmetric 1e-05".split() in rows
    keras = "mobilenet_v2_0.35_96 keras imagenet 45.5 70.4 110/96 bilinear [-1, 1] same 0.001"
    assert keras.split() in rows
    ours = "mobilenet_v2_1.4_224 mobilenets fashion-mnist 95.4 99.9 -/28 bilinear mean 0.286, std "
    assert f"{ours}0.353 symmetric 1e-05".split() in rows  # the name to load; 28 px, gray


def test_weights_json_for_one_source(capsys):
    code, out, _ = run(capsys, "weights --source keras --json")
    assert code == 0
    records = json.loads(out)
    # TF-slim's V1 and V2 grids (16 + 22) and Keras's six MobileNetV3 files
    assert len(records) == len([r for r in RECORDS if r.source == "keras"]) == 38 + 6
    for record in records:
        assert set(record) == WEIGHTS_KEYS
        assert record["source"] == "keras" and record["sha256"] is None
        assert (record["padding"], record["bn_eps"]) == ("same", 0.001)
        assert record["url"].startswith("https://storage.googleapis.com/")
        resolution = int(record["model"].rsplit("_", 1)[1])
        assert record["preprocessing"]["resolution"] == resolution
        assert record["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    (row,) = [r for r in records if r["model"] == "mobilenet_v2_0.35_96"]
    assert (row["top1"], row["top5"]) == (45.5, 70.4)


def test_weights_of_our_own(capsys):
    code, out, _ = run(capsys, "weights --source mobilenets --json")
    (record,) = json.loads(out)
    assert code == 0 and (record["source"], record["tag"]) == ("mobilenets", "fashion-mnist")
    assert (record["num_classes"], record["in_chans"], record["small_input"]) == (10, 1, True)


def test_weights_rejects_an_unknown_source(capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["weights", "--source", "tensorflow"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "invalid choice: 'tensorflow'" in err


# --- convert -----------------------------------------------------------------------------------


def test_convert_torchvision_then_predict_from_the_file(capsys, references, image, tmp_path):
    reference = references["torchvision"]
    out = tmp_path / "mobilenet_v2_tv.safetensors"
    command = "convert {src} --from torchvision --model mobilenet_v2_1.0_224 --out {out}"
    code, stdout, err = run(capsys, command, src=reference.path, out=out)
    assert (code, err) == (0, "")
    assert f"wrote {out} (padding symmetric, bn_eps 1e-05)" in stdout
    assert max_difference(load_model(out), reference) <= TOLERANCE

    command = "predict {image} --checkpoint {out} --topk 3 --json"
    code, stdout, _ = run(capsys, command, image=image, out=out)
    assert code == 0
    (prediction,) = json.loads(stdout)
    assert prediction["path"] == str(image)
    assert len(prediction["classes"]) == 3
    assert set(prediction["classes"]) <= set(imagenet_categories())
    assert prediction["probabilities"] == sorted(prediction["probabilities"], reverse=True)
    names, probabilities = torchvision_top(reference.model, image, 3)
    assert prediction["classes"] == names
    assert prediction["probabilities"] == pytest.approx(probabilities, abs=1e-4)


def test_convert_keras_then_predict_from_the_file(capsys, references, image, tmp_path):
    reference = references["keras"]
    out = tmp_path / "mobilenet_v2_keras.safetensors"
    command = "convert {src} --from keras --model mobilenet_v2_0.35_96 --out {out}"
    code, stdout, err = run(capsys, command, src=reference.path, out=out)
    assert (code, err) == (0, "")
    assert f"wrote {out} (padding same, bn_eps 0.001)" in stdout
    model = load_model(out)
    assert (model.config.padding, model.config.bn_eps) == ("same", 1e-3)
    assert max_difference(model, reference) <= TOLERANCE

    command = "predict {image} --checkpoint {out} --topk 3 --json"
    code, stdout, _ = run(capsys, command, image=image, out=out)
    assert code == 0
    (prediction,) = json.loads(stdout)
    assert set(prediction["classes"]) <= set(imagenet_categories())
    assert prediction["classes"] == keras_top(model, image, 3)


def test_convert_refuses_a_file_for_another_model(capsys, references, tmp_path):
    out = tmp_path / "half.safetensors"
    command = "convert {src} --from torchvision --model mobilenet_v2_0.5_224 --out {out}"
    code, _, err = run(capsys, command, src=references["torchvision"].path, out=out)
    assert_one_line_error(code, err, "convert")
    assert "tensors of another shape" in err and "(32, 3, 3, 3)" in err
    assert not out.exists()


def test_convert_refuses_an_output_that_is_not_safetensors(capsys, references, tmp_path):
    out = tmp_path / "model.pt"
    command = "convert {src} --from torchvision --model mobilenet_v2_1.0_224 --out {out}"
    code, _, err = run(capsys, command, src=references["torchvision"].path, out=out)
    assert_one_line_error(code, err, "convert")
    assert ".safetensors" in err and str(out) in err
    assert not out.exists()


def test_convert_names_a_file_of_another_source(capsys, references, tmp_path):
    command = "convert {src} --from keras --model mobilenet_v2_1.0_224 --out {out}"
    path = references["torchvision"].path
    code, _, err = run(capsys, command, src=path, out=tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "convert")
    assert f"cannot read Keras weights file {str(path)!r}" in err


@pytest.mark.parametrize("source, name", [("torchvision", "missing.pth"), ("keras", "gone.h5")])
def test_convert_names_a_missing_source_file(capsys, tmp_path, source, name):
    missing, out = tmp_path / name, tmp_path / "x.safetensors"
    command = f"convert {{src}} --from {source} --model mobilenet_v2_1.0_224 --out {{out}}"
    code, _, err = run(capsys, command, src=missing, out=out)
    assert_one_line_error(code, err, "convert")
    assert str(missing) in err and "does not exist" in err
    assert not out.exists()


# --- predict and eval with published weights -----------------------------------------------------


def test_predict_with_torchvision_weights_matches_torchvision(
    capsys, server, references, image, monkeypatch
):
    reference = references["torchvision"]
    record = record_of("torchvision", "mobilenet_v2_1.0_224", "IMAGENET1K_V1")
    local = serve(server, record, reference.served_name, reference.body, reference.sha256[:8])
    use_records(monkeypatch, local)
    names, probabilities = torchvision_top(reference.model, image, 5)

    command = "predict {image} --model mobilenet_v2_1.0_224 --weights torchvision"
    code, out, _ = run(capsys, command, image=image)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(image) and len(lines) == 6
    printed = [re.fullmatch(r"  +(\d+\.\d\d)%  (.+)", line).groups() for line in lines[1:]]
    assert [name for _, name in printed] == names  # top-1 first: torchvision's own
    percents = [float(percent) for percent, _ in printed]
    assert percents == pytest.approx([100 * p for p in probabilities], abs=0.006)
    assert len(server.requests) == 1

    code, out, _ = run(capsys, command + " --json", image=image)
    (prediction,) = json.loads(out)
    assert prediction["classes"] == names
    assert prediction["probabilities"] == pytest.approx(probabilities, abs=1e-4)
    assert len(server.requests) == 1  # the cached file


def test_eval_with_keras_weights_prints_a_table_row(
    capsys, server, references, monkeypatch, tmp_path
):
    reference = references["keras"]
    record = record_of("keras", "mobilenet_v2_0.35_96")
    use_records(monkeypatch, serve(server, record, reference.path.name, reference.body, None))
    data, results = tmp_path / "imagenet", tmp_path / "eval.json"
    write_imagenet_folder(data, (7, 42, 913), per_class=2)

    command = (
        "eval --model mobilenet_v2_0.35_96 --weights keras --data {data} --device cpu "
        "--batch-size 4 --json {results}"
    )
    code, out, _ = run(capsys, command, data=data, results=results)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("| Model | Params | Top-1 | Top-5 |")
    assert lines[1].startswith("|---|")
    assert lines[2].startswith("| mobilenet_v2_0.35_96 (keras) |")
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    saved = json.loads(results.read_text())
    assert (saved["count"], saved["published"]) == (6, {"top1": 45.5, "top5": 70.4})
    assert 0 <= saved["top1"] <= saved["top5"] <= 1
    assert saved["weights"]["source"] == "keras"
    params = sum(p.numel() for p in create_model("mobilenet_v2_0.35_96").parameters())
    (published,) = [row[4:] for row in TFSLIM_V2 if row[:2] == (0.35, 96)]
    assert published == (45.5, 70.4)  # TF-slim's figures, shown as fractions
    assert cells == [
        "mobilenet_v2_0.35_96 (keras)",
        f"{params / 1e6:.2f}M",
        f"{saved['top1']:.3f}",
        f"{saved['top5']:.3f}",
        "0.455",
        "0.704",
        "6",
    ]
    assert (saved["tta"], saved["passes"]) == ("none", 1)

    code, out, _ = run(capsys, command + " --tta flip", data=data, results=results)
    assert code == 0
    assert out.splitlines()[2].startswith("| mobilenet_v2_0.35_96 (keras) + flip TTA |")
    flipped = json.loads(results.read_text())
    assert (flipped["tta"], flipped["passes"], flipped["count"]) == ("flip", 2, 6)


@pytest.mark.parametrize(
    "command, message",
    [
        ("eval --checkpoint run --model mobilenet_v2_1.0_224 --weights keras --data d", "not both"),
        ("eval --model mobilenet_v2_1.0_224 --data d", "--weights"),
        ("predict a.jpg --checkpoint run --model mobilenet_v2_1.0_224", "not both"),
        ("predict a.jpg --model mobilenet_v2_1.0_224", "--weights"),
        ("predict a.jpg --weights keras", "--model"),
    ],
)
def test_eval_and_predict_want_a_checkpoint_or_a_model_with_weights(capsys, command, message):
    code, out, err = run(capsys, command)
    assert_one_line_error(code, err, command.split()[0])
    assert message in err and out == ""
