"""int8 segmenters: an ONNX file (onnxruntime static quantization) whose every conv reads int8
weights and which keeps the fp32 file's metadata, an ExecuTorch program (PT2E, XNNPACK) within
its allowance of the quantized reference, logits or class map; the mIoU of the fp32 model and of
the int8 file on the validation split; images of any size fitted to the file's one input size;
a failed export leaves no file; user errors are one line and write nothing.

The model is V2 0.35 with random weights and BN statistics on synthetic-shapes:10 (10 training
and 2 validation images of 128 px). Its masks are no good (mIoU about 0.02) but vary from pixel to
pixel as a trained model's do; its two best logits are often close, so int8 keeps the fp32 class
of only 80 to 90% of the pixels (a trained model's decided pixels keep theirs), where a broken
file keeps about one in five. The .pte tests lower twice (a minute each on a slow CPU; the failing
check reuses the first program; the command's class-map program is a V1 0.25's, whose graph
lowers in about two thirds of the time) and are slow.
"""

import onnx
import pytest
import torch
from random_weights import randomize_torch

from mobilenets.cli import main, segment
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.segmentation_spec import SegmentationConfig
from mobilenets.core.spec import ModelConfig
from mobilenets.data.segmentation import load_segmentation_data
from mobilenets.data.segmentation_transforms import eval_transform
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy import quantize
from mobilenets.deploy.onnx_export import onnx_session, read_onnx_metadata
from mobilenets.engine.checkpoint import save_checkpoint
from mobilenets.engine.device import cpu_info
from mobilenets.tasks.segmentation import export as segmentation_export
from mobilenets.tasks.segmentation import quantize as segmentation_quantize
from mobilenets.tasks.segmentation.evaluate import evaluate
from mobilenets.tasks.segmentation.inference import load_segmentation_checkpoint
from mobilenets.tasks.segmentation.quantize import (
    SquareInputSegmenter,
    file_segmenter,
    fit_to_square,
)
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.segmenters import create_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")
needs_executorch = pytest.mark.skipif(
    mobile.executorch_version() is None,
    reason="executorch is not installed (pip install 'mobilenets[mobile]')",
)

DATA = "synthetic-shapes:10"
CLASSES = ("background", "circle", "square", "triangle", "star")
PREPROCESSING = Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
CALIBRATION = 8
CONVS = 55  # the 54 of V2's body and head that fold a BN, and the classifier
AGREEMENT = 0.75  # the least share of pixels of the fp32 model's class (85 to 90% measured)


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    """Synthetic data is generated into $MOBILENETS_DATA: a folder of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_DATA", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A segmentation run's best checkpoint for the synthetic shapes' classes, at 64 px."""
    torch.manual_seed(0)
    model = randomize_torch(
        create_segmenter(
            "deeplabv3_mobilenet_v2", alpha=0.35, resolution=64, num_classes=len(CLASSES)
        )
    )
    with torch.no_grad():  # logits of about 2, as in test_segmentation_export
        model.classifier.weight *= 0.25
    path = tmp_path_factory.mktemp("run") / "best.safetensors"
    save_checkpoint(model, path, CLASSES, PREPROCESSING, metrics={"mIoU": 0.5})
    return path


@pytest.fixture(scope="module")
def val_set():
    dataset = load_segmentation_data(DATA, splits=("val",)).val
    dataset.transform = eval_transform(PREPROCESSING)
    return dataset


def agreement(file: SquareInputSegmenter, model, dataset) -> float:
    """The share of validation pixels where the file and the fp32 model pick the same class."""
    same = total = 0
    with torch.no_grad():
        for index in range(len(dataset)):
            image = dataset[index][0][None]
            same += int((file(image).argmax(1) == model(image).argmax(1)).sum())
            total += image.shape[-2] * image.shape[-1]
    return same / total


def no_temporary_files(folder) -> bool:
    return not [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


# --- Images of any size through one input size -----------------------------------------------


def test_an_image_is_padded_or_shrunk_to_the_square():
    image = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5) + 1
    canvas, size = fit_to_square(image, 8)
    assert canvas.shape == (1, 2, 8, 8) and size == (3, 5)
    assert torch.equal(canvas[0, :, :3, :5], image)  # top-left, unscaled
    assert canvas[0, :, 3:].abs().sum() == 0 and canvas[0, :, :, 5:].abs().sum() == 0
    wide = torch.ones(3, 10, 20)
    canvas, size = fit_to_square(wide, 8)
    assert canvas.shape == (1, 3, 8, 8) and size == (4, 8)  # aspect kept
    assert torch.allclose(canvas[0, :, :4], torch.ones(3, 4, 8)) and canvas[0, :, 4:].sum() == 0


