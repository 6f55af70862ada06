"""CPU latency of one model per task in every runtime, beside the deployment goals.

MobileNetV2 1.0/224 (classifier), SSDLite-MobileNetV2 1.0 at 320 (detector) and Mobile
DeepLabv3 on MobileNetV2 at 513, output stride 16, no ASPP (segmenter), at batch 1: PyTorch
eager fp32 against onnxruntime, OpenVINO and ExecuTorch (XNNPACK), fp32 and int8, one process,
the same threads for all. Random weights and int8 calibrated on random normal inputs: the speed
is real, the accuracy meaningless (the int8 accuracy drops are measured on trained checkpoints
by `mobilenets quantize`, `detect export --int8` and `segment export --int8`).

Goals: the fastest int8 runtime at least 7x (classifier), 5x (detector) and 4x (segmenter)
faster than eager fp32. Prints the table, each goal's ratio, and the detector's frames per
second beside the paper's (MobileNetV2 paper, section 6.2: SSDLite at 320 runs at about 5 FPS on
a Pixel 1 phone's CPU, one big core).

    .venv/bin/python benchmarks/deploy_goals.py [--threads 2] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import subprocess
from datetime import date
from pathlib import Path

import torch

from mobilenets.core.files import atomic_path
from mobilenets.deploy import bench
from mobilenets.zoo.detectors import create_detector
from mobilenets.zoo.segmenters import create_segmenter

# (what, goal: the fastest int8 runtime at least this many times faster than eager fp32)
GOALS = {"classifier": 7.0, "detector": 5.0, "segmenter": 4.0}
PAPER_FPS = 5.0  # SSDLite-MobileNetV2 at 320 on a Pixel 1 CPU (200 ms), MobileNetV2 paper 6.2


def models() -> dict[str, object]:
    torch.manual_seed(0)
    return {
        "classifier": "mobilenet_v2_1.0_224",
        "detector": create_detector("ssdlite_mobilenet_v2", resolution=320).eval(),
        "segmenter": create_segmenter(
            "deeplabv3_mobilenet_v2", output_stride=16, aspp=False, resolution=513
        ).eval(),
    }


def summary(records: list[bench.BenchRecord], names: dict[str, str]) -> list[str]:
    lines = []
    for task, goal in GOALS.items():
        rows = [r for r in records if r.model == names[task]]
        eager = next(r for r in rows if r.runtime == bench.EAGER)
        best = min((r for r in rows if r.precision == "int8"), key=lambda r: r.median_ms)
        status = "met" if best.speedup >= goal else "NOT met"
        lines.append(
            f"{task} {names[task]}: fastest int8 is {best.runtime} at {best.median_ms:.2f} ms, "
            f"{best.speedup:.2f}x faster than eager fp32 ({eager.median_ms:.2f} ms); goal >= "
            f"{goal:g}x: {status}"
        )
        if task == "detector":
            lines.append(
                f"detector frames per second: {1e3 / best.median_ms:.1f} ({best.runtime} int8, "
                f"{best.threads} threads) against the paper's about {PAPER_FPS:g} on a Pixel 1"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=bench.DEFAULT_WARMUP)
    parser.add_argument("--iterations", type=int, default=bench.DEFAULT_ITERATIONS)
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args()
    inputs = models()
    names = {task: item if isinstance(item, str) else item.name for task, item in inputs.items()}
    records = bench.run_benchmarks(
        list(inputs.values()),
        batches=(1,),
        threads=args.threads,
        warmup=args.warmup,
        iterations=args.iterations,
        int8=True,
        pte=True,
        openvino=True,
        progress=print,
    )
    command = f"benchmarks/deploy_goals.py --threads {args.threads}"
    write_report(command, args, records, summary(records, names))


def write_report(command: str, args, records: list, lines: list[str]) -> None:
    """Print the report of a goals run (the command, commit and date, the environment, the table,
    its notes and the goal lines) and write it to ``args.markdown`` when given."""
    head = (
        f"{bench.environment(args.threads)}; median and p90 of {args.iterations} runs after "
        f"{args.warmup} warm-up"
    )
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "?"
    )
    report = "\n\n".join(
        [
            f"commit `{commit}`, {date.today().isoformat()}: `.venv/bin/python {command}`",
            head,
            bench.markdown_table(records),
            "\n".join(bench.notes(records)),
            "\n".join(f"- {line}" for line in lines),
        ]
    )
    print("\n" + report)
    if args.markdown:
        with atomic_path(args.markdown) as temporary:
            Path(temporary).write_text(report + "\n")


if __name__ == "__main__":
    main()
