"""bench's timing: the median and p90 of timed calls after untimed warm-up ones, and the
counts it accepts."""

from itertools import count

import pytest

from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy import bench


def test_measure_counts_calls_and_orders_median_below_p90():
    calls = []
    ticks = count()
    durations = iter([0.004, 0.001, 0.003, 0.010, 0.002])  # seconds per timed call
    now = [0.0]

    def clock():
        # each timed call reads the clock twice: before (no change), after (+ its duration)
        if next(ticks) % 2:
            now[0] += next(durations)
        return now[0]

    timing = bench.measure(lambda: calls.append(1), warmup=3, iterations=5, clock=clock)
    assert len(calls) == 8
    assert timing.median_ms == pytest.approx(3.0)
    assert timing.p90_ms == pytest.approx(7.6)  # between 4 and 10 ms, linear interpolation
    assert timing.median_ms <= timing.p90_ms


@pytest.mark.parametrize("warmup, iterations", [(-1, 5), (0, 0), (0, True)])
def test_measure_rejects_bad_counts(warmup, iterations):
    with pytest.raises(MobileNetsError, match="must be an integer"):
        bench.measure(lambda: None, warmup, iterations)
