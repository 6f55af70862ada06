"""The ``mobilenets`` command line: argument parsing and printing only.

One module per group of commands, each adding its sub-parsers or defining its commands as data:
models and cost; each task's train, eval, predict, export and quantize, from one table (tasks;
the modules classify, detect and segment, each with its _export); bench; demo. Every command
calls library functions and prints what they return. Errors a user can cause
([`MobileNetsError`][mobilenets.core.errors.MobileNetsError]) become one line on stderr and exit
status 2, never a traceback.

Commands that need an optional dependency (onnx and onnxruntime for export, quantize and bench;
executorch; pycocotools for detect; scipy for segmentation data) import their library modules
inside the command's function, so that ``mobilenets zoo`` or ``mobilenets cost`` never loads
them. That is the one reason for a function-level import of our own modules, and the CLI the one
place it is allowed.
"""

from __future__ import annotations

import argparse
import sys

from mobilenets.cli import bench, demo, models

# re-exported: tests/deploy/test_quantize.py checks them against the library's under these names
from mobilenets.cli.classify_export import QUANTIZE_ACTIVATIONS, QUANTIZE_CALIBRATE
from mobilenets.cli.common import Parser, as_flags, log_handlers, one_line
from mobilenets.cli.tasks import CLASSIFICATION, DETECTION, SEGMENTATION, add_task_commands
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.version import __version__

__all__ = ["QUANTIZE_ACTIVATIONS", "QUANTIZE_CALIBRATE", "build_parser", "main"]

DESCRIPTION = """\
MobileNetV1 and V2 as the papers define them: list the named variants and their exact cost,
train and evaluate classifiers, SSDLite detectors and Mobile DeepLabv3 segmenters, load
published torchvision, timm and Keras weights, and export to ONNX, int8 ONNX or ExecuTorch with
the latency measured on this CPU."""

EPILOG = """\
examples:
  mobilenets zoo --family v2
  mobilenets cost mobilenet_v1_1.0_224 --by-kind --standard
  mobilenets train --data fashion-mnist --model mobilenet_v2 --alpha 0.5 --out runs/fmnist
  mobilenets export runs/fmnist --format onnx --out fmnist.onnx

Run 'mobilenets COMMAND --help' for a command's flags."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mobilenets",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"mobilenets {__version__}",
        help="print the version and exit",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, title="commands", metavar="COMMAND"
    )
    models.add_commands(commands)
    add_task_commands(commands, CLASSIFICATION)
    bench.add_commands(commands)
    add_task_commands(commands, DETECTION)
    add_task_commands(commands, SEGMENTATION)
    demo.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments); the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with log_handlers():
            args.run(args)
    except MobileNetsError as error:
        message = as_flags(one_line(error), args.parser)
        print(f"mobilenets {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilenets {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
