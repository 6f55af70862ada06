"""`mobilenets demo web`: the page in headless Chromium gives onnxruntime's results in Python.

One export is shared: a one-channel classifier and an SSDLite detector, both 96 px with random
weights (the detector's heads tuned as in tests/tasks/detection/test_export.py so that tens
of boxes pass the score threshold), quantized to int8 by the command on a few synthetic training
images. The page is served on a free port and driven by Selenium through Debian's chromium and
chromedriver (`.ci/run` installs them; `make test` installs onnxruntime-web with `npm ci
--prefix web`); without them these tests fail rather than skip. For an image at the models'
input size the page builds the same input tensors as eval_transform, to the bit, and
onnxruntime-web's outputs are onnxruntime's.

Errors a user can cause (a corrupt or foreign .onnx, a checkpoint of another task, an image the
browser cannot decode) give one clear message and leave nothing half written.
"""

import contextlib
import io
import json
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image, ImageDraw
from random_weights import background_leaning_detector, randomize_torch
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from torchvision import tv_tensors

from mobilenets.cli import demo as demo_cli
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.spec import ModelConfig
from mobilenets.data import detection_transforms
from mobilenets.data.classification import load_splits
from mobilenets.data.common import open_image
from mobilenets.data.transforms import eval_transform
from mobilenets.deploy import web_demo
from mobilenets.deploy.quantize import conv_weight_sources, int16_pair_bound
from mobilenets.engine.checkpoint import save_checkpoint
from mobilenets.tasks.detection.graphs import NMS_OUTPUT_NAMES
from mobilenets.zoo.segmenters import create_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

RESOLUTION = 96
CLASSIFIER_DATA = "synthetic:20"
DETECTOR_DATA = "synthetic-shapes:4"
DETECTOR_CLASSES = ("__background__", "circle", "square", "triangle", "star")
CLASSIFIER_PREPROCESSING = Preprocessing(RESOLUTION, (0.45,), (0.22,), channels=1)
DETECTOR_PREPROCESSING = Preprocessing(RESOLUTION, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",  # a camera
)
TOLERANCE = 1e-4
WAIT = 60  # seconds: loading onnxruntime-web and the models, one frame


# --- The models, the export and the server -----------------------------------------------------


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """Synthetic detection data is generated into $MOBILENETS_DATA: a folder of this module's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_DATA", str(tmp_path_factory.mktemp("data")))
        yield


def classifier_checkpoint(path: Path) -> Path:
    """A one-channel V2 0.35 at 96 px, random weights, the synthetic data's classes."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            arch="mobilenet_v2", alpha=0.35, resolution=RESOLUTION, num_classes=10, in_chans=1
        )
    )
    randomize_torch(model)
    classes = load_splits(CLASSIFIER_DATA, RESOLUTION).classes
    return save_checkpoint(
        model, path, classes, CLASSIFIER_PREPROCESSING, train_config={"data": CLASSIFIER_DATA}
    )


def detector_checkpoint(path: Path) -> Path:
    """SSDLite 0.35 at 96 px, random weights; heads that favour the background but pass tens
    of boxes through the 0.01 score threshold."""
    model = background_leaning_detector(len(DETECTOR_CLASSES), RESOLUTION)
    return save_checkpoint(
        model.eval(),
        path,
        DETECTOR_CLASSES,
        DETECTOR_PREPROCESSING,
        category_ids=list(range(len(DETECTOR_CLASSES))),
        train_config={"data": DETECTOR_DATA},
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_folder):
    folder = tmp_path_factory.mktemp("checkpoints")
    return (
        classifier_checkpoint(folder / "classifier.safetensors"),
        detector_checkpoint(folder / "detector.safetensors"),
    )


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """`mobilenets demo web CLASSIFIER DETECTOR --no-serve`: the folder and what it printed."""
    out = tmp_path_factory.mktemp("demo") / "web-demo"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            [
                "demo",
                "web",
                *map(str, checkpoints),
                "--out",
                str(out),
                "--no-serve",
                "--calibration-images",
                "4",
            ]
        )
    assert code == 0
    return out, stdout.getvalue()