def test_scores_come_back_at_the_image_size():
    # a "segmenter" whose logits are its input's first two channels: the scores are the image's
    logits = SquareInputSegmenter(lambda canvas: canvas[:, :2], 8, num_classes=2)
    images = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(images), images[:, :2])
    larger = torch.randn(1, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    assert logits(larger).shape == (1, 2, 16, 12)
    # a class map becomes one-hot scores, and its argmax is the map
    classes = SquareInputSegmenter(lambda canvas: (canvas[:, 0] > 0).long(), 8, num_classes=3)
    scores = classes(images)
    assert scores.shape == (2, 3, 5, 7) and torch.equal(scores.sum(1), torch.ones(2, 5, 7))
    assert torch.equal(scores.argmax(1), (images[:, 0] > 0).long())
    assert classes(larger).shape == (1, 3, 16, 12)
    classifier = SquareInputSegmenter(lambda canvas: canvas.mean((2, 3)), 8, num_classes=3)
    with pytest.raises(
        MobileNetsError,
        match=r"returns logits \[1, K, 8, 8\] or a class map "
        r"\[1, 8, 8\], this one \[1, 3\]",
    ):
        classifier(images)


# --- int8 ONNX -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_int8(checkpoint):
    """Logits at 128 px, the images' own size: the fp32 scores are segment eval's."""
    path = checkpoint.parent / "int8.onnx"
    return segmentation_quantize.quantize(
        checkpoint.parent, DATA, path, resolution=128, calibration_images=CALIBRATION
    )


def test_every_conv_of_the_onnx_file_reads_int8_weights(onnx_int8):
    report = onnx_int8.report
    model = onnx.load(str(report.path))
    assert quantize.conv_weight_sources(model) == (CONVS, ())
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in model.graph.node}
    assert (report.int8.quantized_convs, report.int8.float_convs) == (CONVS, ())
    assert (report.int8.calibration, report.int8.calibration_images) == ("minmax", CALIBRATION)
    assert report.input_shape == (1, 3, 128, 128) and report.output_shape == (1, 5, 128, 128)
    assert report.max_abs_diff <= 1e-4  # the fp32 file it was quantized from
    assert 0 < report.int8.fp32_max_abs_diff < 2  # logits of about 2
    assert report.file_bytes == report.path.stat().st_size
    assert no_temporary_files(report.path.parent)


def test_the_int8_kernels_compute_what_the_file_says(onnx_int8, checkpoint, val_set):
    """onnxruntime's int8 kernels against the file's QDQ pairs evaluated in float: with 7-bit
    weights no pair of products saturates, with or without VNNI, and the two differ only where a
    requantization rounds the other way at a half step. This random net's gain carries such a
    one-step difference far, so the check is relative: the kernels pick the emulation's class
    for more pixels than the fp32 model's (8-bit weights on a CPU without VNNI did the reverse)."""
    path = onnx_int8.report.path
    model = onnx.load(str(path))
    assert quantize.int16_pair_bound(model).fits_int16
    assert onnx_int8.report.int8.pair_bound == quantize.int16_pair_bound(model)
    image = val_set[0][0][None]
    (kernels,) = onnx_session(path).run(None, {"input": image.numpy()})
    (emulated,) = onnx_session(path, optimize=False).run(None, {"input": image.numpy()})
    with torch.no_grad():
        fp32 = load_segmentation_checkpoint(checkpoint).model(image).argmax(1).numpy()
    same_as_file = (kernels.argmax(1) == emulated.argmax(1)).mean()
    same_as_fp32 = (kernels.argmax(1) == fp32).mean()
    print(
        f"\nint8 kernels: the emulation's class at {same_as_file:.1%} of the pixels, the fp32 "
        f"model's at {same_as_fp32:.1%}"
    )
    assert same_as_file > same_as_fp32 > AGREEMENT


