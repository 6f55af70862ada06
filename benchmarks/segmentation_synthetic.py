"""The offline segmentation demo: Mobile DeepLabv3 trained from scratch on generated shapes, CPU.

Runs the ``mobilenets segment train`` command below in a subprocess, from generating the data
(into a fresh ``$MOBILENETS_DATA`` under the run folder) to the last evaluation, and reports the
validation mIoU, pixel accuracy and per-class IoU, params, MACs, the wall time, the CPU time of the
command and how much of the machine's CPU time the hypervisor took for other guests during the run
(``steal`` in /proc/stat), so a time measured on a shared VM can be judged. Prints markdown; the
result is kept in benchmarks/results/segmentation_synthetic.md.

    .venv/bin/python benchmarks/segmentation_synthetic.py [--out runs/segmentation-synthetic]
        [--model NAME] [--markdown benchmarks/results/segmentation_synthetic.md] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import mobilenets
from mobilenets.core.segmentation_spec import SegmentationConfig

# The demo recipe: the flags after `mobilenets segment train`.
RECIPE = (
    "--data",
    "synthetic-shapes:3000",
    "--alpha",
    "0.35",
    "--output-stride",
    "8",
    "--crop",
    "128",
    "--min-scale",
    "1",
    "--max-scale",
    "1",
    "--epochs",
    "7",
    "--batch-size",
    "16",
    "--optimizer",
    "adamw",
    "--lr",
    "0.01",
    "--weight-decay",
    "1e-4",
    "--eval-batch-size",
    "50",
    "--workers",
    "1",
)
GOAL_MIOU, GOAL_SECONDS = 0.85, 10 * 60


def cpu_times() -> tuple[int, int]:
    """(all CPU time, stolen time) of the machine so far, in clock ticks (/proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(fields[:8]), fields[7]


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/segmentation-synthetic"))
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    parser.add_argument(
        "--model",
        default="deeplabv3_mobilenet_v2",
        help="the registered model to train (default %(default)s; a V3 one such as "
        "lraspp_mobilenet_v3_small runs the same recipe)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    data = args.out / "data"
    command = [
        "mobilenets",
        "segment",
        "train",
        "--model",
        args.model,
        *RECIPE,
        "--out",
        str(args.out / "run"),
        "--no-progress",
    ]
    env = {**os.environ, "MOBILENETS_DATA": str(data), "OMP_NUM_THREADS": str(args.threads)}
    total_before, stolen_before = cpu_times()
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "mobilenets", *command[1:]], env=env, check=True)
    wall = time.monotonic() - started
    total_after, stolen_after = cpu_times()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    steal = (stolen_after - stolen_before) / max(1, total_after - total_before)

    run = args.out / "run"
    saved = json.loads((run / "train_config.json").read_text())
    config = SegmentationConfig.from_dict(saved["segmentation_config"])
    report = mobilenets.cost(config)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run / "eval.json").read_text())
    reached = final["mIoU"] >= GOAL_MIOU and wall <= GOAL_SECONDS
    per_class = " | ".join(f"{iou:.3f}" if iou is not None else "-" for iou in final["IoU"])
    lines = [
        "# Offline segmentation demo: Mobile DeepLabv3 from scratch on synthetic shapes, CPU",
        "",
        "| | |",
        "|---|---|",
        "| command | `.venv/bin/python benchmarks/segmentation_synthetic.py`, which runs the "
        "command below |",
        f"| commit | `{commit()}` |",
        f"| machine | {os.cpu_count()}-core {cpu_model()} VM, no GPU ({100 * steal:.0f}% of its "
        f"CPU time stolen by the hypervisor); torch {torch.__version__}, {args.threads} torch "
        "threads |",
        f"| date | {datetime.date.today()} |",
        "",
        "```bash",
        f"MOBILENETS_DATA={data} OMP_NUM_THREADS={args.threads} \\",
        f"    {shlex.join(command)}",
        "```",
        "",
        f"Model: {config.name}, {len(saved['classes'])} classes (background included), "
        f"{report.params:,} params, {report.macs:,} MACs ({report.macs / 1e6:.1f}M) per "
        f"{config.resolution}x{config.resolution} image.",
        "",
        "| mIoU | pixel accuracy | mean accuracy | fwIoU | wall time | CPU time | CPU stolen |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {final['mIoU']:.3f} | {final['pixel_accuracy']:.3f} | {final['mean_accuracy']:.3f} "
        f"| {final['fwIoU']:.3f} | {wall / 60:.1f} min | {cpu / 60:.1f} min "
        f"| {100 * steal:.0f}% |",
        "",
        f"Goal (mIoU >= {GOAL_MIOU} on the validation split within {GOAL_SECONDS // 60} min of "
        f"wall time): **{'reached' if reached else 'not reached'}**. Wall time includes "
        "generating the data and every epoch's evaluation on the validation images; CPU time is "
        "the command's user + system time over all its processes.",
        "",
        f"| {' | '.join(final['classes'])} |",
        f"|{'---:|' * len(final['classes'])}",
        f"| {per_class} |",
        "",
        "| epoch | lr | train loss | val mIoU | val pixel accuracy | images/s | epoch s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['epoch']} | {r['lr']:.5f} | {r['train_loss']:.3f} | {r['val_mIoU']:.3f} | "
            f"{r['val_pixel_accuracy']:.3f} | {r['images_per_s']:.1f} | {r['epoch_seconds']:.0f} |"
            for r in rows
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
