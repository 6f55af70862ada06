"""The documentation is true: README.md and every page under docs/.

- Every ```python block runs: the blocks of one page in order, in one namespace, and the
  results the page states are checked (``CHECKS``). A block that cannot run here carries the
  line ``<!-- not run: REASON -->`` just above it, REASON one of ``NOT_RUN``; it is compiled,
  and reported as a skipped test with its reason.
- Every code block after a ``<!-- lines of: mobilenets ... -->`` line quotes lines that
  ``mobilenets.cli.main`` prints for that command.
- The API pages name every module, the CLI reference covers every command, the Fashion-MNIST
  tables are what the run folders say, and ``mkdocs build --strict`` succeeds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mobilenets.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
PACKAGE = ROOT / "src" / "mobilenets"

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>.*)$")
PYTHON = ("python", "py", "python3")
NOT_RUN_MARK = re.compile(r"^\s*<!-- not run: (?P<reason>[\w-]+) -->\s*$")
# The only reasons a Python block of the docs may be left out of this test.
NOT_RUN = {
    "network": "downloads published weights",
    "imagenet": "needs an ImageNet validation folder",
    "gpu": "needs a CUDA GPU",
    "minutes": "takes minutes on a 2-core CPU (ExecuTorch lowering, a full training run)",
}
LINES_OF = "<!-- lines of: "


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the block's first line of code, 1-based
    info: str  # the fence's info string: "python", 'python title="..."', ""
    code: str
    before: str  # the last non-blank line above the fence

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def not_run(self) -> str | None:
        match = NOT_RUN_MARK.match(self.before)
        return match["reason"] if match else None

    @property
    def where(self) -> str:
        return f"{name(self.page)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """Every fenced code block of a page, indented ones (in list items) included."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, fence = len(opened["indent"]), opened["fence"]
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        assert end < len(lines), f"{name(page)}:{i + 1}: the code block is never closed"
        body = [line[indent:] for line in lines[i + 1 : end]]
        blocks.append(Block(page, i + 2, opened["info"].strip(), "\n".join(body), before))
        i = end + 1
    return blocks


def python_blocks(page: Path) -> list[Block]:
    return [block for block in code_blocks(page) if block.language in PYTHON]


def compiled(block: Block):
    # padded so that a traceback names the line of the page
    return compile("\n" * (block.line - 1) + block.code, str(block.page), "exec")


# --- what each page's examples state, checked on the namespace they leave -----------------------


def check_readme(ns: dict) -> None:
    assert ns["logits"].shape == (1, 10)
    assert ns["features"].shape == (1, 1280, 7, 7)
    assert list(ns["taps"]) == ["C4_expansion", "C5"]
    assert (ns["report"].params, ns["report"].macs) == (4_231_976, 568_740_352)
    assert ns["report"].peak_activation_bytes == 1_605_632


def check_index(ns: dict) -> None:
    assert ns["logits"].shape == (1, 1000)
    assert (ns["report"].params, round(ns["report"].macs / 1e6, 1)) == (3_504_872, 300.8)


def check_models(ns: dict) -> None:
    assert ns["logits"].shape == (1, 10)
    assert ns["features"].shape == (1, 1280, 7, 7)
    assert list(ns["taps"]) == ["C4_expansion", "C5"]
    assert ns["model"].feature_info[0] == {
        "name": "C1",
        "module": "blocks.0",
        "num_chs": 16,
        "reduction": 2,
    }
    import mobilenets

    assert len(mobilenets.list_models("mobilenet_v2_0.35_*")) == 5
    assert [m.tap for m in ns["tiny_detector"].spec.maps[:2]] == ["C4_expansion", "C5"]
    assert ns["tiny_segmenter"].spec.feature_channels == 64
    assert "tiny_net" not in mobilenets.core.families.families()
    assert len(mobilenets.list_models()) == 64
    assert ns["rebuilt"].config == ns["small"].config
    assert sum(p.numel() for p in ns["large"].parameters()) == 5_483_032
    assert (ns["large"].config.name, ns["tv"].config.name) == (
        "mobilenet_v3_large_1.0_224",
        "mobilenet_v3_large_0.75_224_tv",
    )
    assert (ns["pre_logits"].shape, ns["pooled"].shape) == ((1, 1280), (1, 480))
    assert ns["minimal"].config.name == "mobilenet_v3_small_minimalistic_1.0_224"
    assert ns["small_v3"].pre_logits.fc.out_features == 1024