def test_the_onnx_file_keeps_the_metadata_and_records_the_quantization(onnx_int8, checkpoint):
    metadata = read_onnx_metadata(onnx_int8.report.path)
    config = load_segmentation_checkpoint(checkpoint).model.config
    assert SegmentationConfig.from_dict(metadata["model_config"]) == config.replace(resolution=128)
    assert metadata["classes"] == list(CLASSES)
    assert Preprocessing.from_dict(metadata["preprocessing"]) == PREPROCESSING.at(128)
    assert metadata["source"] == "checkpoint best.safetensors"
    assert metadata["outputs"].startswith("logits [N, C, H, W]")
    assert metadata["quantization"]["calibrate"] == "minmax"
    assert metadata["quantization"]["calibration_images"] == CALIBRATION
    keys = [entry.key for entry in onnx.load(str(onnx_int8.report.path)).metadata_props]
    assert keys.count("quantization") == 1


def test_the_miou_of_both_is_measured_on_the_validation_split(onnx_int8, checkpoint, val_set):
    result = onnx_int8
    print(f"\nint8 ONNX: fp32 mIoU {result.fp32_miou:.4f}, int8 {result.int8_miou:.4f}")
    assert result.images == 2 and result.data == DATA
    # at the images' own size nothing is padded: the fp32 figure is segment eval's
    loaded = load_segmentation_checkpoint(checkpoint)
    expected = evaluate(loaded, DATA)
    assert result.fp32_miou == pytest.approx(expected["mIoU"], abs=1e-12)
    assert result.fp32_pixel_accuracy == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    file = file_segmenter(result.report.path, len(CLASSES))
    shared = agreement(file, loaded.model, val_set)
    print(f"int8 ONNX: {100 * shared:.1f}% of the pixels of the fp32 model's class")
    assert shared > AGREEMENT
    assert abs(result.int8_pixel_accuracy - result.fp32_pixel_accuracy) <= 1 - shared


def test_an_argmax_file_scores_as_the_logits_file_does(onnx_int8, checkpoint, tmp_path):
    result = segmentation_quantize.quantize(
        checkpoint,
        DATA,
        tmp_path / "labels.onnx",
        resolution=128,
        argmax=True,
        calibration_images=CALIBRATION,
    )
    report = result.report
    assert (report.output_name, report.output_shape) == ("labels", (1, 128, 128))
    assert report.differing_pixels == 0 and report.int8.fp32_max_abs_diff is None
    assert report.int8.fp32_differing_pixels < (1 - AGREEMENT) * 128 * 128
    assert quantize.conv_weight_sources(onnx.load(str(report.path))) == (CONVS, ())
    # the same graph and calibration, then argmax: the classes of the logits file
    assert result.int8_miou == pytest.approx(onnx_int8.int8_miou, abs=1e-12)
    assert result.fp32_miou == onnx_int8.fp32_miou


def test_images_larger_than_the_file_are_shrunk_to_it(checkpoint, tmp_path, val_set):
    result = segmentation_quantize.quantize(
        checkpoint,
        DATA,
        tmp_path / "int8.onnx",
        resolution=96,
        calibration_images=CALIBRATION,
        calibrate="percentile",
    )
    assert result.report.input_shape == (1, 3, 96, 96)
    assert read_onnx_metadata(result.report.path)["quantization"]["calibrate"] == "percentile"
    assert result.report.int8.calibration == "percentile"
    model = load_segmentation_checkpoint(checkpoint).model
    fp32 = SquareInputSegmenter(model, 96, len(CLASSES))
    assert agreement(file_segmenter(result.report.path, len(CLASSES)), fp32, val_set) > AGREEMENT


# --- int8 ExecuTorch --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pte_int8(checkpoint):
    path = checkpoint.parent / "int8.pte"
    return segmentation_quantize.quantize(
        checkpoint, DATA, path, format="pte", calibration_images=CALIBRATION
    )


