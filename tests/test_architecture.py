"""The library's layering, read from its source with ``ast``: no import cycle among emvae's
modules, and no emvae module imports the command line (emvae_cli)."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "emvae"

#: Imports that still close a cycle, each with the change that removes it.
ALLOWED: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for f in sorted(LIBRARY.rglob("*.py")):
        parts = f.relative_to(LIBRARY.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _graph() -> dict[str, set[str]]:
    """Each module -> the emvae modules it imports (at the top or inside functions; not the
    annotations-only imports under ``if TYPE_CHECKING:``), ``from a import b`` counted as
    ``a.b`` when that is a module; less the :data:`ALLOWED` imports."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        hidden = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and _type_checking(node)
            for n in ast.walk(node)
        }
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(
                        [*parts[: len(parts) - node.level + 1], *([base] if base else [])]
                    )
                sub = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = sub if len(sub) == len(node.names) else [base, *sub]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = {d for d in deps if (name, d) not in ALLOWED}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_library_has_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_low_modules_do_not_import_the_package_root():
    """``__version__`` comes from emvae._version; only the package's own __init__ gathers the
    public API, so importing any module never needs the whole package first."""
    importers = sorted(name for name, deps in _graph().items() if "emvae" in deps)
    assert importers == []


def test_the_library_does_not_import_the_command_line():
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            offenders += [f"{name}: {t}" for t in targets if t.split(".")[0] == "emvae_cli"]
    assert offenders == []