@pytest.fixture(scope="module")
def server(exported):
    out, _ = exported
    demo_server = web_demo.serve_demo(out, port=0)
    thread = threading.Thread(target=demo_server.serve_forever, daemon=True)
    thread.start()
    yield demo_server
    demo_server.shutdown()
    demo_server.server_close()


@pytest.fixture(scope="module")
def browser(server):
    """Headless Chromium on the page, its models loaded; its camera is Chromium's fake one
    (a moving test pattern), allowed without asking."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get(server.url)
        WebDriverWait(driver, WAIT).until(
            lambda page: page.execute_script("return document.body.dataset.state") != "loading"
        )
        state = driver.execute_script("return document.body.dataset.state")
        assert state == "ready", driver.find_element(By.ID, "error").text
        yield driver
    finally:
        driver.quit()


# --- Images, and what Python makes of them -----------------------------------------------------


def colour_image(path: Path) -> Path:
    """Shapes on a noisy background at the models' input size (no resizing)."""
    generator = np.random.default_rng(0)
    pixels = generator.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 12, 50, 52), fill=(220, 40, 30))
    draw.rectangle((55, 40, 90, 85), fill=(30, 200, 60))
    image.save(path)
    return path


def grey_image(path: Path) -> Path:
    """A greyscale PNG (PIL mode L): the one-channel classifier reads its values as they are."""
    ramp = np.add.outer(np.arange(RESOLUTION), np.arange(RESOLUTION)) * 255 // (2 * RESOLUTION)
    Image.fromarray(ramp.astype(np.uint8), mode="L").save(path)
    return path


def python_inputs(path: Path) -> dict[str, np.ndarray]:
    """The input tensors of the classifier (as `mobilenets predict` reads the file) and of the
    detector (as `mobilenets detect predict` does)."""
    image = open_image(path)
    classifier = eval_transform(CLASSIFIER_PREPROCESSING)(image)
    empty = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.zeros(0, 4), format="XYXY", canvas_size=(RESOLUTION, RESOLUTION)
        ),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    transform = detection_transforms.eval_transform(DETECTOR_PREPROCESSING)
    detector, _ = transform(image.convert("RGB"), empty)
    return {"classifier": classifier[None].numpy(), "detector": detector[None].numpy()}


