"""What the CLI task tests share: one-epoch runs of ``mobilenets detect|segment train`` on a few
synthetic shapes, written into a data folder of the test module's own."""

import json

import pytest

from mobilenets.cli import main

DATA = "synthetic-shapes:6"
COMMON = ["--data", DATA, "--epochs", "1", "--batch-size", "4", "--no-progress"]


def own_data_dir(tmp_path_factory):
    """Synthetic data is generated into $MOBILENETS_DATA: a folder of the module's own (use as
    a module-scoped autouse fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENETS_DATA", str(tmp_path_factory.mktemp("data")))
        yield


def run(capsys, *argv) -> str:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def train(capsys, word: str, model: str, size: list[str], out, record: str) -> dict:
    """Train ``model`` for one epoch with ``mobilenets WORD train``; the config it recorded."""
    printed = run(capsys, word, "train", "--model", model, *size, *COMMON, "--out", out)
    assert "checkpoint:" in printed
    return json.loads((out / "train_config.json").read_text())[record]
