"""The README's Python example runs as printed and says what it does."""

from pathlib import Path

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
