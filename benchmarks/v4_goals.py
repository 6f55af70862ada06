"""MobileNetV4-Conv-S against MobileNetV2 1.0/224 at batch 1 in every runtime, fp32 and int8.

The paper (Qin et al. 2024, Table 6) puts Conv-S at 2.4 ms against V2's 5.0 ms on a Pixel 6 CPU in
int8 through XNNPACK. This runs both models in one process, on the same inputs and threads: PyTorch
eager fp32, onnxruntime and OpenVINO (and with --pte ExecuTorch XNNPACK), fp32 and int8. Random
weights and int8 calibrated on random normal inputs: the speed is real, the accuracy meaningless
(the int8 accuracy of V4 is measured on trained checkpoints, docs/results/mobilenet-v4.md).

Goal: Conv-S int8 faster than V2 int8, compared runtime by runtime and fastest against fastest.
Hybrid-M at 256 (Mobile MQA) is timed beside them with --hybrid.

    .venv/bin/python benchmarks/v4_goals.py [--threads 2] [--hybrid] [--pte] [--markdown FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from deploy_goals import write_report

from mobilenets.deploy import bench

V4, V2 = "mobilenet_v4_conv_small_1.0_224", "mobilenet_v2_1.0_224"
HYBRID = "mobilenet_v4_hybrid_medium_1.0_256"
PAPER_MS = {V4: 2.4, V2: 5.0}  # Pixel 6 CPU, int8, XNNPACK (Table 6)


def summary(records: list[bench.BenchRecord]) -> list[str]:
    int8 = [r for r in records if r.precision == "int8"]
    lines = []
    for runtime in sorted({r.runtime for r in int8}):
        pair = {r.model: r for r in int8 if r.runtime == runtime}
        if V4 in pair and V2 in pair:
            ratio = pair[V4].median_ms / pair[V2].median_ms
            lines.append(
                f"{runtime} int8: Conv-S {pair[V4].median_ms:.2f} ms, V2 {pair[V2].median_ms:.2f} "
                f"ms, Conv-S / V2 = {ratio:.2f} ({'faster' if ratio < 1 else 'NOT faster'})"
            )
    best = {
        model: min((r for r in int8 if r.model == model), key=lambda r: r.median_ms)
        for model in (V4, V2)
    }
    ratio = best[V4].median_ms / best[V2].median_ms
    status = "met" if ratio < 1 else "NOT met"
    lines.append(
        f"fastest int8: Conv-S {best[V4].median_ms:.2f} ms ({best[V4].runtime}), V2 "
        f"{best[V2].median_ms:.2f} ms ({best[V2].runtime}): {ratio:.2f} of V2's (the paper's "
        f"Pixel 6: {PAPER_MS[V4] / PAPER_MS[V2]:.2f}); goal Conv-S int8 faster than V2 int8: "
        f"{status}"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=bench.DEFAULT_WARMUP)
    parser.add_argument("--iterations", type=int, default=bench.DEFAULT_ITERATIONS)
    parser.add_argument("--hybrid", action="store_true", help=f"also {HYBRID}")
    parser.add_argument(
        "--pte", action="store_true", help="also ExecuTorch (XNNPACK): minutes per export"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args()
    torch.manual_seed(0)
    names = [V4, V2, *([HYBRID] if args.hybrid else [])]
    records = bench.run_benchmarks(
        names,
        batches=(1,),
        threads=args.threads,
        warmup=args.warmup,
        iterations=args.iterations,
        int8=True,
        pte=args.pte,
        openvino=True,
        progress=print,
    )
    command = f"benchmarks/v4_goals.py --threads {args.threads}" + " --hybrid" * args.hybrid
    command += " --pte" * args.pte
    if args.iterations != bench.DEFAULT_ITERATIONS:
        command += f" --iterations {args.iterations}"
    write_report(command, args, records, summary(records))


if __name__ == "__main__":
    main()
