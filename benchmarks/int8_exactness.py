"""Does every runtime compute what an int8 file says, on this CPU? 8-bit against 7-bit weights.

For each task's int8 ONNX file (classifier, detector network, segmenter) quantized as
`mobilenets.deploy.quantize.quantize_file` does, once with 8-bit weights (onnxruntime's plain
symmetric s8, what the files had before) and once with the 7-bit weights the files have now
(``reduce_range``): the outputs of onnxruntime's int8 kernels and of OpenVINO against the same
file with its QDQ pairs evaluated in float (onnxruntime, graph optimizations off), in steps of
the output's quantization grid, with each file's largest pair of int8 products (over int16's
32,767 it saturates in pmaddubsw, the x86 instruction used where there is no VNNI). For the
ExecuTorch programs (PT2E, XNNPACK) the program against its PT2E reference in PyTorch.

Random weights and random inputs: the arithmetic is what is compared, not accuracy. With
``--fashion-mnist`` the published checkpoint's top-1 on the 10,000 Fashion-MNIST test images is
measured the same ways (about 10 minutes on 2 cores).

    .venv/bin/python benchmarks/int8_exactness.py [--fashion-mnist] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import subprocess
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import torch

from mobilenets.core.files import atomic_path
from mobilenets.deploy import bench, pt2e, quantize
from mobilenets.deploy import executorch_export as mobile
from mobilenets.deploy.onnx_export import INPUT_NAME, export_onnx, onnx_session
from mobilenets.tasks.classification.quantize import evaluate_onnx
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.factory import create_model
from mobilenets.zoo.segmenters import create_segmenter

RESOLUTION = 96
PUBLISHED = (
    Path(__file__).resolve().parents[1] / "weights/mobilenet_v2_1.4_fashion-mnist.safetensors"
)


@contextlib.contextmanager
def weight_bits(bits: int):
    """quantize_file with onnxruntime's 8-bit (reduce_range off) or 7-bit weights; the bound
    check is lifted for 8 bits, which is what it refuses."""
    if bits == 7:
        yield
        return
    import onnxruntime.quantization as ort_quantization

    real = ort_quantization.quantize_static

    def eight_bit(*args, **kwargs):
        return real(*args, **{**kwargs, "reduce_range": False})

    with (
        mock.patch.object(ort_quantization, "quantize_static", eight_bit),
        mock.patch.object(quantize, "int16_pair_bound", lambda model: quantize.PairBound(0, "")),
    ):
        yield


def output_steps(path: Path) -> list[float]:
    """The quantization step of each output: the scale of the DequantizeLinear that makes it."""
    model = onnx.load(str(path))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    steps = []
    for output in model.graph.output:
        node = producers[output.name]
        steps.append(
            float(initializers[node.input[1]])
            if node.op_type == "DequantizeLinear"
            else float("nan")
        )
    return steps


def compare(path: Path, images: np.ndarray, threads: int) -> dict[str, tuple[float, float]]:
    """Mean and largest |runtime - QDQ in float| in output steps, for onnxruntime and OpenVINO."""
    steps = output_steps(path)
    reference = onnx_session(path, threads, optimize=False).run(None, {INPUT_NAME: images})
    kernels = onnx_session(path, threads).run(None, {INPUT_NAME: images})
    request = bench.openvino_model(path, threads, precision="int8")
    openvino = [request.infer({0: images})[i] for i in range(len(steps))]
    result = {}
    for name, outputs in (("onnxruntime", kernels), ("openvino", openvino)):
        gaps = np.concatenate(
            [
                (np.abs(ours - theirs) / step).ravel()
                for ours, theirs, step in zip(outputs, reference, steps, strict=True)
            ]
        )
        result[name] = (float(gaps.mean()), float(gaps.max()))
    return result


def random_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "classifier mobilenet_v2_0.35": create_model("mobilenet_v2_0.35_96", num_classes=10),
        "detector ssdlite_mobilenet_v2_0.35 (network)": create_detector(
            "ssdlite_mobilenet_v2", alpha=0.35, resolution=RESOLUTION, num_classes=5
        ),
        "segmenter deeplabv3_mobilenet_v2_0.35": create_segmenter(
            "deeplabv3_mobilenet_v2", alpha=0.35, resolution=RESOLUTION, num_classes=5
        ),
    }


def onnx_rows(threads: int) -> list[list[str]]:
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(16, 3, RESOLUTION, RESOLUTION, generator=generator)
    images = torch.randn(8, 3, RESOLUTION, RESOLUTION, generator=generator).numpy()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in random_models().items():
            fp32 = Path(folder) / "fp32.onnx"
            if name.startswith("classifier"):
                export_onnx(model.eval(), fp32, resolution=RESOLUTION, dynamic_batch=True)
            else:
                bench.exports.export_dense_onnx(model.eval(), fp32, RESOLUTION)
            for bits in (8, 7):
                int8 = Path(folder) / f"int8-{bits}.onnx"
                with weight_bits(bits):
                    quantize.quantize_file(fp32, calibration.split(8), int8)
                bound = quantize.int16_pair_bound(onnx.load(str(int8)))
                gaps = compare(int8, images, threads)
                rows.append(
                    [name, f"{bits}-bit", f"{bound.value:,}"]
                    + [
                        f"{gaps[runtime][0]:.2f} / {gaps[runtime][1]:.0f}"
                        for runtime in ("onnxruntime", "openvino")
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    return rows


def pte_rows() -> list[list[str]]:
    """Each int8 program against its PT2E reference: the check every export runs, in steps."""
    if mobile.executorch_version() is None:
        return []
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(1, 3, RESOLUTION, RESOLUTION, generator=generator) for _ in range(8)]
    model = random_models()["classifier mobilenet_v2_0.35"].eval()
    with tempfile.TemporaryDirectory() as folder:
        report = mobile.export_executorch(
            model,
            Path(folder) / "int8.pte",
            resolution=RESOLUTION,
            int8=True,
            calibration=calibration,
        )
    steps = report.max_abs_diff / report.int8.logits_scale
    row = ["classifier mobilenet_v2_0.35", f"{steps:.1f}", f"{pt2e.INT8_TOLERANCE_STEPS}"]
    print(" | ".join(row), flush=True)
    return [row]


def fashion_mnist_rows(threads: int) -> list[list[str]]:
    """The published checkpoint's test top-1: fp32, and each int8 file by onnxruntime's kernels,
    its QDQ arithmetic in float, and OpenVINO."""
    from mobilenets.data.classification import load_splits
    from mobilenets.data.transforms import eval_transform
    from mobilenets.engine.checkpoint import load_checkpoint
    from mobilenets.engine.evaluate import evaluate
    from mobilenets.engine.loop import ordered_loader

    checkpoint = load_checkpoint(PUBLISHED)
    splits = load_splits("fashion-mnist", checkpoint.preprocessing.resolution)
    splits.train.transform = splits.val.transform = eval_transform(checkpoint.preprocessing)
    indices = quantize.calibration_indices(len(splits.train), quantize.DEFAULT_CALIBRATION_IMAGES)
    loader = ordered_loader(splits.val, quantize.DEFAULT_BATCH_SIZE)
    fp32 = evaluate(checkpoint.model.cpu(), loader, len(checkpoint.classes)).top1
    rows = [["fp32 (PyTorch)", f"{100 * fp32:.2f}%", "", "", ""]]
    with tempfile.TemporaryDirectory() as folder:
        for bits in (8, 7):
            path = Path(folder) / f"int8-{bits}.onnx"
            batches = quantize.calibration_batches(
                splits.train, indices, quantize.DEFAULT_BATCH_SIZE
            )
            with weight_bits(bits):
                quantize.quantize_ptq(checkpoint, batches, path)
            kernels = evaluate_onnx(path, loader)[0]
            emulated = evaluate_onnx(path, loader, optimize=False)[0]
            request = bench.openvino_model(path, threads, precision="int8")
            right = sum(
                int(
                    (
                        torch.from_numpy(request.infer({0: images.numpy()})[0]).argmax(1) == labels
                    ).sum()
                )
                for images, labels in loader
            )
            openvino = right / len(splits.val)
            rows.append(
                [
                    f"int8, {bits}-bit weights",
                    f"{100 * kernels:.2f}%",
                    f"{100 * emulated:.2f}%",
                    f"{100 * openvino:.2f}%",
                    f"{100 * (kernels - emulated):+.2f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--fashion-mnist",
        action="store_true",
        help="also the published checkpoint's top-1 (minutes)",
    )
    parser.add_argument("--markdown", type=Path, help="write the tables to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    environment = bench.environment(args.threads)
    head = f"Measured {datetime.date.today()}, commit `{commit}`; {environment}."
    print(head)
    sections = [
        head,
        "",
        "### int8 ONNX files: each runtime against the file's QDQ arithmetic in float",
        "",
        "Random weights, 8 random 96 px inputs; mean / largest difference "
        "in steps of the output's quantization grid.",
        "",
    ]
    sections.append(
        table(
            ["model", "weights", "largest pair of products", "onnxruntime int8", "OpenVINO int8"],
            onnx_rows(args.threads),
        )
    )
    pte = pte_rows()
    if pte:
        sections += [
            "",
            "### int8 ExecuTorch programs (PT2E, XNNPACK) against their PT2E reference",
            "",
            table(["model", "largest difference (steps of the logits)", "allowed"], pte),
        ]
    if args.fashion_mnist:
        sections += [
            "",
            "### The published Fashion-MNIST checkpoint, top-1 on the 10,000 test images",
            "",
            table(
                [
                    "model",
                    "onnxruntime int8 kernels",
                    "QDQ in float",
                    "OpenVINO int8",
                    "kernels - float (points)",
                ],
                fashion_mnist_rows(args.threads),
            ),
        ]
    if args.markdown:
        with atomic_path(args.markdown) as temporary:
            Path(temporary).write_text("\n".join(sections) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
