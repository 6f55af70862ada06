"""bench's records: the fastest of a model and batch marked."""

from mobilenets.deploy import bench
from mobilenets.deploy.bench import report


def test_mark_fastest_marks_exactly_the_smallest_median_first_of_ties():
    common = {"model": "m", "resolution": 32, "threads": 1}
    records = [
        report.make_record(common, runtime, "fp32", 1, bench.Timing(median, median), None, 2.0, "s")
        for runtime, median in [(bench.EAGER, 2.0), (bench.ORT, 0.5), (bench.OPENVINO, 0.5)]
    ]
    assert not any(r.fastest for r in records)  # BenchRecord's default: set after measuring
    assert [r.fastest for r in bench.mark_fastest(records)] == [False, True, False]
    assert bench.mark_fastest([]) == []
