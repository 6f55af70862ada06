"""An mkdocs hook: the CLI reference page, written at build time from the command's own parsers.

A page that holds the line ``<!-- cli-reference -->`` gets, in its place, one section per command
and sub-command of ``mobilenets.cli.build_parser()``: its one-line help and description, its
usage, a table of its arguments with their help, and its epilog. The parsers are walked through
argparse's sub-parser actions, so the reference follows the CLI wherever its commands are
defined; nothing is copied by hand.
"""

from __future__ import annotations

import argparse
import html
import re
from collections.abc import Iterator

PLACEHOLDER = "<!-- cli-reference -->"
WIDTH = 88  # usage lines are wrapped here, whatever the terminal that builds the docs
MARKDOWN_SPECIALS = re.compile(r"([\\*_\[\]|])")


def commands(
    parser: argparse.ArgumentParser, summary: str | None = None, depth: int = 0
) -> Iterator[tuple[argparse.ArgumentParser, str | None, int]]:
    """(parser, one-line help, depth) of ``parser`` and of every sub-command below it, in the
    order the parsers define them."""
    yield parser, summary, depth
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            seen: set[int] = set()
            for name, subparser in action.choices.items():
                if id(subparser) in seen:  # an alias of a command already listed
                    continue
                seen.add(id(subparser))
                yield from commands(subparser, helps.get(name), depth + 1)


def formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(parser.prog, width=WIDTH)


def usage(parser: argparse.ArgumentParser) -> str:
    text = formatter(parser)
    text.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return text.format_help().strip()


def cell(text: str) -> str:
    """Help text as Markdown on one line: ``code`` stays code, any other markup is escaped."""
    text = MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(" ".join(text.split()), quote=False))
    return text if text.count("`") % 2 == 0 else text.replace("`", "\\`")


def paragraphs(text: str) -> list[str]:
    """A help text's paragraphs (split at blank lines) as Markdown, each on one line."""
    return [line for part in text.split("\n\n") if part.strip() for line in (cell(part), "")]


def default(action: argparse.Action) -> str:
    """The default of an option that its help does not already state, as "(default: ...)"."""
    value = action.default
    if value is None or value is False or value == argparse.SUPPRESS or not action.option_strings:
        return ""
    shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    if action.help and ("default" in action.help or f"({shown})" in action.help):
        return ""
    return f"(default: {shown})"


def arguments(parser: argparse.ArgumentParser) -> list[str]:
    """A Markdown table of the arguments of ``parser``, -h and sub-command choices left out."""
    text = formatter(parser)
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        invocation = text._format_action_invocation(action)
        help_text = text._expand_help(action) if action.help else ""
        if action.required and action.option_strings:
            help_text = f"{help_text} (required)".strip()
        help_text = f"{help_text} {default(action)}".strip()
        rows.append(f"| `{invocation}` | {cell(help_text)} |")
    if not rows:
        return []
    return ["| argument | help |", "|---|---|", *rows, ""]


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """Links to the sections of the sub-commands of ``parser``, if it has any."""
    lines = []
    for sub, summary, depth in commands(parser):
        if depth == 1:
            lines.append(f"- [`{sub.prog}`](#{anchor(sub.prog)}): {cell(summary or '')}")
    return [*lines, ""] if lines else []


def anchor(prog: str) -> str:
    """The heading id that the toc extension gives ``## `prog` ``."""
    return "-".join(prog.split())


def reference(parser: argparse.ArgumentParser) -> str:
    lines = []
    for command, summary, depth in commands(parser):
        level = "#" * min(depth + 2, 6)
        lines += [f"{level} `{command.prog}`", ""]
        texts = [summary] if summary else []  # the one line the parent's command list shows
        if command.description and command.description != summary:
            texts.append(command.description)
        for text in texts:
            lines += paragraphs(text)
        lines += ["```text", usage(command), "```", ""]
        lines += arguments(command)
        lines += subcommands(command)
        if command.epilog:  # examples and notes, laid out by hand: kept as they print
            lines += ["```text", command.epilog.strip("\n"), "```", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    from mobilenets.cli import build_parser

    return markdown.replace(PLACEHOLDER, reference(build_parser()))
