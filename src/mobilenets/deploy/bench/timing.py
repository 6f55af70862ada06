"""Wall-clock timing of one call: untimed warm-up calls, then timed ones, median and p90."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mobilenets.core.errors import MobileNetsError

DEFAULT_BATCHES = (1, 32)
DEFAULT_WARMUP = 5
DEFAULT_ITERATIONS = 30


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float


def measure(
    fn: Callable[[], object],
    warmup: int,
    iterations: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Median and 90th percentile (linear interpolation) in ms of ``iterations`` timed calls of
    ``fn``, after ``warmup`` untimed ones."""
    check_count("warmup", warmup, minimum=0)
    check_count("iterations", iterations)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = clock()
        fn()
        samples.append((clock() - start) * 1e3)
    return Timing(float(np.median(samples)), float(np.percentile(samples, 90)))


def check_count(label: str, value, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MobileNetsError(f"{label} must be an integer >= {minimum}, got {value!r}")
