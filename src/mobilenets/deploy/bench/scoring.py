"""The accuracy column: a task's [`Validation`][mobilenets.deploy.bench.scoring.Validation]
scores each runtime's outputs on its validation split."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from mobilenets.deploy.bench.report import BenchRecord
from mobilenets.deploy.bench.runtimes import Forward, Runner


@dataclass(frozen=True)
class Validation:
    """What fills the accuracy column for one model: the name of its metric, the int8
    calibration (``calibration(count, batch)``: batches of training images through the
    evaluation preprocessing) and ``score(forward, batch)``: the metric of ``forward``'s
    outputs over the validation split, fed in batches of ``batch`` images (the last one padded
    where a runtime's batch is fixed). Made by a task (``mobilenets bench --data`` makes one
    per checkpoint); bench only calls it."""

    metric: str
    calibration: Callable[[int, int], Iterable[torch.Tensor]]
    score: Callable[[Forward, int], float]


def scored(
    records: list[BenchRecord],
    runners: list[Runner],
    validation: Validation,
    name: str,
    say: Callable[[str], None],
) -> list[BenchRecord]:
    """``records`` with the accuracy of each runtime and precision, scored once (at every batch
    the outputs are the same: of a runtime's .pte programs, one per batch, the first is
    scored)."""
    forwards = {}
    for runner in runners:
        key = runner.runtime, runner.precision
        if key not in forwards:
            forwards[key] = runner.forward()
    scores = {}
    for (runtime, precision), (forward, batch) in forwards.items():
        say(f"{name}: {validation.metric} of {runtime} {precision} on the validation split")
        with torch.inference_mode():
            scores[runtime, precision] = validation.score(forward, batch)
    return [
        dataclasses.replace(
            r, accuracy=scores.get((r.runtime, r.precision)), metric=validation.metric
        )
        for r in records
    ]
