"""Where OpenVINO spends a model's time: its per-layer profile, summed by layer kind.

For the ONNX files given, or (with ``--goal-models``) for the int8 files of the three models of
`deploy_goals.py` (exported with random weights and synthetic calibration into a temporary
folder), OpenVINO's CPU plugin runs batch 1 with its per-layer counters on, as `mobilenets bench`
compiles it (latency hint, ``--threads`` threads; fp32 files in f32). Prints the median latency,
the counters' total, the time per (layer type, kernel) and the slowest layers: what an int8 file
still spends outside its quantized convolutions.

    .venv/bin/python benchmarks/openvino_profile.py FILE.onnx ... [--threads 2] [--top 8]
    .venv/bin/python benchmarks/openvino_profile.py --goal-models [--markdown FILE]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from mobilenets.core.files import atomic_path
from mobilenets.deploy import bench

sys.path.insert(0, str(Path(__file__).parent))
from deploy_goals import models as goal_models  # noqa: E402


def input_shape(path: Path) -> tuple[int, ...]:
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    return tuple(d.dim_value or 1 for d in dims.dim)  # a dynamic batch measures at 1


def profile(path: Path, threads: int, iterations: int, top: int) -> list[str]:
    precision = "int8" if ".int8." in path.name else "fp32"
    request = bench.openvino_model(path, threads, precision, counters=True)
    images = np.random.default_rng(0).standard_normal(input_shape(path), dtype=np.float32)
    for _ in range(5):
        request.infer([images])
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        request.infer([images])
        times.append(time.perf_counter() - start)
    layers = [
        (p.real_time.total_seconds() * 1e3, p.node_name, p.node_type, p.exec_type)
        for p in request.get_profiling_info()
    ]
    total = sum(ms for ms, *_ in layers)
    by_kind = collections.Counter()
    for ms, _, node_type, exec_type in layers:
        by_kind[node_type, exec_type] += ms
    lines = [
        f"### `{path.name}`",
        f"median {1e3 * statistics.median(times):.2f} ms over {iterations} runs; the per-layer "
        f"counters add up to {total:.2f} ms",
        "",
        "| layer type | kernel | ms | share |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {node_type} | {exec_type} | {ms:.2f} | {100 * ms / total:.1f}% |"
        for (node_type, exec_type), ms in by_kind.most_common()
        if ms >= 0.005 * total
    ]
    lines += ["", "| slowest layers | type | ms |", "|---|---|---:|"]
    lines += [
        f"| `{name[:70]}` | {node_type} | {ms:.2f} |"
        for ms, name, node_type, _ in sorted(layers, reverse=True)[:top]
    ]
    return lines


def export_goal_models(folder: Path) -> list[Path]:
    paths = []
    for item in goal_models().values():
        source = bench.load_source(item, None, output_stride=None, aspp=None)
        target = bench.exports.model_target(source, folder, int8=True, calibration_images=32)
        paths += [path for path, precision, *_ in target.onnx_files if precision == "int8"]
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument(
        "--goal-models", action="store_true", help="the int8 files of deploy_goals.py's models"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args()
    if not args.files and not args.goal_models:
        parser.error("give ONNX files or --goal-models")
    with tempfile.TemporaryDirectory(prefix="openvino-profile-") as folder:
        files = list(args.files)
        if args.goal_models:
            files += export_goal_models(Path(folder))
        sections = [bench.environment(args.threads)]
        for path in files:
            sections.append("\n".join(profile(path, args.threads, args.iterations, args.top)))
    report = "\n\n".join(sections)
    print(report)
    if args.markdown:
        with atomic_path(args.markdown) as temporary:
            Path(temporary).write_text(report + "\n")


if __name__ == "__main__":
    main()
