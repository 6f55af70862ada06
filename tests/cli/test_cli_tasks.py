"""The task commands come from one table: every task has train, eval, predict, export and quantize
(classification's as commands of their own, the others' under the task's word), and a task's
``quantize`` is its ``export --int8``, the old spelling still working."""

from __future__ import annotations

import argparse

import pytest

from mobilenets.cli import build_parser, main
from mobilenets.cli.tasks import CLASSIFICATION, DETECTION, SEGMENTATION

ACTIONS = ["train", "eval", "predict", "export", "quantize"]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_task_has_the_five_actions():
    for task in (CLASSIFICATION, DETECTION, SEGMENTATION):
        assert [action.name for action in task.actions] == ACTIONS
    commands = subcommands(build_parser())
    assert set(ACTIONS) <= set(commands)  # classification's, at the top
    for word in ("detect", "segment"):
        assert list(subcommands(commands[word])) == ACTIONS


@pytest.mark.parametrize(
    "words, extra",
    [
        (["detect"], ["--nms", "--calibrate", "entropy"]),
        (["segment"], ["--format", "onnx", "--argmax", "--calibration-images", "8"]),
    ],
)
def test_quantize_is_export_int8(words, extra):
    common = ["ckpt", "--out", "model.onnx", "--data", "synthetic-shapes:8", *extra]
    quantize = vars(build_parser().parse_args([*words, "quantize", *common]))
    export = vars(build_parser().parse_args([*words, "export", *common, "--int8"]))
    assert quantize.pop("action") == "quantize" and export.pop("action") == "export"
    assert quantize.pop("parser").prog.endswith("quantize")
    assert export.pop("parser").prog.endswith("export")
    assert quantize == export
    assert quantize["int8"] is True and quantize["run"] is export["run"]


@pytest.mark.parametrize("word", ["detect", "segment"])
def test_quantize_needs_data_and_has_no_int8_switch(word, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([word, "quantize", "ckpt", "--format", "onnx", "--out", "m.onnx"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "the following arguments are required: --data" in err
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                word,
                "quantize",
                "ckpt",
                "--format",
                "onnx",
                "--out",
                "m.onnx",
                "--data",
                "d",
                "--int8",
            ]
        )
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --int8" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [
                "detect",
                "quantize",
                "ckpt",
                "--out",
                "m.pte",
                "--data",
                "d",
                "--calibrate",
                "entropy",
            ],
            "--calibrate applies to --format onnx only, not to pte",
        ),
        (
            ["detect", "quantize", "ckpt", "--out", "m.onnx", "--data", "d", "--nms-iou", "0.5"],
            "--nms-iou applies with --nms only",
        ),
        (
            ["segment", "quantize", "ckpt", "--format", "pte", "--out", "m.pte", "--data", "d"]
            + ["--opset", "18"],
            "--opset applies to --format onnx only, not to --format pte",
        ),
        (
            ["segment", "quantize", "ckpt", "--format", "pte", "--out", "m.pte", "--data", "d"]
            + ["--calibrate", "entropy"],
            "--calibrate applies to --format onnx only",
        ),
    ],
)
def test_quantize_checks_its_flags_before_loading_anything(argv, message, capsys):
    """The checkpoint 'ckpt' does not exist: the flags' error comes first, one line, status 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert err.startswith(f"mobilenets {argv[0]}: error: ")


def test_the_old_spelling_still_works(capsys):
    """``export --int8`` without --data: the error that says what --data is for."""
    assert main(["segment", "export", "ckpt", "--format", "onnx", "--out", "m.onnx", "--int8"]) == 2
    assert "--int8 needs --data SPEC: the dataset whose training images" in capsys.readouterr().err
    assert main(["detect", "export", "ckpt", "--out", "m.onnx", "--data", "d"]) == 2
    assert "--data applies to --int8 only" in capsys.readouterr().err
