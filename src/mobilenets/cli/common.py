"""What every command shares: the parser and the record of a command, tables, error lines, and
the library's log as output. The flags several commands take are in
[`arguments`][mobilenets.cli.arguments]."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.files import write_json

NUMBER = re.compile(r"^(-|[-+]?[\d,.]+[%MKx]?)$")  # a cell to right-align


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake prints one line instead of the usage block; the parsed
    arguments remember the (sub)parser that read them, whose flags name errors (see
    [`as_flags`][mobilenets.cli.common.as_flags])."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(parser=self)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(commands, name: str, run, help: str, description: str | None = None) -> Parser:
    """A sub-command that ``run(args)`` carries out: ``help`` is its line in the list of
    commands; ``description`` (else ``help``) heads its own --help."""
    parser = commands.add_parser(name, help=help, description=description or help)
    parser.set_defaults(run=run)
    return parser


@dataclass(frozen=True)
class Command:
    """A command as data: its word, its line in the list of commands, the heading of its --help,
    the function that adds its flags and the one that carries it out, ``run(args)``. A task's
    actions are these (see [`tasks`][mobilenets.cli.tasks])."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]

    def add_to(self, commands) -> Parser:
        parser = add_command(commands, self.name, self.run, self.help, self.description)
        self.add_arguments(parser)
        return parser


def export_commands(
    word: str,
    *,
    help: str,
    description: str,
    int8_description: str,
    add_arguments: Callable[..., None],
    run: Callable[[argparse.Namespace], None],
) -> tuple[Command, Command]:
    """A task's ``export``, fp32 or with --int8, and its ``quantize``, which is ``export --int8``
    under the name the classifier's int8 command has: ``add_arguments(parser, int8_only=True)``
    adds the flags of the second, without --int8 and with --data required."""
    export = Command(
        "export", help, f"{description} With --int8 {int8_description}", add_arguments, run
    )
    quantize = Command(
        "quantize",
        "int8 ONNX or ExecuTorch: the same as export --int8",
        f"{description} This is `{word} export --int8`: {int8_description}",
        functools.partial(add_arguments, int8_only=True),
        run,
    )
    return export, quantize


# --- output -------------------------------------------------------------------------------------


def print_int8_arithmetic(bound) -> None:
    """The line every int8 export prints: the CPU that ran the file when its accuracy was
    measured (VNNI and AMX decide onnxruntime's and OpenVINO's int8 kernels) and, for an ONNX
    file, ``bound`` (a [`PairBound`][mobilenets.deploy.quantize.PairBound]), which keeps the
    file's arithmetic the same on CPUs with and without them."""
    from mobilenets.deploy.quantize import INT16_MAX
    from mobilenets.engine.device import cpu_info

    line = f"int8 measured on {cpu_info().describe()}"
    if bound is not None:
        line += (
            f"; 7-bit weights, largest pair of int8 products {bound.value:,} (int16 holds "
            f"{INT16_MAX:,}): the same results with or without VNNI"
        )
    print(line)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table; columns whose cells look numeric are right-aligned."""
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [all(NUMBER.match(row[i]) for row in rows) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            cell.rjust(w) if r else cell.ljust(w)
            for cell, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cost_cells(name: str, report, passes: str = "") -> list[str]:
    """The first cells of an eval's table, under ``COST_HEADERS``: the model scored and its cost
    (a [`CostReport`][mobilenets.core.cost.CostReport]); ``passes`` ("2 x ") where each image
    costs several forward passes."""
    return [name, f"{report.params:,}", f"{passes}{report.macs / 1e6:.1f}M"]


COST_HEADERS = ["model", "params", "MACs"]


def eval_record(checkpoint, data: str, name: str, report) -> dict:
    """The head of an eval's --json record: the checkpoint and data scored, the model and its
    cost; the task's metrics follow."""
    return {
        "checkpoint": str(checkpoint.path),
        "data": data,
        "model": name,
        "params": report.params,
        "macs": report.macs,
    }


def millions(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value / 1e6:.{digits}f}"


def published(value: float | None, spec: str = "g") -> str:
    """A published figure, or "-" where none was published."""
    return "-" if value is None else format(value, spec)


@contextlib.contextmanager
def output_file(path: str | Path) -> Iterator[Path]:
    """A file a command writes where the user said: a path it cannot write is the user's error,
    one line, not a traceback."""
    try:
        yield Path(path)
    except OSError as error:
        raise MobileNetsError(f"cannot write {str(path)!r}: {error}") from error


def save_json(path: str | Path, value) -> None:
    """Write ``value`` as JSON to a path the user gave, and say so."""
    with output_file(path) as target:
        write_json(target, value)
    print(f"wrote {path}")


# --- errors -------------------------------------------------------------------------------------


def as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in the command's words: a parameter it names (``data='x'``,
    ``resume=True``) becomes the flag that sets it (``--data 'x'``, ``--resume``)."""
    for action in parser._actions:
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if not flags or action.dest in ("help", "version"):
            continue
        flag = flags[0]
        if action.nargs == 0:  # a switch: name=True is the flag itself
            message = re.sub(rf"\b{action.dest}=True\b", flag, message)
        message = re.sub(rf"(?<![\w-]){action.dest}=", f"{flag} ", message)
    return message


def one_line(error: Exception) -> str:
    """The message of an error, on one line. An error raised in a DataLoader worker arrives
    wrapped with the worker's traceback; its last line holds the original message."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(error):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith("mobilenets.") else last
    return " ".join(line.strip() for line in lines)


# --- the library's log as the command's output ---------------------------------------------------


class StreamHandler(logging.Handler):
    """Writes each record's message, as the library logs it, to the stream ``sys.stdout`` or
    ``sys.stderr`` is at the time (so that a caller's redirection is followed); warnings go to
    stderr."""

    def __init__(self, stream_name: str) -> None:
        super().__init__()
        self.stream_name = stream_name

    def emit(self, record: logging.LogRecord) -> None:
        name = "stderr" if record.levelno >= logging.WARNING else self.stream_name
        stream = getattr(sys, name)
        stream.write(record.getMessage() + "\n")
        stream.flush()


@contextlib.contextmanager
def log_handlers() -> Iterator[None]:
    """The library's messages as the command's output while it runs: ``mobilenets`` on stdout,
    the progress lines of ``mobilenets.progress`` on stderr. The loggers are as they were
    afterwards (a program that calls main keeps its own logging set-up)."""
    saved = []
    for name, stream in (("mobilenets", "stdout"), ("mobilenets.progress", "stderr")):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(StreamHandler(stream))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.handlers = [h for h in logger.handlers if not isinstance(h, StreamHandler)]
            logger.setLevel(level)
            logger.propagate = propagate
