"""The README's examples run as printed: the Python code, and the CLI output it quotes."""

import shlex
from pathlib import Path

import pytest

from mobilenets.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```python"):
            current = []
        elif line.startswith("```") and current is not None:
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_readme_python_example_runs():
    blocks = python_blocks(README.read_text())
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile("\n\n".join(blocks), str(README), "exec"), namespace)
    assert namespace["logits"].shape == (1, 10)
    assert namespace["features"].shape == (1, 1280, 7, 7)
    assert list(namespace["taps"]) == ["C4_expansion", "C5"]
    assert (namespace["report"].params, namespace["report"].macs) == (4_231_976, 568_740_352)
    assert namespace["report"].peak_activation_bytes == 1_605_632
    assert namespace["evaluation"].top1 == namespace["result"].final.top1
    assert len(namespace["evaluation"].per_class) == 10


MARKER = "<!-- lines of: "


def quoted_outputs(text: str) -> list[tuple[str, list[str]]]:
    """(command, lines) for each code block that follows a ``<!-- lines of: CMD -->`` marker."""
    lines = text.splitlines()
    quoted = []
    for i, line in enumerate(lines):
        if line.startswith(MARKER):
            command = line[len(MARKER) :].removesuffix("-->").strip()
            assert lines[i + 1].startswith("```"), f"no code block after {line}"
            end = lines.index("```", i + 2)
            quoted.append((command, lines[i + 2 : end]))
    return quoted


QUOTED = quoted_outputs(README.read_text())


def test_readme_quotes_cli_output():
    assert len(QUOTED) >= 2


@pytest.mark.parametrize("command, lines", QUOTED, ids=[c for c, _ in QUOTED])
def test_quoted_cli_output_is_what_the_cli_prints(capsys, command, lines):
    program, *argv = shlex.split(command)
    assert program == "mobilenets"
    assert main(argv) == 0
    printed = set(capsys.readouterr().out.splitlines())
    stale = [line for line in lines if line.strip() and line not in printed]
    assert stale == []
