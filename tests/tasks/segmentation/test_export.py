"""Export of a segmenter: BN folding reaches every conv of DeepLabv3 and keeps its logits; the ONNX
file (logits, or the argmax class map) runs in onnxruntime as the PyTorch model does and carries
its metadata; a failed check leaves no file; the .pte program runs in ExecuTorch's runtime; bench
measures the files; user errors name the value.

The ONNX exports take seconds each, so there are three: a checkpoint's logits (shared by most
tests), a model's class map, and one that fails its check. The .pte tests are marked slow.
"""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from random_weights import randomize_torch
from torch import nn

from mobilenets import __version__
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.segmentation_spec import SegmentationConfig
from mobilenets.core.segmenter import DeepLabV3
from mobilenets.core.spec import ModelConfig
from mobilenets.deploy import bench
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.deploy.onnx_export import read_onnx_metadata
from mobilenets.engine.checkpoint import save_checkpoint
from mobilenets.tasks.segmentation import export as segmentation_export
from mobilenets.tasks.segmentation.export import check_class_map
from mobilenets.tasks.segmentation.inference import load_segmentation_checkpoint
from mobilenets.zoo.segmenters import create_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")
needs_executorch = pytest.mark.skipif(
    mobile.executorch_version() is None,
    reason="executorch is not installed (pip install 'mobilenets[mobile]')",
)

CLASSES = ("background", "cat", "dog", "person")
PREPROCESSING = Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def random_segmenter(**overrides) -> DeepLabV3:
    """V2 0.35 with random weights and BN statistics, as a trained model has. The classifier is
    scaled to logits of about 2 (He init gives about 8): float32 folding error grows with them."""
    torch.manual_seed(0)
    fields = dict(alpha=0.35, resolution=64, num_classes=len(CLASSES)) | overrides
    model = randomize_torch(create_segmenter("deeplabv3_mobilenet_v2", **fields))
    with torch.no_grad():
        model.classifier.weight *= 0.25
        model.classifier.bias.normal_(0, 0.1)
    return model.eval()


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def ort_run(path, output: str, x: torch.Tensor) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (result,) = session.run([output], {"input": x.numpy()})
    return result