def check_cost(ns: dict) -> None:
    report = ns["report"]
    assert (report.params, report.macs) == (4_231_976, 568_740_352)
    assert report.peak_activation_bytes == 1_605_632
    assert (report.standard_params, report.standard_macs) == (29_294_088, 4_867_293_184)
    assert [row.label for row in report.by_kind()][0] == "Conv 1x1"
    assert (ns["small"].params, ns["small"].macs) == (2_236_106, 72_938_624)


def check_training(ns: dict) -> None:
    result, evaluation = ns["result"], ns["evaluation"]
    assert evaluation.top1 == result.final.top1  # the file evaluates as the run did
    assert len(evaluation.per_class) == 10
    assert (result.out / "state" / "last.pt").is_file()
    assert {"train_config.json", "metrics.jsonl", "last.safetensors", "eval.json"} <= {
        path.name for path in result.out.iterdir()
    }


def check_pretrained(ns: dict) -> None:
    assert (ns["fmnist"].config.name, ns["fmnist"].num_classes) == ("mobilenet_v2_1.4_28_small", 10)
    assert ns["probabilities"].shape == (1, 10)
    assert ns["checkpoint"].classes[:3] == ("T-shirt/top", "Trouser", "Pullover")


def check_onnx(ns: dict) -> None:
    report = ns["report"]
    assert (report.bn_folded, report.input_shape) == (52, ("batch", 3, 96, 96))
    assert set(report.checks) == {(1, 3, 96, 96), (3, 3, 96, 96)}
    assert max(report.checks.values()) == report.max_abs_diff <= 1e-4


def check_quantization(ns: dict) -> None:
    report = ns["report"]
    assert (report.quantized_convs, report.float_convs) == (52, ())
    assert report.int8_bytes < report.fp32_bytes / 2


def check_benchmarks(ns: dict) -> None:
    assert 0 < ns["timing"].median_ms <= ns["timing"].p90_ms


def check_detection(ns: dict) -> None:
    assert ns["out"]["cls_logits"].shape == (1, 2034, 91)
    assert ns["out"]["box_regression"].shape == (1, 2034, 4)
    assert ns["model"].anchors().shape == (2034, 4)
    assert ns["v3_detector"].name == "ssdlite_mobilenet_v3_large_1.0_320_reduced_tail"


def check_segmentation(ns: dict) -> None:
    assert ns["logits"].shape == (1, 21, 129, 97)
    assert (ns["report"].params, ns["report"].macs) == (2_113_557, 2_740_709_056)
    assert ns["lraspp"].name == "lraspp_mobilenet_v3_large_1.0_513_os16_reduced_tail"


CHECKS = {
    "README.md": check_readme,
    "docs/index.md": check_index,
    "docs/models.md": check_models,
    "docs/cost.md": check_cost,
    "docs/training.md": check_training,
    "docs/pretrained.md": check_pretrained,
    "docs/onnx.md": check_onnx,
    "docs/quantization.md": check_quantization,
    "docs/benchmarks.md": check_benchmarks,
    "docs/detection.md": check_detection,
    "docs/segmentation.md": check_segmentation,
}

RUN = {
    name(page): [block for block in python_blocks(page) if block.not_run is None] for page in PAGES
}
RUN = {page: blocks for page, blocks in RUN.items() if blocks}
NOT_RUN_BLOCKS = [block for page in PAGES for block in python_blocks(page) if block.not_run]


def test_every_page_that_runs_code_has_its_results_checked():
    assert sorted(RUN) == sorted(CHECKS)


