"""The shape of the package, pinned (in the spirit of httpx's exported-members test):
no import circles, no private names taken across subpackages, CuPy known to one module, and
the front doors within their parameter budgets."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import scopefx

SRC = Path(scopefx.__file__).resolve().parent
#: Top-level private modules every layer may use: the array-backend seam, the version, and
#: the notebook-friendly matplotlib Figure.
SHARED_PRIVATE = {"scopefx._backend", "scopefx._checks", "scopefx._figure", "scopefx._version"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every import the file runs, at any depth (those
    under ``if TYPE_CHECKING:`` never run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((module, [a.name for a in node.names], node.lineno))
    return found


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _edges() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(name, path):
            if not module.startswith("scopefx"):
                continue
            for target in [f"{module}.{n}" for n in names] + [module]:
                if target in modules and target != name:
                    edges[name].add(target)
                    break
    return edges


def test_the_import_graph_has_no_circles() -> None:
    edges = _edges()
    # a package's __init__ re-exports its modules: an edge *into* a package from one of its own
    # modules is the circle we look for; edges from __init__ to its children are expected
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


def test_no_private_names_across_subpackages() -> None:
    offences = []
    for name, path in _modules().items():
        for module, names, line in _imports(name, path):
            if not module.startswith("scopefx.") or module in SHARED_PRIVATE:
                continue
            if _subpackage(module) == _subpackage(name):
                continue
            private_module = any(p.startswith("_") for p in module.split(".")[1:])
            private_names = [n for n in names if n.startswith("_")]
            if private_module or private_names:
                offences.append(f"{path.relative_to(SRC)}:{line}: {module} {private_names}")
    assert offences == [], "\n".join(offences)


def test_only_the_backend_knows_cupy() -> None:
    offences = []
    for name, path in _modules().items():
        if name == "scopefx._backend":
            continue
        text = path.read_text()
        for needle in ("import cupy", "from cupy", "xp.cuda", '"cupy"', "'cupy'"):
            if needle in text:
                offences.append(f"{path.relative_to(SRC)}: {needle}")
    assert offences == [], "\n".join(offences)


def test_front_doors_stay_small() -> None:
    assert len(inspect.signature(scopefx.fuse).parameters) <= 10
    assert len(inspect.signature(scopefx.prepare).parameters) <= 10
