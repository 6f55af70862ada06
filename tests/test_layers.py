"""The package's layers: every import points down, nothing imports in a cycle, and the light
entry points stay light.

core <- zoo <- data <- engine <- deploy <- tasks <- cli: a module may import its own layer and
the layers before it. The tasks are siblings and do not import each other. Inside the library,
a function-level import is for an optional third-party package only; the CLI alone imports the
modules of a command when it runs, so that `mobilenets zoo` does not load onnxruntime.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mobilenets"
LAYERS = ("core", "zoo", "data", "engine", "deploy", "tasks", "cli")
# What a library function may import inside its body: the optional extras and the package's
# own heavy, optional runtime pieces.
OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "h5py", "pycocotools", "matplotlib", "executorch")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """The layer of a module: its first subpackage; the package's __init__ is the facade over
    core and zoo, and __main__ belongs to the CLI."""
    parts = module.split(".")
    if module == "mobilenets":
        return "facade"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for every import of ``module``; a name
    imported from a package is the submodule when one of that name exists."""
    tree = ast.parse(MODULES[module].read_text())
    found = []
    nested = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found += [(name, id(node) in nested, node.lineno) for name in names]
    return found


def internal_edges() -> list[tuple[str, str, bool, int]]:
    return [
        (module, target, in_function, line)
        for module in MODULES
        for target, in_function, line in imports(module)
        if target.split(".")[0] == "mobilenets"
    ]


def test_every_module_belongs_to_a_layer():
    assert {layer(module) for module in MODULES} == {*LAYERS, "facade"}


def test_imports_point_down_the_layers():
    order = {name: rank for rank, name in enumerate(LAYERS)}
    allowed = {**order, "facade": order["zoo"]}  # the facade re-exports core and zoo
    upward = [
        f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} ({layer(module)}) imports "
        f"{target} ({layer(target)})"
        for module, target, _, line in internal_edges()
        if target != "mobilenets" and order[layer(target)] > allowed[layer(module)]
    ]
    assert upward == []
    facade = [target for module, target, _, _ in internal_edges() if layer(target) == "facade"]
    assert facade == []  # nothing inside the package imports the package's own __init__


def test_the_tasks_do_not_import_each_other():
    crossing = [
        (module, target)
        for module, target, _, _ in internal_edges()
        if layer(module) == layer(target) == "tasks"
        and module.split(".")[2] != target.split(".")[2]
    ]
    assert crossing == []


def test_library_functions_import_only_optional_packages():
    """A function-level import hides a cycle or slows a hot path; in the library it is kept for
    optional packages, whose absence must not break `import mobilenets`."""
    hidden = [
        f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {target}"
        for module in MODULES
        if layer(module) != "cli"
        for target, in_function, line in imports(module)
        if in_function and target.split(".")[0] not in OPTIONAL
    ]
    assert hidden == []


def test_no_import_cycle():
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, target, _, _ in internal_edges():
        if target in MODULES and target != module:
            graph[module].add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "code",
    [
        "import mobilenets; mobilenets.cost('mobilenet_v1_1.0_224')",
        "import mobilenets; mobilenets.create_model('mobilenet_v2_0.35_96')",
        "import mobilenets; mobilenets.cost('ssdlite_mobilenet_v2')",
    ],
)
def test_the_cost_model_and_the_factory_load_no_heavy_module(code):
    """`import mobilenets` and the cost model load torch, core and zoo: not torchvision (whose
    package import loads every dataset module), onnxruntime, pycocotools or the tasks."""
    heavy = (
        "torchvision",
        "onnxruntime",
        "onnx",
        "pycocotools",
        "matplotlib",
        "h5py",
        "mobilenets.tasks",
        "mobilenets.engine",
        "mobilenets.data",
        "mobilenets.deploy",
        "mobilenets.cli",
    )
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "mobilenets.core.cost" in loaded
    assert [name for name in loaded if name.split(".")[0] in heavy or name.startswith(heavy)] == []