def onnxruntime_results(folder: Path, inputs: dict[str, np.ndarray]) -> dict:
    """onnxruntime's top-5 and detections of the exported files on ``inputs``."""
    classifier = onnxruntime.InferenceSession(
        str(folder / "classifier.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = classifier.run(["logits"], {"input": inputs["classifier"]})
    logits = logits[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top5 = np.argsort(-probabilities, kind="stable")[:5]
    detector = onnxruntime.InferenceSession(
        str(folder / "detector.onnx"), providers=["CPUExecutionProvider"]
    )
    boxes, scores, classes, count = detector.run(
        list(NMS_OUTPUT_NAMES), {"input": inputs["detector"]}
    )
    found = int(count[0])
    return {
        "top5": top5.tolist(),
        "probabilities": probabilities[top5],
        "boxes": boxes[0, :found],
        "scores": scores[0, :found],
        "classes": classes[0, :found],
    }


def upload(browser, path: Path) -> None:
    browser.find_element(By.ID, "file").send_keys(str(path))


def wait_for_result(browser, name: str) -> dict:
    script = "return window.demoResult && window.demoResult.image"
    WebDriverWait(browser, WAIT).until(
        lambda page: page.execute_script(script) == name or page.find_element(By.ID, "error").text
    )
    assert browser.find_element(By.ID, "error").text == ""
    return browser.execute_script("return window.demoResult")


def page_inputs(browser) -> dict[str, np.ndarray]:
    inputs = browser.execute_script(
        "return {classifier: Array.from(window.demoInputs.classifier),"
        " detector: Array.from(window.demoInputs.detector)}"
    )
    shapes = {
        "classifier": (1, 1, RESOLUTION, RESOLUTION),
        "detector": (1, 3, RESOLUTION, RESOLUTION),
    }
    return {
        kind: np.array(values, np.float32).reshape(shapes[kind]) for kind, values in inputs.items()
    }


# --- The page ------------------------------------------------------------------------------------


@pytest.mark.slow  # headless Chromium
@pytest.mark.parametrize("make_image", [colour_image, grey_image], ids=["colour", "grey"])
def test_the_page_gives_onnxruntimes_top5_and_boxes(browser, exported, tmp_path, make_image):
    out, _ = exported
    path = make_image(tmp_path / f"{make_image.__name__}.png")
    upload(browser, path)
    result = wait_for_result(browser, path.name)
    inputs = python_inputs(path)
    for kind, tensor in page_inputs(browser).items():
        assert np.array_equal(tensor, inputs[kind]), kind  # eval_transform's, to the bit
    expected = onnxruntime_results(out, inputs)

    assert [entry["index"] for entry in result["top5"]] == expected["top5"]
    probabilities = [entry["probability"] for entry in result["top5"]]
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=0, atol=TOLERANCE)
    names = [entry["name"] for entry in result["top5"]]
    assert names == [f"class_{index}" for index in expected["top5"]]

    found = result["detections"]
    assert len(found) == len(expected["scores"]) > 10
    np.testing.assert_allclose(
        [entry["box"] for entry in found], expected["boxes"], rtol=0, atol=TOLERANCE
    )
    np.testing.assert_allclose(
        [entry["score"] for entry in found], expected["scores"], rtol=0, atol=TOLERANCE
    )
    assert [entry["class"] for entry in found] == expected["classes"].tolist()
    assert [entry["name"] for entry in found] == [DETECTOR_CLASSES[c] for c in expected["classes"]]

    latency = browser.find_element(By.ID, "latency").text
    assert "classifier" in latency and "detector" in latency and " ms" in latency
    assert len(browser.find_elements(By.CSS_SELECTOR, "#top5 li")) == 5


@pytest.mark.slow  # headless Chromium
def test_an_image_the_browser_cannot_decode_shows_one_message(browser, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but no image after the signature")
    upload(browser, broken)
    WebDriverWait(browser, WAIT).until(lambda page: page.find_element(By.ID, "error").text)
    message = browser.find_element(By.ID, "error").text
    assert message == "cannot read broken.png: the browser cannot decode it as an image"
    assert browser.execute_script("return window.demoResult") is None
    assert browser.find_elements(By.CSS_SELECTOR, "#top5 li") == []

    path = colour_image(tmp_path / "after.png")  # the page goes on working
    upload(browser, path)
    result = wait_for_result(browser, "after.png")
    assert len(result["top5"]) == 5
    assert not browser.find_element(By.ID, "error").is_displayed()


@pytest.mark.slow  # headless Chromium
def test_the_camera_runs_frame_after_frame_until_stopped(browser):
    camera = browser.find_element(By.ID, "camera")
    camera.click()
    frames = []  # the page's results of successive camera frames

    def next_frame(page) -> bool:
        result = page.execute_script("return window.demoResult")
        if result and result["image"] == "camera" and result not in frames:
            frames.append(result)
        return len(frames) >= 2

    WebDriverWait(browser, WAIT).until(next_frame)
    assert camera.text == "Stop the camera"
    camera.click()
    assert camera.text == "Start the camera"
    for result in frames:
        assert result["width"] > 0 and result["height"] > 0
        assert len(result["top5"]) == 5 and len(result["detections"]) > 0
        assert set(result["latency"]) == {"classifier", "detector", "frame"}
    assert browser.find_element(By.ID, "error").text == ""


# --- The command, the folder and the server ------------------------------------------------------


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["demo", "web", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_writes_int8_files_and_a_manifest(exported, checkpoints):
    out, printed = exported
    lines = printed.splitlines()
    assert lines == [
        f"wrote {out}",
        "  classifier.onnx: classifier mobilenet_v2_0.35_96 (int8, calibrated on 4 training "
        f"images), 10 classes, input 1x96x96, {lines[1].split(', ')[-1]}",
        "  detector.onnx: detector ssdlite_mobilenet_v2_0.35_96 (int8, calibrated on 4 training "
        f"images), 4 classes, input 3x96x96, {lines[2].split(', ')[-1]}",
    ]
    assert sorted(path.name for path in out.iterdir()) == [
        "classifier.onnx",
        "detector.onnx",
        "manifest.json",
    ]
    assert [path.name for path in out.parent.iterdir()] == [out.name]  # no temporary folder left
    manifest = json.loads((out / "manifest.json").read_text())
    classifier, detector = manifest["models"]
    assert (classifier["kind"], classifier["input"], classifier["outputs"]) == (
        "classifier",
        "input",
        ["logits"],
    )
    assert Preprocessing.from_dict(classifier["preprocessing"]) == CLASSIFIER_PREPROCESSING
    assert classifier["classes"] == [f"class_{index}" for index in range(10)]
    assert (detector["kind"], detector["outputs"]) == ("detector", list(NMS_OUTPUT_NAMES))
    assert Preprocessing.from_dict(detector["preprocessing"]) == DETECTOR_PREPROCESSING
    assert detector["classes"] == list(DETECTOR_CLASSES)
    for entry in manifest["models"]:
        quantization = entry["quantization"]
        assert (quantization["format"], quantization["calibration_images"]) == ("QDQ", 4)
        assert entry["bytes"] == (out / entry["file"]).stat().st_size
        model = onnx.load(str(out / entry["file"]))
        quantized, floating = conv_weight_sources(model)
        assert quantized > 50 and floating == ()  # every conv has int8 weights
        # 7-bit weights: onnxruntime-web's wasm kernels and onnxruntime's x86 ones, with or
        # without VNNI, compute the same int8 sums, so the page's results equal onnxruntime's
        assert int16_pair_bound(model).fits_int16
        assert quantization["weights"] == "s8 per-channel, 7-bit range [-64, 64]"


def test_onnx_files_of_ours_are_used_as_they_are(exported, tmp_path, capsys):
    out, _ = exported
    code, printed, err = run_cli(
        capsys, out / "detector.onnx", "--out", tmp_path / "again", "--no-serve"
    )
    assert code == 0, err
    assert "detector.onnx: detector ssdlite_mobilenet_v2_0.35_96 (int8" in printed
    copied = (tmp_path / "again" / "detector.onnx").read_bytes()
    assert copied == (out / "detector.onnx").read_bytes()
    code, _, err = run_cli(capsys, out / "detector.onnx", "--calibration-images", 4, "--no-serve")
    assert code == 2
    assert "--calibration-images applies to a checkpoint, and only ONNX files are given" in err


def test_a_demo_folder_is_served_again_as_it_is(exported, capsys):
    out, _ = exported
    code, printed, _ = run_cli(capsys, out, "--no-serve")
    assert code == 0
    assert printed.splitlines()[0] == f"{out}: as written before"
    code, _, err = run_cli(capsys, out, "--out", out.parent / "other", "--no-serve")
    assert code == 2
    assert err == (
        f"mobilenets demo: error: --out applies to an export; {str(out)!r} is a demo folder, "
        "served as it is\n"
    )


def foreign_onnx(path: Path, outputs: tuple[str, ...] = ("logits",), per_pixel=False) -> Path:
    """An ONNX file of someone else's: an input named as ours, no metadata; outputs [1, 192],
    or ``per_pixel`` [1, 3, 8, 8] as a segmenter's."""
    shape = [1, 3, 8, 8]
    graph_input = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, shape)
    operator = "Identity" if per_pixel else "Flatten"
    nodes = [onnx.helper.make_node(operator, ["input"], [name]) for name in outputs]
    graph_outputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, shape if per_pixel else [1, 192]
        )
        for name in outputs
    ]
    graph = onnx.helper.make_graph(nodes, "foreign", [graph_input], graph_outputs)
    onnx.save(onnx.helper.make_model(graph), path)
    return path


def segmentation_checkpoint(path: Path) -> Path:
    model = create_segmenter("deeplabv3_mobilenet_v2", num_classes=3, resolution=64)
    return save_checkpoint(
        model, path, ("background", "a", "b"), Preprocessing(64, (0.5,) * 3, (0.25,) * 3)
    )


def corrupt_onnx(path: Path) -> Path:
    path.write_bytes(b"\x08\x07 this is not a protobuf of a model")
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (corrupt_onnx, "cannot read ONNX file '{path}': Error parsing message"),
        (
            foreign_onnx,
            "'{path}' is not an export of mobilenets: its metadata has no classes, "
            "preprocessing, model_config",
        ),
        (
            lambda path: foreign_onnx(path, ("boxes", "scores")),
            "'{path}' is a detector without NMS; the page needs it inside the file",
        ),
        (
            lambda path: foreign_onnx(path, ("labels",)),
            "'{path}' has outputs labels; the demo runs a classifier (logits [N, classes]) or a "
            "detector with NMS (boxes, scores, classes, count)",
        ),
        (
            lambda path: foreign_onnx(path, per_pixel=True),
            "'{path}' is a segmenter (output logits per pixel); the demo runs a classifier and a "
            "detector",
        ),
        (
            lambda path: segmentation_checkpoint(path.with_suffix(".safetensors")),
            "'{path}' is a segmentation checkpoint; the demo runs a classifier and a detector",
        ),
    ],
    ids=[
        "corrupt",
        "foreign",
        "without-nms",
        "other-outputs",
        "segmenter",
        "segmentation-checkpoint",
    ],
)
def test_a_file_the_demo_cannot_run_is_one_message_and_writes_nothing(
    tmp_path, capsys, make, message
):
    path = make(tmp_path / "model.onnx")
    out = tmp_path / "out" / "demo"
    code, printed, err = run_cli(capsys, path, "--out", out, "--no-serve")
    assert code == 2 and printed == ""
    assert err.startswith(f"mobilenets demo: error: {message.format(path=path)}")
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_two_of_a_kind_and_missing_training_data_are_refused(checkpoints, tmp_path, capsys):
    classifier, _ = checkpoints
    code, _, err = run_cli(capsys, classifier, classifier, "--no-serve")
    assert code == 2
    assert "are both classifiers; the demo runs one classifier and one detector" in err
    bare = tmp_path / "bare.safetensors"  # no training run recorded
    save_checkpoint(
        build_model(
            ModelConfig(
                arch="mobilenet_v2", alpha=0.35, resolution=RESOLUTION, num_classes=10, in_chans=1
            )
        ),
        bare,
        [f"class_{i}" for i in range(10)],
        CLASSIFIER_PREPROCESSING,
    )
    code, _, err = run_cli(capsys, bare, "--out", tmp_path / "out", "--no-serve")
    assert code == 2
    assert f"{str(bare)!r} records no dataset: give --classifier-data SPEC" in err
    code, _, err = run_cli(capsys, bare, "--detector-data", DETECTOR_DATA, "--no-serve")
    assert code == 2
    assert "--detector-data applies to a detector checkpoint, and none is given" in err
    assert not (tmp_path / "out").exists()