@pytest.mark.slow
@needs_executorch
def test_the_pte_program_is_within_its_allowance_of_the_quantized_reference(pte_int8):
    report, int8 = pte_int8.report, pte_int8.report.int8
    print(
        f"\nint8 .pte vs PT2E reference: {report.max_abs_diff / int8.logits_scale:.1f} steps of "
        f"{int8.logits_scale:.3g}; vs fp32: {int8.fp32_max_abs_diff:.3g}"
    )
    assert (int8.quantized_convs, int8.float_convs) == (CONVS, ())
    assert (int8.calibration, int8.calibration_images) == ("histogram", CALIBRATION)
    steps = segmentation_export.INT8_TOLERANCE_STEPS
    assert int8.tolerance == pytest.approx(steps * int8.logits_scale)
    assert report.max_abs_diff <= int8.tolerance
    assert 0 < int8.fp32_max_abs_diff < 2
    assert report.input_shape == (1, 3, 64, 64) and report.output_shape == (1, 5, 64, 64)
    assert report.partitions >= 1 and report.file_bytes == report.path.stat().st_size
    metadata = mobile.read_pte_metadata(report.path)
    assert metadata["classes"] == list(CLASSES)
    assert metadata["quantization"]["flow"] == "pt2e"
    assert metadata["quantization"]["calibration_images"] == CALIBRATION


@pytest.mark.slow
@needs_executorch
def test_the_pte_programs_miou_is_measured_beside_the_fp32_models(pte_int8, checkpoint, val_set):
    result = pte_int8
    print(f"\nint8 .pte at 64 px: fp32 mIoU {result.fp32_miou:.4f}, int8 {result.int8_miou:.4f}")
    model = load_segmentation_checkpoint(checkpoint).model
    fp32 = SquareInputSegmenter(model, 64, len(CLASSES))  # the 128 px images shrunk to 64
    file = file_segmenter(result.report.path, len(CLASSES))
    shared = agreement(file, fp32, val_set)
    print(f"int8 .pte: {100 * shared:.1f}% of the pixels of the fp32 model's class")
    assert shared > AGREEMENT
    assert result.images == 2
    assert abs(result.int8_pixel_accuracy - result.fp32_pixel_accuracy) <= 1 - shared


@pytest.mark.slow
@needs_executorch
def test_a_pte_program_that_fails_its_check_leaves_the_previous_file(
    checkpoint, pte_int8, tmp_path, monkeypatch
):
    monkeypatch.setattr(segmentation_export, "INT8_TOLERANCE_STEPS", 0)  # never met exactly
    # the same checkpoint, data and calibration as the fixture's: its lowered program stands in
    # for a second lowering (a minute on a slow CPU), and the check runs on it for real
    report = pte_int8.report
    lowered = (report.path.read_bytes(), report.partitions, report.outside_delegate)
    monkeypatch.setattr(mobile, "lower_to_xnnpack", lambda graph, shape, metadata: lowered)
    path = tmp_path / "int8.pte"
    path.write_bytes(b"previous export")
    with pytest.raises(MobileNetsError, match="the int8 ExecuTorch program disagrees"):
        segmentation_quantize.quantize(
            checkpoint, DATA, path, format="pte", calibration_images=CALIBRATION
        )
    assert path.read_bytes() == b"previous export" and list(tmp_path.iterdir()) == [path]


# --- Failures and user errors ----------------------------------------------------------------


def calibration(count=2, side=64):
    return [torch.randn(count, 3, side, side, generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("m.onnx", dict(int8=True), r"int8=True needs calibration="),
        ("m.onnx", dict(calibration=calibration()), r"calibration= applies to int8=True only"),
        ("m.onnx", dict(int8=1, calibration=calibration()), "int8 must be True or False, got 1"),
        (
            "m.pte",
            dict(format="pte", int8=True, calibration=calibration(), calibrate="entropy"),
            r"calibrate='entropy' applies to int8=True with format='onnx' only",
        ),
        (
            "m.onnx",
            dict(int8=True, calibration=calibration(), calibrate="mse"),
            "calibrate must be one of minmax, entropy, percentile, got 'mse'",
        ),
        ("m.onnx", dict(int8=True, calibration=[]), "calibration= gave no images"),
        (
            "m.onnx",
            dict(int8=True, calibration=[torch.zeros(1, 3, 32, 32)]),
            r"calibration batches must be float \(N, 3, 64, 64\) tensors, got torch.float32 of "
            r"shape \(1, 3, 32, 32\)",
        ),
        (
            "m.onnx",
            dict(int8=True, calibration=[*calibration(), torch.zeros(2, 64, 64)]),
            r"calibration batches must be float \(N, 3, 64, 64\) .* shape \(2, 64, 64\)",
        ),
    ],
)
def test_int8_errors_name_the_argument_and_write_nothing(
    checkpoint, tmp_path, name, options, message
):
    with pytest.raises(MobileNetsError, match=message):
        segmentation_export.export(checkpoint, tmp_path / name, **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(calibration_images=0), "calibration images must be from 1 to 10"),
        (dict(calibration_images=11), "calibration images must be from 1 to 10"),
        (dict(format="pte"), r"the output must be a \.pte file"),
        (dict(resolution=16), "cannot export deeplabv3_mobilenet_v2_0.35_64_os16 at 16 px"),
    ],
)
def test_quantize_checks_before_it_writes(checkpoint, tmp_path, options, message):
    with pytest.raises(MobileNetsError, match=message):
        segmentation_quantize.quantize(checkpoint, DATA, tmp_path / "m.onnx", **options)
    assert list(tmp_path.iterdir()) == []


