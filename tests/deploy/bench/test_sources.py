"""What bench measures: .onnx files beside eager rebuilt from their metadata, registered
segmenters and detectors, and segmentation and detection checkpoints; the errors of each."""

import json

import onnx
import pytest
import torch

from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy import bench
from mobilenets.deploy.bench import exports

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_onnx_file_is_measured_against_eager_rebuilt_from_its_metadata(onnx_file):
    records = bench.run_benchmarks([onnx_file], batches=(2,), warmup=1, iterations=2, threads=1)
    assert [(r.runtime, r.precision, r.model) for r in records] == [
        (bench.EAGER, "fp32", "tiny.onnx"),
        (bench.ORT, "fp32", "tiny.onnx"),
    ]
    assert records[1].size_mb == pytest.approx(onnx_file.stat().st_size / 1e6)
    assert records[1].source == f"file {onnx_file}"
    assert bench.onnx_precision(onnx_file) == "fp32"


def test_a_fixed_batch_file_refuses_other_batches(onnx_file, tmp_path):
    graph = onnx.load(str(onnx_file))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # as without dynamic_batch
    path = tmp_path / "fixed.onnx"
    onnx.save(graph, str(path))
    again = "measure it at batch 1 only, or export it again with a dynamic batch axis"
    with pytest.raises(MobileNetsError, match=f"fixed batch of 1; {again}"):
        bench.run_benchmarks([path], batches=(1, 2), iterations=1, threads=1)


def test_a_file_keeps_its_resolution(capsys, onnx_file):
    with pytest.raises(MobileNetsError, match=r"takes 32x32 inputs; resolution=64 cannot change "):
        bench.run_benchmarks([onnx_file], resolution=64, iterations=1, threads=1)
    assert main(["bench", str(onnx_file), "--resolution", "64"]) == 2
    err = capsys.readouterr().err
    assert "takes 32x32 inputs; --resolution 64 cannot change an ONNX file" in err


def test_a_segmenter_name_is_measured_at_its_size_output_stride_and_aspp(capsys, tmp_path):
    json_path = tmp_path / "bench.json"
    argv = [
        "bench",
        "deeplabv3_mobilenet_v2",
        "--resolution",
        "65",
        "--output-stride",
        "8",
        "--aspp",
        "--batch",
        "1",
        "2",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--iterations",
        "1",
        "--json",
        str(json_path),
    ]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    name = "deeplabv3_mobilenet_v2_1.0_65_os8_aspp"
    records = json.loads(json_path.read_text())
    assert [(r["model"], r["runtime"], r["batch"], r["resolution"]) for r in records] == [
        (name, bench.EAGER, 1, 65),
        (name, bench.ORT, 1, 65),
        (name, bench.EAGER, 2, 65),
        (name, bench.ORT, 2, 65),
    ]
    assert records[1]["source"] == "export_onnx of random weights (a registered name)"
    assert all(0 < r["median_ms"] for r in records) and name in out


def test_a_segmenter_checkpoint_is_loaded_as_a_segmenter(tmp_path):
    from mobilenets.core.segmenter import DeepLabV3
    from mobilenets.core.weights import save_weights
    from mobilenets.zoo.segmenters import create_segmenter

    model = create_segmenter("deeplabv3_mobilenet_v2", alpha=0.35, num_classes=3, resolution=97)
    save_weights(model, tmp_path / "best.safetensors")
    source = bench.load_source(str(tmp_path))  # the run folder: its best
    assert isinstance(source.model, DeepLabV3) and source.model.config == model.config
    assert source.resolution == 97 and bench.load_source(str(tmp_path), 65).resolution == 65
    assert source.weights == f"checkpoint {tmp_path / 'best.safetensors'}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["mobilenet_v2_1.0_224", "--output-stride", "8"],
            "apply to a registered segmenter name (such as deeplabv3_mobilenet_v2), not to "
            "'mobilenet_v2_1.0_224'",
        ),
        (["deeplabv3_mobilenet_v2", "--resolution", "16"], "resolution must be an integer >= 32"),
    ],
)
def test_segmenter_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobilenets bench: error: ") and message in err, err
    assert err.count("\n") == 1


def test_a_segmenters_output_stride_is_8_or_16(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "deeplabv3_mobilenet_v2", "--output-stride", "32"])
    assert exit_info.value.code == 2
    assert "--output-stride: invalid choice: 32 (choose from 8, 16)" in capsys.readouterr().err


def test_a_detection_checkpoint_is_measured_and_its_onnx_file_too(detector, tmp_path):
    from mobilenets.core.detector import SSDLite
    from mobilenets.core.weights import save_weights

    path = tmp_path / "best.safetensors"
    save_weights(detector, path)
    source = bench.load_source(str(tmp_path))  # the run folder: its best
    assert isinstance(source.model, SSDLite) and source.model.config == detector.config
    assert source.resolution == 96 and source.weights == f"checkpoint {path}"
    at_128 = bench.load_source(str(path), 128)  # rebuilt for its default boxes, same weights
    assert at_128.resolution == 128 == at_128.model.resolution
    torch.testing.assert_close(at_128.model.state_dict(), detector.state_dict(), rtol=0, atol=0)

    records = bench.run_benchmarks([path], batches=(1,), warmup=0, iterations=2, threads=1)
    assert [(r.model, r.runtime) for r in records] == [
        ("ssdlite_mobilenet_v2_0.35_96", bench.EAGER),
        ("ssdlite_mobilenet_v2_0.35_96", bench.ORT),
    ]
    assert records[1].source == f"export_onnx of checkpoint {path}"

    # the raw head outputs, a dynamic batch, and a detection config its eager twin rebuilds from
    written = tmp_path / "ssdlite.onnx"
    exports.export_dense_onnx(detector, written, 96)
    graph = onnx.load(str(written)).graph
    assert [output.name for output in graph.output] == list(bench.DETECTOR_OUTPUTS)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param
    records = bench.run_benchmarks([written], batches=(2,), warmup=0, iterations=2, threads=1)
    assert [(r.runtime, r.batch) for r in records] == [(bench.EAGER, 2), (bench.ORT, 2)]
