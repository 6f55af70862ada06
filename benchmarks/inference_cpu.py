"""Eager inference speed of our models against the reference implementations, same process.

Our MobileNetV2 against torchvision's mobilenet_v2, and our MobileNetV1 against timm's
mobilenetv1_100, with identical weights copied in, channels_last, torch.inference_mode. The two
models of a pair are timed in alternation so that machine noise hits both alike. A ratio near
1.0 means our named-parts modules cost nothing over the references.

    .venv/bin/python benchmarks/inference_cpu.py [--resolution 224] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import timm
import torch
import torchvision

from mobilenets import MobileNetV1, MobileNetV2


def copy_by_position(source: torch.nn.Module, target: torch.nn.Module) -> None:
    theirs, ours = source.state_dict(), target.state_dict()
    mapped = {}
    for (their_key, tensor), (our_key, slot) in zip(theirs.items(), ours.items(), strict=True):
        if tensor.shape != slot.shape:
            raise SystemExit(f"architectures differ at {their_key} -> {our_key}")
        mapped[our_key] = tensor
    target.load_state_dict(mapped)


def time_pair(reference, ours, batch: int, resolution: int, repeats: int) -> tuple[float, float]:
    """Median seconds per forward pass of each model, timed in alternation."""
    x = torch.randn(batch, 3, resolution, resolution).to(memory_format=torch.channels_last)
    samples = {"reference": [], "ours": []}
    with torch.inference_mode():
        for model in (reference, ours):
            for _ in range(3):  # warm-up
                model(x)
        for _ in range(repeats):
            for label, model in (("reference", reference), ("ours", ours)):
                start = time.perf_counter()
                model(x)
                samples[label].append(time.perf_counter() - start)
    return statistics.median(samples["reference"]), statistics.median(samples["ours"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pairs = [
        ("mobilenet_v2 1.0", "torchvision", torchvision.models.mobilenet_v2(), MobileNetV2()),
        ("mobilenet_v1 1.0", "timm", timm.create_model("mobilenetv1_100"), MobileNetV1()),
    ]
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, {args.resolution}x{args.resolution}, channels_last, "
        f"median of {args.repeats}"
    )
    print("| model | reference | batch | reference ms | ours ms | ours / reference |")
    print("|---|---|---:|---:|---:|---:|")
    for label, source, reference, ours in pairs:
        copy_by_position(reference, ours)
        for model in (reference, ours):
            model.eval().to(memory_format=torch.channels_last)
        for batch in (1, 16):
            ref_s, ours_s = time_pair(reference, ours, batch, args.resolution, args.repeats)
            print(
                f"| {label} | {source} | {batch} | {ref_s * 1e3:.2f} | {ours_s * 1e3:.2f} "
                f"| {ours_s / ref_s:.3f} |"
            )


if __name__ == "__main__":
    main()