def test_data_of_other_classes_is_refused_before_anything_is_written(tmp_path):
    model = create_segmenter("deeplabv3_mobilenet_v2", alpha=0.35, resolution=64, num_classes=3)
    path = tmp_path / "run" / "best.safetensors"
    save_checkpoint(model, path, ("background", "cat", "dog"), PREPROCESSING)
    with pytest.raises(
        MobileNetsError,
        match=r"segments 3 classes \(background, cat, dog\); "
        r"data='synthetic-shapes:10' has 5",
    ):
        segmentation_quantize.quantize(path, DATA, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# --- The command line -----------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = main(["segment", "export", *(str(arg) for arg in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_checks_and_the_miou_of_both(checkpoint, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    code, printed, err = run_cli(
        capsys,
        checkpoint,
        "--format",
        "onnx",
        "--out",
        out,
        "--int8",
        "--data",
        DATA,
        "--calibration-images",
        4,
        "--argmax",
    )
    assert code == 0, err
    wrote, layers, check, versus, miou, arithmetic = printed.splitlines()
    assert arithmetic.startswith(f"int8 measured on {cpu_info().describe()}; 7-bit weights, ")
    assert wrote.startswith(
        f"wrote {out} (deeplabv3_mobilenet_v2_0.35_64_os16 from checkpoint "
        "best.safetensors; opset 18, input 1x3x64x64, output labels "
        "[1, 64, 64]"
    )
    assert layers == (
        f"int8: {CONVS} of {CONVS} convs with int8 weights, activation ranges by "
        "minmax calibration on 4 training images"
    )
    assert check.startswith("onnxruntime ") and "the fp32 file vs PyTorch: 0 pixel(s)" in check
    assert versus.startswith("int8 file vs the fp32 model on a calibration image: ")
    assert miou.startswith("fp32 mIoU ") and miou.endswith(
        f"2 validation images of {DATA}, each fed at 64x64"
    )
    assert read_onnx_metadata(out)["quantization"]["calibration_images"] == 4


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory):
    """As ``checkpoint``, on V1 0.25 without ASPP: 31 convs to V2 0.35's 55. XNNPACK's lowering
    takes time that grows with the graph's size (this one lowered in two thirds of the V2 one's
    time), and the command's class-map program does not depend on the backbone (the V2
    program's agreement is the pte_int8 tests')."""
    torch.manual_seed(0)
    model = randomize_torch(
        create_segmenter(
            "deeplabv3_mobilenet_v1",
            alpha=0.25,
            resolution=64,
            num_classes=len(CLASSES),
            aspp=False,
        )
    )
    with torch.no_grad():  # logits of about 2, as the V2 checkpoint's
        model.classifier.weight *= 0.25
    path = tmp_path_factory.mktemp("run-v1") / "best.safetensors"
    save_checkpoint(model, path, CLASSES, PREPROCESSING, metrics={"mIoU": 0.5})
    return path


V1_CONVS = 31  # V1's 27, the head's 1x1 and pooling branches and projection, the classifier


