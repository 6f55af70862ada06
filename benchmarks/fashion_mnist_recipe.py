"""Report on a Fashion-MNIST recipe run: its settings, cost, per-epoch metrics and status.

Reads only what the run wrote (train_config.json, metrics.jsonl, and the position inside the
current epoch from its state, state/last.pt), so it can report a run that is still going.
Prints markdown; the results are kept in benchmarks/results/fashion_mnist_recipe.md.

    .venv/bin/python benchmarks/fashion_mnist_recipe.py RUN_DIR [--goal 0.955]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mobilenets
from mobilenets import ModelConfig
from mobilenets.engine.checkpoint import STATE_FILE

# The settings a recipe command spells out; the rest come from its preset.
COMMAND_KEYS = (
    "model",
    "alpha",
    "data",
    "preset",
    "augment",
    "weights",
    "epochs",
    "batch_size",
    "lr",
    "workers",
)


def command_line(config: dict) -> str:
    """The train command that produced a run, rebuilt from its saved config."""
    flags = [
        f"--{key.replace('_', '-')} {config[key]}"
        for key in COMMAND_KEYS
        if config.get(key) is not None
    ]
    return "mobilenets train " + " ".join(flags)


def position(run: Path) -> str | None:
    """Where an unfinished run's last saved state stands inside its current epoch."""
    path = run / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    epoch = state["epoch_state"]
    saved = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
    where = f"the start of epoch {state['epoch'] + 1}"
    if epoch["seen"]:
        where = (
            f"epoch {state['epoch'] + 1}, {epoch['seen']:,} images into it at "
            f"{epoch['seen'] / epoch['seconds']:.0f} images/s"
        )
    return f"last saved state: {where} (saved {saved})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--goal", type=float, default=0.955)
    args = parser.parse_args()
    run = json.loads((args.run / "train_config.json").read_text())
    metrics_path = args.run / "metrics.jsonl"
    rows = (
        [json.loads(line) for line in metrics_path.read_text().splitlines()]
        if (metrics_path.is_file())
        else []
    )
    config, model = run["train_config"], ModelConfig.from_dict(run["model_config"])
    report = mobilenets.cost(
        model.arch, **{k: v for k, v in model.to_dict().items() if k != "arch"}
    )
    best = max(rows, key=lambda row: row["val_top1"]) if rows else None
    done = len(rows) >= config["epochs"]

    print(f"model: {model.name}, {report.params:,} params, {report.macs:,} MACs")
    print(f"command: {command_line(config)} --out {args.run.name}")
    settings = ", ".join(
        f"{key} {config[key]}"
        for key in (
            "optimizer",
            "lr",
            "weight_decay",
            "schedule",
            "warmup_epochs",
            "label_smoothing",
            "ema_decay",
            "augment",
            "random_erasing",
            "batch_size",
        )
    )
    print(f"settings: {settings}")
    status = "finished" if done else "in progress"
    print(f"status: {status}, {len(rows)} of {config['epochs']} epochs")
    if not done and (where := position(args.run)) is not None:
        print(where)
    if best is not None:
        # The test set is also the validation set here, so the claim is the final epoch's
        # figure: picking the best epoch would select on the test set.
        final = rows[-1]  # the latest until the run is done
        verdict = (
            "reached"
            if done and final["val_top1"] >= args.goal
            else "not reached"
            if done
            else "not decided until the last epoch"
        )
        print(
            f"{'final' if done else 'latest'} test top-1: {100 * final['val_top1']:.2f}% "
            f"(epoch {final['epoch']}); "
            f"best {100 * best['val_top1']:.2f}% at epoch {best['epoch']}; "
            f"goal {100 * args.goal:.1f}% {verdict}"
        )
        hours = sum(row["epoch_seconds"] for row in rows) / 3600
        print(f"training time{'' if done else ' so far'} (sum of epoch times): {hours:.2f} h")
    print()
    print("| epoch | lr | train loss | train top-1 | test loss | test top-1 | test top-5 | s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['epoch']} | {row['lr']:.4f} | {row['train_loss']:.4f} | "
            f"{100 * row['train_top1']:.2f} | {row['val_loss']:.4f} | "
            f"{100 * row['val_top1']:.2f} | {100 * row['val_top5']:.2f} | "
            f"{row['epoch_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
