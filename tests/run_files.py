"""What the task tests read back from a run folder, and the resume-exactness check every task's
training runs through the one engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilenets.engine import run
from mobilenets.engine.checkpoint import STATE_FILE

TIMING = ("images_per_s", "epoch_seconds", "eval_seconds")  # the columns that differ run to run


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


class Interrupted(Exception):
    pass


def interrupted_and_resumed(fit, config, tmp_path: Path, monkeypatch, stop_step: int = 3):
    """Train ``config`` straight, then again stopped after step ``stop_step`` (its state saved
    after every step) and resumed; assert the resumed run's metrics and weights are the
    uninterrupted run's. The two run folders, for a task's own checks."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    fit(config, straight, progress=False)
    original = run.train_epoch

    def stop_at_step(model, loader, trainer, state, on_step=None, **kw):
        def hook(epoch_state):
            on_step(epoch_state)  # saves the state after every step
            if trainer.step == stop_step:
                raise Interrupted

        return original(model, loader, trainer, state, on_step=hook, **kw)

    monkeypatch.setattr(run, "train_epoch", stop_at_step)
    with pytest.raises(Interrupted):
        fit(config, stopped, progress=False)
    state = torch.load(stopped / STATE_FILE, weights_only=True)
    assert state["step"] == stop_step
    monkeypatch.setattr(run, "train_epoch", original)
    torch.manual_seed(1234)  # the resumed run restores its own RNG state
    fit(None, stopped, resume=True, progress=False)
    assert without_timing(read_metrics(stopped)) == without_timing(read_metrics(straight))
    for name in ("last.safetensors", "best.safetensors"):
        ours, theirs = load_file(stopped / name), load_file(straight / name)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    return straight, stopped, state
