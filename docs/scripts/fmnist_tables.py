"""The tables of the Fashion-MNIST results page, written from the runs' own files.

Each run folder in benchmarks/results/ (``fmnist-*``) holds what its training wrote:
``train_config.json``, ``metrics.jsonl`` (one row per epoch), ``eval.json`` (the final weights,
one pass) and, where it was measured, ``eval-tta-flip.json`` (flip test-time augmentation). The
tables between the markers in benchmarks/results/fashion_mnist_recipe.md are generated from
them here; what the files do not say (the machine, the commit that records the result) is in
``RUNS`` below.

    python docs/scripts/fmnist_tables.py           # rewrite the tables in the page
    python docs/scripts/fmnist_tables.py --check   # exit 1 if the page differs from the files
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import mobilenets

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = RESULTS / "fashion_mnist_recipe.md"
BEGIN = "<!-- begin: tables written by docs/scripts/fmnist_tables.py from the run folders -->"
END = "<!-- end: tables written by docs/scripts/fmnist_tables.py -->"
CPU = "2-core AMD EPYC VM"


@dataclass(frozen=True)
class Run:
    folder: str
    name: str
    machine: str
    commit: str  # the commit that records the run's final figures
    dates: str
    gpu_epochs: int = 0  # the first epochs trained on the GPU, the rest on the CPU


RUNS = (
    Run("fmnist-basic-60", "basic-60", CPU, "bcd73d3", "2026-11-29/30"),
    Run(
        "fmnist-a14-60-b256",
        "a14-60-b256",
        f"one NVIDIA H200 (bf16), then a {CPU}",
        "150aa77",
        "2026-11-30",
        gpu_epochs=45,
    ),
    Run("fmnist-a14-ft20", "a14-ft20", CPU, "da68576", "2026-11-30"),
    Run("fmnist-a14-120-b256", "a14-120-b256", CPU, "556b5a6", "2026-11-30 to 2026-12-01"),
)
RECIPE = "fmnist-a14-120-b256"  # the run whose final weights are the published result
EPOCH_STEP = 10  # the epochs shown in the by-epoch table: 1, 10, 20, ... and the last


def read_run(run: Run) -> dict:
    folder = RESULTS / run.folder
    saved = json.loads((folder / "train_config.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    tta = folder / "eval-tta-flip.json"
    return {
        "config": saved["train_config"],
        "model_config": saved["model_config"],
        "rows": rows,
        "eval": json.loads((folder / "eval.json").read_text()),
        "tta": json.loads(tta.read_text()) if tta.is_file() else None,
    }


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def start(config: dict) -> str:
    """Where a run's weights started: random, or another run's final weights."""
    weights = config.get("weights")
    if weights is None:
        return "random"
    for run in RUNS:
        if run.folder in weights:
            return f"`{run.name}` final"
    return f"`{weights}`"


def training_time(run: Run, rows: list[dict]) -> str:
    cpu = sum(row["epoch_seconds"] for row in rows[run.gpu_epochs :]) / 3600
    if not run.gpu_epochs:
        return f"{cpu:.2f} h"
    gpu = sum(row["epoch_seconds"] for row in rows[: run.gpu_epochs])
    return f"{gpu:.0f} s GPU + {cpu:.2f} h CPU"


def runs_table(data: dict[str, dict]) -> list[str]:
    lines = [
        "| run | width | epochs | batch | lr | start | params | MACs | test top-1 % | top-5 % "
        "| flip TTA top-1 % | best epoch |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in RUNS:
        found = data[run.folder]
        config, rows = found["config"], found["rows"]
        report = mobilenets.cost(mobilenets.ModelConfig.from_dict(found["model_config"]))
        best = max(rows, key=lambda row: row["val_top1"])
        tta = found["tta"]
        lines.append(
            f"| `{run.name}` | {found['model_config']['alpha']} | {len(rows)} "
            f"| {config['batch_size']} | {config['lr']} | {start(config)} | {report.params:,} "
            f"| {report.macs / 1e6:.1f}M | {percent(found['eval']['top1'])} "
            f"| {percent(found['eval']['top5'])} | {percent(tta['top1']) if tta else '-'} "
            f"| {percent(best['val_top1'])} (epoch {best['epoch']}) |"
        )
    return lines


def provenance_table(data: dict[str, dict]) -> list[str]:
    lines = [
        "| run | training | images/s (median) | machine | recorded at | dates |",
        "|---|---|---:|---|---|---|",
    ]
    for run in RUNS:
        rows = data[run.folder]["rows"]
        speeds = sorted(row["images_per_s"] for row in rows[run.gpu_epochs :])
        median = speeds[len(speeds) // 2]
        lines.append(
            f"| `{run.name}` | {training_time(run, rows)} | {median:.0f} on the CPU "
            f"| {run.machine} | `{run.commit}` | {run.dates} |"
        )
    return lines


def epochs_table(data: dict[str, dict]) -> list[str]:
    longest = max(len(found["rows"]) for found in data.values())
    epochs = sorted({1, *range(EPOCH_STEP, longest + 1, EPOCH_STEP)}
                    | {len(found["rows"]) for found in data.values()})  # fmt: skip
    names = [run.name for run in RUNS]
    lines = [
        "| epoch | " + " | ".join(f"`{name}`" for name in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for epoch in epochs:
        cells = []
        for run in RUNS:
            rows = data[run.folder]["rows"]
            cells.append(percent(rows[epoch - 1]["val_top1"]) if epoch <= len(rows) else "")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines


def classes_table(found: dict) -> list[str]:
    one, two = found["eval"]["per_class"], found["tta"]["per_class"]
    lines = ["| class | one pass % | flip TTA % |", "|---|---:|---:|"]
    for name in one:
        lines.append(f"| {name} | {100 * one[name]:.1f} | {100 * two[name]:.1f} |")
    return lines


def recipe_command(config: dict, name: str) -> str:
    flags = (f"--data {config['data']} --model {config['model']} --preset {config['preset']} "
             f"--augment {config['augment']} --alpha {config['alpha']} --epochs "
             f"{config['epochs']} --batch-size {config['batch_size']} --lr {config['lr']} "
             f"--workers {config['workers']}")  # fmt: skip
    return f"mobilenets train {flags} --out runs/{name}"


def tables() -> str:
    data = {run.folder: read_run(run) for run in RUNS}
    recipe = data[RECIPE]
    lines = [
        BEGIN,
        "",
        "## All runs",
        "",
        "Every run: MobileNetV2 small-input, `--preset modern --augment basic` (pad-and-crop, "
        "flip, random erasing 0.25, label smoothing 0.1, EMA 0.999, SGD with nesterov, 1 warmup "
        "epoch then cosine), its final (EMA) weights evaluated on the 10,000 test images. "
        "Training time is the sum of the epochs' times.",
        "",
        *runs_table(data),
        "",
        *provenance_table(data),
        "",
        f"The recipe run's command: `{recipe_command(recipe['config'], RUNS[-1].name)}`.",
        "",
        "## Test top-1 by epoch",
        "",
        *epochs_table(data),
        "",
        f"## Per class, `{RUNS[-1].name}` final weights",
        "",
        *classes_table(recipe),
        "",
        END,
    ]
    return "\n".join(lines)


def replace(page: str, generated: str) -> str:
    head, found, rest = page.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{PAGE} lacks the markers {BEGIN!r} and {END!r}")
    return head + generated + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    page = PAGE.read_text()
    updated = replace(page, tables())
    if args.check:
        if updated != page:
            print(f"{PAGE.relative_to(ROOT)} is stale: run python docs/scripts/fmnist_tables.py")
            return 1
        return 0
    PAGE.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
