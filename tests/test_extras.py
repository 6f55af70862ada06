"""Optional dependencies behind extras: a feature whose extra is missing fails with one line that
names the pip install, as a MobileNetsError (so the CLI prints it and exits 2), when the feature
is used; `import mobilenets` and the cost model need none of them."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib.metadata import metadata
from types import SimpleNamespace

import pytest
import torch

from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import EXTRAS, install_command, require
from mobilenets.core.models import build_model
from mobilenets.core.spec import ModelConfig
from mobilenets.data.detection import load_coco_api
from mobilenets.deploy import bench, quantize
from mobilenets.deploy.onnx_export import export_onnx, onnx_session
from mobilenets.engine.plots import plot_confusion, plot_curves
from mobilenets.tasks.detection.evaluate import evaluate_coco
from mobilenets.zoo.convert import read_keras_h5

pytestmark = pytest.mark.usefixtures("one_thread")

RUNTIME_EXTRAS = ("onnx", "keras", "detection", "segmentation", "plots", "mobile", "openvino")


def hide(monkeypatch, *packages: str) -> None:
    """Make ``packages`` unimportable for the test, as if they were not installed: a None entry
    in sys.modules makes ``import`` raise ImportError, for a submodule loaded earlier too."""
    for name in list(sys.modules):
        if name.partition(".")[0] in packages:
            monkeypatch.setitem(sys.modules, name, None)
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)


def one_line_error(capsys, command: str, *argv) -> str:
    """The error line of ``mobilenets COMMAND ARGV``, checked to be one line with exit 2."""
    code = main([command, *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (out, err)
    assert err.endswith("\n") and err.count("\n") == 1, err  # one line, no traceback
    prefix = f"mobilenets {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) : -1]


def tiny_model():
    return build_model(ModelConfig(arch="mobilenet_v1", alpha=0.25, resolution=32))


# --- The helper and the extras table --------------------------------------------------------


def test_require_returns_the_module():
    import onnx.checker

    assert require("onnx.checker", "checking") is onnx.checker


@pytest.mark.parametrize("package", sorted(EXTRAS))
def test_require_names_the_package_and_the_extra(monkeypatch, package):
    hide(monkeypatch, package)
    hint = f"needs {package}: pip install 'mobilenets[{EXTRAS[package]}]'"
    for module in (package, f"{package}.submodule"):
        with pytest.raises(MobileNetsError) as error:
            require(module, "doing this")
        assert str(error.value) == f"doing this {hint}"
        assert isinstance(error.value.__cause__, ImportError)


def test_the_extras_table_is_what_pyproject_installs():
    """Every optional package is in the extra the error names, none is in the core install,
    `all` holds every runtime extra and `dev` holds `all`."""
    requirements = metadata("mobilenets").get_all("Requires-Dist")
    by_extra: dict[str | None, set[str]] = {}
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+(\[[a-z,]+\])?", requirement).group(0)
        extra = re.search(r'extra == "([^"]+)"', requirement)
        by_extra.setdefault(extra and extra.group(1), set()).add(name.lower())
    assert by_extra[None] == {"torch", "torchvision", "safetensors", "numpy", "pillow", "tqdm"}
    for package, extra in EXTRAS.items():
        assert package in by_extra[extra], (package, extra)
    assert by_extra["all"] == {f"mobilenets[{','.join(sorted(RUNTIME_EXTRAS))}]"}
    assert "mobilenets[all,docs]" in by_extra["dev"]
    assert {"mkdocs-material", "mkdocstrings[python]"} <= by_extra["docs"]
    assert set(EXTRAS.values()) == set(RUNTIME_EXTRAS)
    assert install_command("onnx") == "pip install 'mobilenets[onnx]'"


# --- onnx: export, quantize, bench ------------------------------------------------------------


ONNX_HINT = "needs onnx: pip install 'mobilenets[onnx]'"


def test_onnx_export_without_the_onnx_extra(monkeypatch, tmp_path, capsys):
    hide(monkeypatch, "onnx", "onnxruntime", "onnxscript")
    path = tmp_path / "m.onnx"
    with pytest.raises(MobileNetsError, match=re.escape(f"exporting to ONNX {ONNX_HINT}")):
        export_onnx(tiny_model(), path, resolution=32)
    with pytest.raises(MobileNetsError, match=re.escape(f"int8 quantization {ONNX_HINT}")):
        quantize.check_options(tmp_path / "int8.onnx", "minmax", "u8")
    with pytest.raises(MobileNetsError, match=re.escape(f"measuring onnxruntime {ONNX_HINT}")):
        bench.run_benchmarks([tiny_model()], batches=(1,), iterations=1, threads=1)

    monkeypatch.chdir(tmp_path)
    message = one_line_error(
        capsys, "export", "mobilenet_v1_0.25_128", "--format", "onnx", "--out", "m.onnx"
    )
    assert message == f"exporting to ONNX {ONNX_HINT}"
    message = one_line_error(
        capsys,
        "quantize",
        "ckpt",
        "--data",
        "synthetic:160",
        "--method",
        "ptq",
        "--out",
        "int8.onnx",
    )
    assert message == f"int8 quantization {ONNX_HINT}"
    message = one_line_error(capsys, "bench", "mobilenet_v1_0.25_128")
    assert message == f"measuring onnxruntime {ONNX_HINT}"
    assert list(tmp_path.iterdir()) == []


def test_each_onnx_package_is_named_when_it_alone_is_missing(monkeypatch, tmp_path):
    for package in ("onnxruntime", "onnxscript"):
        with monkeypatch.context() as patch:
            hide(patch, package)
            with pytest.raises(MobileNetsError) as error:
                export_onnx(tiny_model(), tmp_path / "m.onnx", resolution=32)
            assert str(error.value) == (
                f"exporting to ONNX needs {package}: pip install 'mobilenets[onnx]'"
            )
    (tmp_path / "m.onnx").write_bytes(b"not read")
    hide(monkeypatch, "onnxruntime")
    with pytest.raises(MobileNetsError, match=r"running an ONNX file needs onnxruntime: pip"):
        onnx_session(tmp_path / "m.onnx")


# --- keras: .h5 weights -----------------------------------------------------------------------


def test_keras_h5_weights_without_h5py(monkeypatch, tmp_path, capsys):
    hide(monkeypatch, "h5py")
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n")  # never opened: the import fails first
    hint = "reading Keras .h5 weights needs h5py: pip install 'mobilenets[keras]'"
    with pytest.raises(MobileNetsError) as error:
        read_keras_h5(weights)
    assert str(error.value) == hint
    out = tmp_path / "converted.safetensors"
    message = one_line_error(
        capsys,
        "convert",
        weights,
        "--from",
        "keras",
        "--model",
        "mobilenet_v2_0.35_96",
        "--out",
        out,
    )
    assert message == hint and not out.exists()


# --- detection: COCO data and mAP ---------------------------------------------------------------


COCO_HINT = "needs pycocotools: pip install 'mobilenets[detection]'"


def test_coco_data_and_map_without_pycocotools(monkeypatch, tmp_path, capsys):
    hide(monkeypatch, "pycocotools")
    annotations = tmp_path / "instances_val.json"
    annotations.write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(MobileNetsError) as error:
        load_coco_api(annotations)
    assert str(error.value) == f"reading COCO annotations {COCO_HINT}"

    ground_truth = SimpleNamespace(cats={1: {"id": 1}}, imgs={0: {"id": 0}})  # no COCO needed
    detections = {
        0: {
            "boxes": torch.tensor([[1.0, 2.0, 8.0, 9.0]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1]),
        }
    }
    with pytest.raises(MobileNetsError) as error:
        evaluate_coco(ground_truth, detections)
    assert str(error.value) == f"scoring COCO mAP {COCO_HINT}"

    out = tmp_path / "run"
    message = one_line_error(
        capsys, "detect", "train", "--data", "synthetic-shapes:8", "--out", out
    )
    assert message == f"scoring COCO mAP {COCO_HINT}"
    assert not out.exists()  # refused before the data is made or anything is written


# --- plots: training curves and the confusion matrix --------------------------------------------


PLOTS_HINT = (
    "plotting the training curves and the confusion matrix needs matplotlib: "
    "pip install 'mobilenets[plots]'"
)


def test_plots_without_matplotlib(monkeypatch, tmp_path, capsys):
    hide(monkeypatch, "matplotlib")
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_top1": 0.5, "val_top1": 0.4}]
    with pytest.raises(MobileNetsError) as error:
        plot_curves(history, tmp_path / "curves.png")
    assert str(error.value) == PLOTS_HINT
    with pytest.raises(MobileNetsError, match=re.escape(PLOTS_HINT)):
        plot_confusion(torch.eye(2, dtype=torch.long), ["a", "b"], tmp_path / "confusion.png")

    out = tmp_path / "run"
    message = one_line_error(
        capsys, "train", "--data", "synthetic:160", "--epochs", "1", "--no-progress", "--out", out
    )
    assert message == PLOTS_HINT
    assert not out.exists()  # a run ends with its plots: refused before its first epoch
    assert sorted(tmp_path.iterdir()) == []


# --- The core install ----------------------------------------------------------------------------


BLOCKED = ("onnx", "onnxruntime", "onnxscript", "pycocotools", "h5py", "matplotlib", "executorch")


@pytest.mark.slow
def test_import_and_cost_need_no_extra():
    """In a fresh interpreter where every optional package is unimportable, the package and each
    of its modules import, and the cost model runs."""
    script = textwrap.dedent(f"""
        import sys

        for name in {BLOCKED!r}:
            sys.modules[name] = None  # `import name` now raises ImportError

        import mobilenets

        report = mobilenets.cost("mobilenet_v1_1.0_224")
        print(report.params, report.macs)

        import importlib
        import pkgutil

        for module in pkgutil.walk_packages(mobilenets.__path__, "mobilenets."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
        try:
            import onnxruntime
        except ImportError:
            print("blocked")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4231976", "568740352", "blocked"]


def test_bench_openvino_without_openvino(monkeypatch, capsys):
    hide(monkeypatch, "openvino")
    with pytest.raises(MobileNetsError, match=r"pip install 'mobilenets\[openvino\]'"):
        bench.run_benchmarks([tiny_model()], batches=(1,), iterations=1, openvino=True)
    message = one_line_error(capsys, "bench", "mobilenet_v1_0.25_128", "--openvino")
    assert "mobilenets[openvino]" in message
