"""The offline detection demo: SSDLite trained from scratch on generated shapes, on this CPU.

Runs the ``mobilenets detect train`` command below in a subprocess, from generating the data
(into a fresh ``$MOBILENETS_DATA`` under the run folder) to the last COCO evaluation, and
reports AP, AP50, AP75 on the validation split, params, MACs, the wall time, the CPU time of
the command, and how much of the machine's CPU time the hypervisor took for other guests
during the run (``steal`` in /proc/stat), so a time measured on a shared VM can be judged.
Prints markdown; the result is kept in benchmarks/results/detection_synthetic.md.

    .venv/bin/python benchmarks/detection_synthetic.py [--out runs/detection-synthetic]
        [--model NAME] [--markdown benchmarks/results/detection_synthetic.md] [--threads 2]
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
from mobilenets.core.detection_spec import DetectionConfig

# The demo recipe: the flags after `mobilenets detect train`.
RECIPE = (
    "--data",
    "synthetic-shapes:4000",
    "--alpha",
    "0.35",
    "--resolution",
    "128",
    "--epochs",
    "7",
    "--batch-size",
    "8",
    "--lr",
    "0.015",
    "--warmup-epochs",
    "0.3",
    "--match-iou",
    "0.4",
    "--augment",
    "flip",
    "--workers",
    "1",
)
GOAL_AP50, GOAL_SECONDS = 0.8, 15 * 60


def cpu_times() -> tuple[int, int]:
    """(all CPU time, stolen time) of the machine so far, in clock ticks (/proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(fields[:8]), fields[7]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/detection-synthetic"))
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    parser.add_argument(
        "--model",
        default="ssdlite_mobilenet_v2",
        help="the registered model to train (default %(default)s; a V3 one such as "
        "ssdlite_mobilenet_v3_small runs the same recipe)",
    )
    # One thread for the model and one data worker: on a 2-core VM shared with other jobs, two
    # intra-op threads mostly wait for each other.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    data = args.out / "data"
    command = [
        "mobilenets",
        "detect",
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
    config = DetectionConfig.from_dict(saved["detection_config"])
    report = mobilenets.cost(config)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run / "eval.json").read_text())
    reached = final["AP50"] >= GOAL_AP50 and wall <= GOAL_SECONDS
    lines = [
        "# Offline detection demo: SSDLite from scratch on synthetic shapes, CPU",
        "",
        f"Measured {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, torch threads: {args.threads}, "
        "the machine shared with other jobs. Regenerate with "
        "`.venv/bin/python benchmarks/detection_synthetic.py`.",
        "",
        "```bash",
        f"MOBILENETS_DATA={data} OMP_NUM_THREADS={args.threads} \\",
        f"    {shlex.join(command)}",
        "```",
        "",
        f"Model: {config.name}, {len(saved['classes']) - 1} classes + background, "
        f"{report.params:,} params, {report.macs:,} MACs ({report.macs / 1e6:.1f}M) per image.",
        "",
        "| AP | AP50 | AP75 | APs | APm | APl | wall time | CPU time | CPU stolen |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {final['AP']:.3f} | {final['AP50']:.3f} | {final['AP75']:.3f} | {final['APs']:.3f} "
        f"| {final['APm']:.3f} | {final['APl']:.3f} | {wall / 60:.1f} min | {cpu / 60:.1f} min "
        f"| {100 * steal:.0f}% |",
        "",
        f"Goal (AP50 >= {GOAL_AP50} within {GOAL_SECONDS // 60} min of wall time): "
        f"**{'reached' if reached else 'not reached'}**. Wall time includes generating the "
        "data, and every epoch's COCO evaluation; CPU time is the command's user + system "
        "time over all its processes; CPU stolen is the share of the machine's CPU time the "
        "hypervisor gave to other guests meanwhile.",
        "",
        "| epoch | lr | train loss | val AP | val AP50 | images/s | epoch s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['epoch']} | {r['lr']:.5f} | {r['train_loss']:.3f} | {r['val_AP']:.3f} | "
            f"{r['val_AP50']:.3f} | {r['images_per_s']:.1f} | {r['epoch_seconds']:.0f} |"
            for r in rows
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