@pytest.mark.parametrize("page", sorted(RUN))
def test_python_examples_run(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # whatever an example writes lands here
    namespace: dict = {"__name__": "__docs__"}
    for block in RUN[page]:
        exec(compiled(block), namespace)
    CHECKS[page](namespace)


@pytest.mark.parametrize("block", NOT_RUN_BLOCKS, ids=[block.where for block in NOT_RUN_BLOCKS])
def test_python_examples_not_run(block):
    assert block.not_run in NOT_RUN, f"{block.where}: unknown reason {block.not_run!r}"
    compiled(block)  # it is not run here, but it is Python
    pytest.skip(f"{block.where} not run: {NOT_RUN[block.not_run]}")


def test_python_fences_are_python():
    """A block is run or carries a reason: no Python hides behind another info string."""
    for page in PAGES:
        for block in code_blocks(page):
            assert block.language not in ("pycon", "python-console", "pytb"), block.where
            if block.language in PYTHON:
                assert block.info.split()[0] == "python", f"{block.where}: write ```python"


# --- quoted CLI output ------------------------------------------------------------------------


def quoted_outputs() -> list[tuple[str, str, list[str]]]:
    """(where, command, lines) of each code block after a ``<!-- lines of: CMD -->`` line."""
    quoted = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith(LINES_OF):
                command = line[len(LINES_OF) :].removesuffix("-->").strip()
                assert lines[i + 1].startswith("```"), f"{name(page)}:{i + 1}: no code block"
                end = lines.index("```", i + 2)
                quoted.append((f"{name(page)}:{i + 1}", command, lines[i + 2 : end]))
    return quoted


QUOTED = quoted_outputs()


def test_the_docs_quote_cli_output():
    assert len(QUOTED) >= 4


@pytest.mark.parametrize("where, command, lines", QUOTED, ids=[w for w, _, _ in QUOTED])
def test_quoted_cli_output_is_what_the_cli_prints(capsys, where, command, lines):
    program, *argv = shlex.split(command)
    assert program == "mobilenets"
    assert main(argv) == 0
    printed = set(capsys.readouterr().out.splitlines())
    stale = [line for line in lines if line.strip() and line not in printed]
    assert stale == [], f"{where}: lines that `{command}` no longer prints"


# --- generated pages and tables ------------------------------------------------------------------


def load_script(path: Path):
    """A script of docs/ as a module (registered, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_module_is_on_an_api_page():
    """Each module of the package but the CLI's (see the CLI reference) has a ``::: module``
    line on a page under docs/api/, and each such line names a module."""
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    documented = {
        line.removeprefix("::: ").strip()
        for page in (DOCS / "api").glob("*.md")
        for line in page.read_text().splitlines()
        if line.startswith("::: ")
    }
    wanted = {m for m in modules if m.split(".")[1:2] not in (["cli"], ["__main__"])}
    assert sorted(wanted - documented) == [], "add `::: module` to a page in docs/api/"
    assert sorted(documented - modules) == []


def test_cli_reference_covers_every_command_and_flag():
    hook = load_script(DOCS / "hooks" / "cli_reference.py")
    reference = hook.reference(build_parser())

    def walk(parser):
        yield parser
        for action in parser._actions:
            if hasattr(action, "_name_parser_map"):  # argparse's sub-parser action
                for sub in action.choices.values():
                    yield from walk(sub)

    parsers = list(walk(build_parser()))
    assert len(parsers) > 10
    for parser in parsers:
        assert f"# `{parser.prog}`" in reference
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in reference, f"{parser.prog} {flag}"
    assert hook.PLACEHOLDER in (DOCS / "cli.md").read_text()


def test_fashion_mnist_tables_are_the_run_files():
    script = load_script(DOCS / "scripts" / "fmnist_tables.py")
    page = script.PAGE.read_text()
    assert script.replace(page, script.tables()) == page, (
        "run: python docs/scripts/fmnist_tables.py"
    )


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    """The site builds with every warning an error: links, anchors, nav, and the docstrings'
    cross-references."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-6000:]
    assert (site / "index.html").is_file()
    assert "mobilenets detect train" in (site / "cli" / "index.html").read_text()
    assert 'id="mobilenets.engine.run.fit"' in (site / "api" / "engine" / "index.html").read_text()