@pytest.mark.slow
@needs_executorch
def test_cli_writes_an_int8_class_map_program(v1_checkpoint, tmp_path, capsys):
    out = tmp_path / "int8.pte"
    code, printed, err = run_cli(
        capsys,
        v1_checkpoint,
        "--format",
        "pte",
        "--out",
        out,
        "--int8",
        "--data",
        DATA,
        "--calibration-images",
        4,
        "--argmax",
    )
    assert code == 0, err
    lines = printed.splitlines()
    assert lines[0].startswith(f"wrote {out} (") and "output labels [1, 64, 64]" in lines[0]
    assert "aten.argmax" in lines[1]  # the partitions line: argmax runs outside XNNPACK
    assert lines[2].startswith(
        f"int8: {V1_CONVS} of {V1_CONVS} convs with int8 weights, activation "
        "ranges by histogram calibration on 4 training images"
    )
    steps = segmentation_export.INT8_TOLERANCE_STEPS
    assert lines[3].startswith("executorch ") and lines[3].endswith(
        f"pixel(s) of another class, each where its two best logits are within {steps} "
        "quantization steps"
    )
    assert lines[5].startswith("fp32 mIoU ")
    assert lines[6] == f"int8 measured on {cpu_info().describe()}"
    labels = mobile.run_pte(mobile.load_method(mobile.load_pte(out)), torch.zeros(1, 3, 64, 64))
    assert labels.dtype == torch.int64 and labels.shape == (1, 64, 64)


def write_other_checkpoints(folder):
    classifier = build_model(ModelConfig("mobilenet_v2", 0.35, 64, num_classes=len(CLASSES)))
    save_checkpoint(classifier, folder / "classifier.safetensors", CLASSES, PREPROCESSING)
    detector = create_detector(
        "ssdlite_mobilenet_v2", alpha=0.35, resolution=64, num_classes=len(CLASSES)
    )
    save_checkpoint(detector, folder / "detector.safetensors", CLASSES, PREPROCESSING)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8"], "--int8 needs --data SPEC: the dataset whose training images calibrate"),
        (["--data", DATA], "--data applies to --int8 only"),
        (["--calibration-images", "4"], "--calibration-images applies to --int8 only"),
        (["--calibrate", "entropy"], "--calibrate applies to --int8 only"),
        (
            ["--int8", "--data", DATA, "--calibration-images", "0"],
            "calibration images must be from 1 to 10 (the training split's size), got 0",
        ),
        (["--int8", "--data", "synthetic-shapes:x"], "synthetic-shapes:N takes a positive number"),
    ],
)
def test_cli_int8_errors_are_one_line(checkpoint, tmp_path, capsys, args, message):
    code, out, err = run_cli(
        capsys, checkpoint, "--format", "onnx", "--out", tmp_path / "m.onnx", *args
    )
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_calibrate_is_for_onnx_only(checkpoint, tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        checkpoint,
        "--format",
        "pte",
        "--out",
        tmp_path / "m.pte",
        "--int8",
        "--data",
        DATA,
        "--calibrate",
        "entropy",
    )
    assert code == 2 and err.count("\n") == 1
    assert "--calibrate applies to --format onnx only" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "classifier",
            "is a classification checkpoint (mobilenet_v2_0.35_64), not a segmentation "
            "one (`mobilenets eval`, `predict` and `export` take it)",
        ),
        (
            "detector",
            "is a detection checkpoint (ssdlite_mobilenet_v2_0.35_64), not a "
            "segmentation one (`mobilenets detect eval`, `predict` and `export` take it)",
        ),
    ],
)
def test_cli_refuses_another_tasks_checkpoint_in_one_line(tmp_path, capsys, name, message):
    write_other_checkpoints(tmp_path)
    out = tmp_path / "out"
    for extra in ([], ["--int8", "--data", DATA]):
        code, printed, err = run_cli(
            capsys,
            tmp_path / f"{name}.safetensors",
            "--format",
            "onnx",
            "--out",
            out / "m.onnx",
            *extra,
        )
        assert code == 2 and printed == "" and err.count("\n") == 1, err
        assert message in err, err
    assert not out.exists()


def test_the_cli_repeats_the_librarys_choices():
    assert segment.CALIBRATE_METHODS == tuple(quantize.CALIBRATE_METHODS)
    assert segment.CALIBRATION_IMAGES == segmentation_quantize.DEFAULT_CALIBRATION_IMAGES
