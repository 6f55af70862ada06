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
