"""The help a user reads: the program's description and examples, every command's --help, a help
text for every flag that states its default, and the defaults and choices the CLI repeats (so
as not to import optional dependencies) equal to the library's. Also the CLI's shared pieces:
flag names in library messages, one-line errors, files it cannot write."""

import argparse
import json
import subprocess
import sys
import textwrap

import pytest

from mobilenets.cli import arguments, bench, build_parser, classify_export, detect, main
from mobilenets.cli.arguments import PUBLISHED_WEIGHTS
from mobilenets.cli.common import as_flags, one_line, save_json
from mobilenets.cli.training import default_text, field_defaults
from mobilenets.core.errors import MobileNetsError
from mobilenets.deploy import bench as library_bench
from mobilenets.deploy import quantize
from mobilenets.deploy.onnx_export import DEFAULT_OPSET
from mobilenets.tasks.classification.train import PRESETS, TrainConfig
from mobilenets.tasks.detection import loss as detection_loss
from mobilenets.tasks.detection import train as detection_train
from mobilenets.zoo.pretrained import PUBLISHERS

COMMANDS = [
    "zoo",
    "cost",
    "weights",
    "convert",
    "train",
    "eval",
    "predict",
    "export",
    "quantize",
    "bench",
    "detect",
    "segment",
    "demo",
]


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of the program and of every command and sub-command under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
    ]


ALL = list(parsers(build_parser()))


def help_of(parser: argparse.ArgumentParser, dest: str) -> str:
    """The help text of the argument ``dest`` as --help prints it (%(default)s expanded)."""
    (action,) = [action for action in parser._actions if action.dest == dest]
    return argparse.HelpFormatter(parser.prog)._expand_help(action)


def subparser(*words: str) -> argparse.ArgumentParser:
    return dict(ALL)[words]


def test_program_help_describes_the_tool_and_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "argument parsing and printing only" not in out  # the module docstring
    assert "MobileNetV1 and V2 as the papers define them" in out
    listed = [
        line.split()[0]
        for line in out.split("commands:")[1].splitlines()[2:]
        if line.startswith("    ") and not line.startswith("      ")
    ]
    assert listed == COMMANDS
    examples = [
        line.strip()
        for line in out.split("examples:")[1].splitlines()
        if line.startswith("  mobilenets ")
    ]
    assert 3 <= len(examples) <= 4


def test_the_examples_parse():
    epilog = build_parser().epilog
    examples = [line.split()[1:] for line in epilog.splitlines() if line.startswith("  mobilenets")]
    for argv in examples:
        assert isinstance(build_parser().parse_args(argv), argparse.Namespace)


@pytest.mark.parametrize("words", [words for words, _ in ALL], ids=lambda w: " ".join(w) or "-")
def test_each_help_exits_0_and_names_every_flag(capsys, words):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for action in options(subparser(*words)):
        shown = action.option_strings or [action.metavar or action.dest]
        assert all(flag in out for flag in shown), shown


