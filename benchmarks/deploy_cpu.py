"""CPU latency of MobileNetV2 1.0/224: eager fp32 against onnxruntime fp32 and int8, one process.

Same threads for both runtimes, batch 1 and 32, PyTorch eager measured in the same run.

The int8 file is calibrated on random normal inputs (synthetic), so its accuracy means nothing
here, only its speed; `mobilenets quantize` calibrates on real images. Prints the markdown table
(for results/deploy_cpu.md) and the int8-vs-eager latency ratio at batch 1 beside the goal: int8
at most 1/7 of eager's latency.

    .venv/bin/python benchmarks/deploy_cpu.py [--threads 2] [--warmup 5] [--iterations 30]
"""

from __future__ import annotations

import argparse

import torch

from mobilenets.deploy import bench

MODEL = "mobilenet_v2_1.0_224"
BATCHES = (1, 32)
GOAL = 1 / 7  # int8 latency over eager fp32 latency, batch 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=bench.DEFAULT_WARMUP)
    parser.add_argument("--iterations", type=int, default=bench.DEFAULT_ITERATIONS)
    args = parser.parse_args()
    torch.manual_seed(0)

    records = bench.run_benchmarks(
        [MODEL],
        batches=BATCHES,
        threads=args.threads,
        warmup=args.warmup,
        iterations=args.iterations,
        int8=True,
        progress=print,
    )
    print(
        f"\n{bench.environment(args.threads)}; median and p90 of {args.iterations} runs after "
        f"{args.warmup} warm-up\n"
    )
    print(bench.markdown_table(records))
    print("\n" + "\n".join(bench.notes(records)))
    (int8,) = [r for r in records if r.precision == "int8" and r.batch == 1]
    status = "met" if int8.latency_vs_eager <= GOAL else "NOT met"
    print(
        f"\nint8 / eager fp32 latency at batch 1: {int8.latency_vs_eager:.3f} "
        f"({int8.speedup:.1f}x faster); goal <= {GOAL:.3f} (1/7): {status}"
    )


if __name__ == "__main__":
    main()
