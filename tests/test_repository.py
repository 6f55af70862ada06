"""The repository stays lean: no training state, exported model or weights file in git but the
one published weights file, which its record verifies."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mobilenets.zoo.download import file_digest
from mobilenets.zoo.pretrained import OURS, REPOSITORY, list_weights

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1 << 20  # bytes


def tracked_files() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_tracked_file_is_over_1_mb_but_the_published_weights():
    published = {REPOSITORY / record.url for record in list_weights(OURS)}
    files = tracked_files()
    assert len(files) > 100  # the listing is the repository's, not an empty one
    large = [
        f"{path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)"
        for path in files
        if path.is_file() and path.stat().st_size > LIMIT and path not in published
    ]
    assert large == []


def test_the_published_weights_are_tracked_and_match_their_record():
    (record,) = list_weights(OURS)
    path = REPOSITORY / record.url
    assert path in tracked_files()
    assert file_digest(path) == record.sha256


def test_run_outputs_and_exports_are_ignored():
    names = [
        "runs/x/metrics.jsonl",
        "out/state/last.pt",
        "model.onnx",
        "model.pte",
        "best.safetensors",
        "w.pth",
    ]
    ignored = subprocess.run(
        ["git", "check-ignore", *names], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert ignored == names
    (record,) = list_weights(OURS)
    kept = subprocess.run(["git", "check-ignore", record.url], cwd=ROOT, capture_output=True)
    assert kept.returncode == 1  # not ignored


# --- the code's shape (issue: one shape for every task) ---------------------------------------

LINE_LIMIT = 500
# the architecture tables: the papers' rows as data, allowed to grow with each family
TABLE_FILES = {"src/mobilenets/core/families.py"}


def python_files(*folders: str) -> list[Path]:
    return [
        path
        for path in tracked_files()
        if path.suffix == ".py" and path.parts[len(ROOT.parts)] in folders
    ]


def test_no_source_file_is_over_500_lines_but_the_architecture_tables():
    sources = python_files("src")
    assert len(sources) > 50
    long = {
        str(path.relative_to(ROOT)): path.read_text().count("\n")
        for path in sources
        if path.read_text().count("\n") > LINE_LIMIT
    }
    assert set(long) <= TABLE_FILES, long


def test_the_formatter_owns_layout():
    """ruff format decides line breaks; an opt-out is for an aligned table only."""
    marked = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in python_files("src", "tests", "benchmarks")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "fmt: " + "skip" in line or "fmt: " + "off" in line
    ]
    assert [place for place in marked if place.split(":")[0] not in TABLE_FILES] == []