@pytest.mark.parametrize("words, parser", ALL, ids=[" ".join(w) or "-" for w, _ in ALL])
def test_every_argument_has_a_help_text_that_states_its_default(words, parser):
    assert parser.description, f"{words}: no description"
    for action in options(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{words} {name}: no help"
        text = argparse.HelpFormatter(parser.prog)._expand_help(action)
        if action.default not in (None, False) and action.dest != "version":
            assert "default" in text, f"{words} {name}: the default is not said"


def test_the_train_flags_show_the_configs_defaults():
    """Each flag of `train` that sets a TrainConfig field states the modern preset's value (or
    the config's), and the paper preset's where it differs."""
    parser = subparser("train")
    defaults = {**field_defaults(TrainConfig), **PRESETS["modern"]}
    checked = 0
    for action in options(parser):
        if action.dest not in defaults or defaults[action.dest] in (None, ""):
            continue
        text = help_of(parser, action.dest)
        assert f"(default {default_text(defaults[action.dest])}" in text, text
        paper = PRESETS["paper"].get(action.dest, field_defaults(TrainConfig)[action.dest])
        if paper != defaults[action.dest]:
            assert f"{default_text(paper)} with --preset paper" in text, text
        checked += 1
    assert checked >= 25
    assert "(default 0.1; 0.045 with --preset paper)" in help_of(parser, "lr")


def test_the_detect_train_flags_show_the_configs_defaults():
    parser = subparser("detect", "train")
    defaults = field_defaults(detection_train.TrainConfig)
    checked = 0
    for action in options(parser):
        value = defaults.get(action.dest)
        if value in (None, "") or action.dest == "data":  # --data: required unless --resume
            continue
        assert f"(default {default_text(value)})" in help_of(parser, action.dest), action.dest
        checked += 1
    assert checked >= 18
    assert "(default adamw)" in help_of(parser, "optimizer")  # not TrainSettings' sgd


def test_the_choices_and_defaults_the_cli_repeats_are_the_librarys():
    assert detect.LOSSES == detection_loss.CLASSIFICATION_LOSSES
    assert detect.AUGMENTS == detection_train.AUGMENTS
    assert classify_export.QUANTIZE_CALIBRATE == tuple(quantize.CALIBRATE_METHODS)
    assert classify_export.QUANTIZE_ACTIVATIONS == tuple(quantize.ACTIVATION_TYPES)
    assert classify_export.QUANTIZE_CALIBRATION_IMAGES == quantize.DEFAULT_CALIBRATION_IMAGES
    assert classify_export.QUANTIZE_BATCH_SIZE == quantize.DEFAULT_BATCH_SIZE
    assert arguments.CALIBRATE_METHODS == tuple(quantize.CALIBRATE_METHODS)
    assert (bench.BENCH_BATCHES, bench.BENCH_WARMUP, bench.BENCH_ITERATIONS) == (
        library_bench.DEFAULT_BATCHES,
        library_bench.DEFAULT_WARMUP,
        library_bench.DEFAULT_ITERATIONS,
    )
    assert f"(default {DEFAULT_OPSET})" in arguments.OPSET_HELP
    assert PUBLISHED_WEIGHTS.startswith(", ".join(PUBLISHERS))


@pytest.mark.slow
def test_zoo_and_cost_load_no_optional_dependency():
    """The commands of the cost model import neither onnx, onnxruntime, executorch nor
    pycocotools, nor the detection task, in a fresh interpreter."""
    script = textwrap.dedent("""
        import contextlib, io, sys
        from mobilenets.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["zoo"]) == main(["cost", "ssdlite_mobilenet_v2"]) == 0
        print(sorted(name for name in sys.modules if name.partition(".")[0] in
                     ("onnx", "onnxruntime", "onnxscript", "executorch", "pycocotools")
                     or name.startswith("mobilenets.tasks.detection")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the shared pieces ----------------------------------------------------------------------------


def test_library_parameters_become_the_commands_flags():
    parser = subparser("train")
    message = "data='nope' is unknown; resume=True needs a state; state_every=-1 must be >= 0"
    assert as_flags(message, parser) == (
        "--data 'nope' is unknown; --resume needs a state; --state-every -1 must be >= 0"
    )
    assert as_flags("metadata='x'", parser) == "metadata='x'"  # a longer word is not a flag


def test_an_error_from_a_loader_worker_is_its_last_line():
    wrapped = RuntimeError(
        "Caught MobileNetsError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1\nmobilenets.core.errors.MobileNetsError: cannot '
        "read image 'a.png'"
    )
    assert one_line(wrapped) == "cannot read image 'a.png'"
    assert one_line(MobileNetsError("two\n  lines")) == "two lines"


def test_a_file_the_cli_cannot_write_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MobileNetsError, match=r"^cannot write '.*file/out\.json': "):
        save_json(blocker / "out.json", {"a": 1})
    save_json(tmp_path / "out.json", {"a": 1})
    assert capsys.readouterr().out == f"wrote {tmp_path / 'out.json'}\n"
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": 1}


def test_resume_refuses_a_preset_too(capsys, tmp_path):
    code = main(["train", "--resume", "--preset", "paper", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--resume continues the saved run with its own settings; drop --preset" in err
