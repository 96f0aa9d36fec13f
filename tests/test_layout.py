"""The package's layout: a light core, a periphery around it, no import circles.

The core is everything under ``dpiat_jax/`` except the periphery: ``models/``,
``experiments/``, ``cli/``, ``plotting.py`` and ``testing.py``. The core never imports the
periphery at module level; the one lazy import allowed is ``dpiat_jax.plotting`` inside a
function (``MatchReport.plot()`` draws with it, and only that call needs matplotlib).
Imports are read from the source with ``ast``: module level means a statement of the module
body (also inside ``try``/``if``, except ``if TYPE_CHECKING:``), not inside a function.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dpiat_jax"

PERIPHERY = (
    "dpiat_jax.models",
    "dpiat_jax.experiments",
    "dpiat_jax.cli",
    "dpiat_jax.plotting",
    "dpiat_jax.testing",
)

#: What the core may import lazily (inside a function) from the periphery.
LAZY_PERIPHERY_ALLOWED = ("dpiat_jax.plotting",)

#: The optional dependencies (``pyproject.toml`` extras) and the test-only ones.
OPTIONAL = (
    "tensorflow_datasets",
    "sklearn",
    "mnist1d",
    "optax",
    "orbax",
    "matplotlib",
    "tqdm",
    "chex",
    "transformers",
    "flaxmodels",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_periphery(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PERIPHERY)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules whose contents an import statement in ``module`` needs."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "dpiat_jax"]
    base = node.module or ""
    if node.level:  # relative import
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    if base.split(".")[0] != "dpiat_jax":
        return []
    # ``from package import submodule`` needs the submodule, not the package's contents
    # (the package is merely initialising); any other name needs ``base`` itself.
    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return list(dict.fromkeys(names))


def _imports(module: str) -> tuple[list[tuple[str, ast.AST]], list[tuple[str, ast.AST]]]:
    """``(module-level imports, imports inside functions)`` of package modules."""
    tree = ast.parse(MODULES[module].read_text())
    top: list[tuple[str, ast.AST]] = []
    lazy: list[tuple[str, ast.AST]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in _resolve(module, node):
                (lazy if in_function else top).append((name, node))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return top, lazy


def _graph() -> dict[str, set[str]]:
    return {
        m: {name for name, _ in _imports(m)[0] if name in MODULES and name != m} for m in MODULES
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_modules_found():
    assert "dpiat_jax" in MODULES and "dpiat_jax.api" in MODULES
    assert "dpiat_jax.experiments.protocol" in MODULES and "dpiat_jax.models.common" in MODULES


def test_import_dpiat_jax_imports_no_optional_dependency():
    code = (
        "import json, sys; import dpiat_jax; "
        f"print(json.dumps(sorted(m for m in {list(OPTIONAL)!r} if m in sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import dpiat_jax` imports optional dependencies: {loaded}"


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_cycle_detection_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_core_does_not_import_the_periphery():
    problems = []
    for module in MODULES:
        if _is_periphery(module):
            continue
        top, lazy = _imports(module)
        for name, node in top:
            if _is_periphery(name):
                problems.append(f"{module}:{node.lineno} imports {name} at module level")
        for name, node in lazy:
            if _is_periphery(name) and name not in LAZY_PERIPHERY_ALLOWED:
                problems.append(f"{module}:{node.lineno} imports {name} (not allowed lazily)")
    assert not problems, "\n".join(problems)


def test_no_private_names_imported_across_modules():
    problems = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _resolve(module, node):
                for alias in node.names:
                    name = alias.name
                    if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                        problems.append(f"{module}:{node.lineno} imports {name} from {node.module}")
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if any(part.startswith("_") for part in alias.name.split(".")[1:]):
                        problems.append(f"{module}:{node.lineno} imports {alias.name}")
    assert not problems, "\n".join(problems)