def test_a_folder_is_replaced_only_by_a_complete_demo(exported, tmp_path, monkeypatch):
    out, _ = exported
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(MobileNetsError, match="exists and is not a demo folder; give a new"):
        web_demo.export_demo(other, classifier=out / "classifier.onnx")
    assert [path.name for path in other.iterdir()] == ["mine.txt"]

    previous = tmp_path / "demo"
    web_demo.export_demo(
        previous, classifier=out / "classifier.onnx", detector=out / "detector.onnx"
    )
    before = {path.name: path.read_bytes() for path in previous.iterdir()}

    def fail(path, value):
        raise OSError("disk full")

    monkeypatch.setattr(web_demo, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        web_demo.export_demo(previous, classifier=out / "classifier.onnx")
    assert {path.name: path.read_bytes() for path in previous.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo", "notes"]
    monkeypatch.undo()

    web_demo.export_demo(previous, classifier=out / "classifier.onnx")
    assert sorted(path.name for path in previous.iterdir()) == ["classifier.onnx", "manifest.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo", "notes"]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return response.status, response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_the_server_sends_the_page_the_runtime_and_the_models_only(server, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # a proxy in the environment must not see 127.0.0.1
    assert fetch(server.url) == (200, "text/html")
    assert fetch(server.url + "demo.js") == (200, "text/javascript")
    assert fetch(server.url + "ort/ort-wasm-simd-threaded.wasm") == (200, "application/wasm")
    assert fetch(server.url + "ort/ort-wasm-simd-threaded.mjs") == (200, "text/javascript")
    assert fetch(server.url + "models/manifest.json") == (200, "application/json")
    assert fetch(server.url + "models/detector.onnx") == (200, "application/octet-stream")
    for path in (
        "package.json",
        "models/",
        "ort/ort.node.min.js",
        "ort/%2e%2e/%2e%2e/index.html",
        "node_modules/onnxruntime-web/package.json",
    ):
        assert fetch(server.url + path)[0] == 404, path


def test_the_page_needs_its_folder_and_onnxruntime_web(tmp_path):
    with pytest.raises(MobileNetsError, match="runs from a source checkout of mobilenets"):
        web_demo.check_web(tmp_path)
    for name in web_demo.PAGE_FILES:
        (tmp_path / name).write_text("")
    with pytest.raises(MobileNetsError, match=r"run `npm ci --prefix web` in the repository"):
        web_demo.check_web(tmp_path)


def test_onnxruntime_web_is_pinned_and_not_committed():
    root = web_demo.WEB_ROOT
    pinned = json.loads((root / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    assert pinned[0].isdigit()  # an exact version, no range
    locked = json.loads((root / "package-lock.json").read_text())
    assert locked["packages"]["node_modules/onnxruntime-web"]["version"] == pinned
    installed = root / "node_modules" / "onnxruntime-web" / "package.json"
    assert json.loads(installed.read_text())["version"] == pinned
    ignored = subprocess.run(["git", "check-ignore", "-q", str(installed)], cwd=root)
    assert ignored.returncode == 0


def test_the_names_the_cli_and_the_layers_repeat_are_the_librarys():
    assert web_demo.DETECTOR_OUTPUTS == NMS_OUTPUT_NAMES
    assert (demo_cli.CLASSIFIER, demo_cli.DETECTOR) == (web_demo.CLASSIFIER, web_demo.DETECTOR)
    assert demo_cli.MANIFEST == web_demo.MANIFEST


def test_the_command_serves_until_interrupted(exported, capsys, monkeypatch):
    out, _ = exported

    def interrupted(server):
        assert server.server_address[1] > 0  # bound to the free port it was given
        raise KeyboardInterrupt  # Ctrl-C

    monkeypatch.setattr(web_demo.DemoServer, "serve_forever", interrupted)
    code, printed, _ = run_cli(capsys, out, "--port", 0)
    assert code == 0
    serving, stopped = printed.splitlines()[-2:]
    assert serving.startswith("serving the page at http://127.0.0.1:")
    assert serving.endswith("/ (Ctrl-C stops)")
    assert stopped == "stopped"


def test_a_port_in_use_is_one_message(exported, capsys):
    out, _ = exported
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(capsys, out, "--port", port)
    assert code == 2
    expected = f"mobilenets demo: error: cannot serve on --host '127.0.0.1' --port {port}: "
    assert err.startswith(expected) and err.count("\n") == 1