# --- BN folding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [dict(aspp=True, aux=True, output_stride=8), dict(padding="same", bn_eps=1e-3)],
    ids=["aspp_aux_os8", "same"],
)
def test_folding_reaches_every_conv_of_the_segmenter_and_keeps_its_logits(overrides):
    model = random_segmenter(**overrides).double().train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    folded, count = fold_batch_norm(model)
    assert batch_norms(folded) == 0 and count == batch_norms(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, logits = model.eval()(x), folded(x)
        if model.config.aux:  # the training-time head folds too
            (_, aux_expected), (_, aux) = model(x, with_aux=True), folded(x, with_aux=True)
            assert (aux - aux_expected).abs().max() < 1e-5
    assert expected.abs().max() > 0.5  # logits large enough for the comparison to mean something
    assert (logits - expected).abs().max() < 1e-5
    # the caller's model is untouched
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


@pytest.mark.parametrize("aspp, aux, expected", [(False, False, 54), (True, True, 58)])
def test_folding_counts_the_head_convs(aspp, aux, expected):
    # V2 body: stem 1, first bottleneck 2, sixteen more 3 each = 51; head: image pool, 1x1
    # branch, projection = 3, and three atrous branches with ASPP; the aux head's 3x3 conv 1
    model = create_segmenter("deeplabv3_mobilenet_v2", aspp=aspp, aux=aux, resolution=64)
    assert fold_batch_norm(model)[1] == expected


# --- A checkpoint's logits as ONNX ---------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """What a segmentation run leaves, for a V2 with TF padding (64 px: stride 2 pads only the
    bottom and right), ASPP and the auxiliary head."""
    model = random_segmenter(aspp=True, aux=True, padding="same", bn_eps=1e-3)
    path = tmp_path_factory.mktemp("segmentation") / "best.safetensors"
    save_checkpoint(model, path, CLASSES, PREPROCESSING, metrics={"mIoU": 0.5})
    return path


@pytest.fixture(scope="module")
def exported(checkpoint):
    path = checkpoint.parent / "segmenter.onnx"
    return segmentation_export.export(checkpoint.parent, path, opset=20)  # the run folder: its best


def test_the_report_says_what_was_written_and_how_close_it_is(exported):
    report = exported
    assert (report.format, report.model_name, report.source) == (
        "onnx",
        "deeplabv3_mobilenet_v2_0.35_64_os16_aspp",
        "checkpoint best.safetensors",
    )
    assert report.input_shape == (1, 3, 64, 64) and report.opset == 20
    assert (report.output_name, report.output_shape) == ("logits", (1, 4, 64, 64))
    assert report.max_abs_diff <= 1e-4 and report.differing_pixels is None
    # body 51, head 6 (image pool, 1x1, three atrous, projection), aux 1
    assert report.bn_folded == 58
    assert report.file_bytes == report.path.stat().st_size
    assert report.runtime == f"onnxruntime {onnxruntime.__version__}"
    assert not list(report.path.parent.glob(".*.tmp"))


def test_the_graph_has_no_batch_norm_and_a_fixed_input(exported):
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, dims) == ("input", [1, 3, 64, 64])
    dims = [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim]
    assert (graph_output.name, dims) == ("logits", [1, 4, 64, 64])


def test_onnxruntime_computes_the_checkpoints_logits(exported, checkpoint):
    model = load_segmentation_checkpoint(checkpoint).model
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    logits = ort_run(exported.path, "logits", x)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(expected).max() > 0.5
    assert np.abs(logits - expected).max() <= 1e-4


def test_metadata_round_trips(exported, checkpoint):
    metadata = read_onnx_metadata(exported.path)
    config = load_segmentation_checkpoint(checkpoint).model.config
    assert SegmentationConfig.from_dict(metadata["model_config"]) == config
    assert metadata["model_name"] == config.name
    assert metadata["classes"] == list(CLASSES)
    assert Preprocessing.from_dict(metadata["preprocessing"]) == PREPROCESSING
    assert metadata["metrics"] == {"mIoU": 0.5}
    assert metadata["source"] == "checkpoint best.safetensors"
    assert metadata["outputs"].startswith("logits [N, C, H, W]")
    assert metadata["mobilenets_version"] == __version__


def test_bench_measures_the_file_beside_eager_rebuilt_from_its_config(exported):
    records = bench.run_benchmarks([exported.path], batches=(1,), warmup=0, iterations=1, threads=1)
    assert [(r.runtime, r.model, r.resolution) for r in records] == [
        (bench.EAGER, "segmenter.onnx", 64),
        (bench.ORT, "segmenter.onnx", 64),
    ]
    with pytest.raises(MobileNetsError, match="fixed batch of 1"):
        bench.run_benchmarks([exported.path], batches=(2,), iterations=1, threads=1)


# --- The class map -------------------------------------------------------------------------------


def test_an_argmax_export_returns_each_pixels_class(tmp_path):
    model = random_segmenter()
    report = segmentation_export.export(model, tmp_path / "labels.onnx", argmax=True, resolution=81)
    assert (report.output_name, report.output_shape, report.input_shape) == (
        "labels",
        (1, 81, 81),
        (1, 3, 81, 81),
    )
    assert report.max_abs_diff is None and report.differing_pixels == 0
    assert report.source == "a DeepLabV3 given to tasks.segmentation.export"
    metadata = read_onnx_metadata(report.path)
    assert metadata["model_name"] == "deeplabv3_mobilenet_v2_0.35_81_os16"
    assert "classes" not in metadata and "preprocessing" not in metadata  # a bare model has none
    assert metadata["outputs"].startswith("labels [N, H, W] int64")
    x = torch.randn(1, 3, 81, 81, generator=torch.Generator().manual_seed(3))
    labels = ort_run(report.path, "labels", x)
    with torch.no_grad():
        logits = model(x)
    top2 = logits.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()
    assert labels.dtype == np.int64 and labels.shape == (1, 81, 81)
    assert decided.mean() > 0.99 and len(np.unique(labels)) > 1
    assert (labels == logits.argmax(1).numpy())[decided].all()
    assert model.config.resolution == 64  # the caller's model is not changed


def test_the_class_map_check_forgives_near_ties_only():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    logits[0, 2] = torch.tensor([[0.0, 0.0], [0.00005, 0.5]])
    expected = logits.argmax(1).numpy()  # [[1, 1], [2, 2]]
    assert check_class_map(expected, logits, "the file") == 0
    near_tie = expected.copy()
    near_tie[0, 1, 0] = 0  # class 0 has 0, class 2 has 0.00005: 5e-5 apart
    assert check_class_map(near_tie, logits, "the file") == 1
    decided = near_tie.copy()
    decided[0, 1, 1] = 1  # class 2 leads by 0.5 there
    with pytest.raises(
        MobileNetsError,
        match=r"the file disagrees with PyTorch: 1 pixel\(s\) of "
        r"another class .* \(up to 0\.5\) on a 2x2 input",
    ):
        check_class_map(decided, logits, "the file")
    with pytest.raises(MobileNetsError, match=r"class map of shape \(1, 4\), PyTorch \(1, 2, 2\)"):
        check_class_map(np.zeros((1, 4), dtype=np.int64), logits, "the file")


# --- Failures ------------------------------------------------------------------------------------


def test_a_failed_check_keeps_the_previous_file_and_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(segmentation_export, "TOLERANCE", -1.0)  # no difference passes
    model = random_segmenter(resolution=65).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    path = tmp_path / "segmenter.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(
        MobileNetsError,
        match=r"the ONNX model disagrees with PyTorch: max abs "
        r"difference \S+ at input 1x3x65x65",
    ):
        segmentation_export.export(model, path)
    assert path.read_bytes() == b"previous export" and list(tmp_path.iterdir()) == [path]
    assert all(module.training for module in model.modules()) and batch_norms(model) == 54
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("m.onnx", dict(format="tflite"), "format must be one of onnx, pte, got 'tflite'"),
        ("m.pte", dict(), r"the output must be a \.onnx file, got '.*m\.pte'"),
        ("m.onnx", dict(format="pte"), r"the output must be a \.pte file, got '.*m\.onnx'"),
        ("m.onnx", dict(opset=17), "opset must be an integer from 18 to 23"),
        ("m.pte", dict(format="pte", opset=18), "opset=18 applies to format='onnx' only"),
        ("m.onnx", dict(argmax=1), "argmax must be True or False, got 1"),
        (
            "m.onnx",
            dict(resolution=16),
            r"cannot export deeplabv3_mobilenet_v2_0\.35_64_os16 at "
            r"16 px: resolution must be an integer >= 32",
        ),
    ],
)
def test_user_errors_name_the_value_and_write_nothing(tmp_path, name, options, message):
    with pytest.raises(MobileNetsError, match=message):
        segmentation_export.export(random_segmenter(), tmp_path / name, **options)
    assert list(tmp_path.iterdir()) == []


def test_a_classifier_is_refused(tmp_path):
    with pytest.raises(MobileNetsError, match="takes a segmentation checkpoint .* got MobileNet"):
        segmentation_export.export(
            build_model(ModelConfig("mobilenet_v1", 0.25, 32)), tmp_path / "m.onnx"
        )
    with pytest.raises(MobileNetsError, match="does not exist|no segmentation config"):
        segmentation_export.export(tmp_path / "missing.safetensors", tmp_path / "m.onnx")


# --- ExecuTorch ----------------------------------------------------------------------------------


@pytest.mark.slow
@needs_executorch
@pytest.mark.parametrize("argmax", [False, True], ids=["logits", "labels"])
def test_a_pte_program_runs_in_executorch_as_pytorch_does(checkpoint, tmp_path, argmax):
    path = tmp_path / "segmenter.pte"
    report = segmentation_export.export(checkpoint, path, format="pte", argmax=argmax)
    assert (report.format, report.input_shape, report.opset) == ("pte", (1, 3, 64, 64), None)
    assert report.runtime == f"executorch {mobile.executorch_version()}"
    assert report.partitions >= 1 and report.file_bytes == path.stat().st_size
    assert ("aten.argmax.default" in " ".join(report.outside_delegate)) == argmax
    metadata = mobile.read_pte_metadata(path)
    config = load_segmentation_checkpoint(checkpoint).model.config
    assert SegmentationConfig.from_dict(metadata["model_config"]) == config
    assert metadata["classes"] == list(CLASSES)
    assert metadata["source"] == "checkpoint best.safetensors"

    model = load_segmentation_checkpoint(checkpoint).model
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    output = mobile.run_pte(mobile.load_method(mobile.load_pte(path)), x)
    with torch.no_grad():
        logits = model(x)
    if argmax:
        assert report.output_shape == (1, 64, 64) and output.dtype == torch.int64
        assert check_class_map(output.numpy(), logits, "the program") <= 2
    else:
        assert report.output_shape == (1, 4, 64, 64) and report.max_abs_diff <= 1e-4
        assert (output - logits).abs().max() <= 1e-4
    if not argmax:  # bench measures a segmenter's .pte file beside eager rebuilt from its config
        target = bench.sources.pte_file_target(path, None)
        assert isinstance(target.model, DeepLabV3) and target.model.config == config
        assert (target.resolution, target.fixed_batch) == (64, 1)
