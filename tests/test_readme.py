"""Every command the README shows works after the README's install (``pip install -e .``).

The README's bash blocks are parsed for ``emvae <command>`` lines (also ``$(which emvae)
<command>`` under torchrun). Each command must exist, and every module it can reach must
import with the base dependencies alone: a child interpreter refuses imports of any installed
package that the base dependencies of ``pyproject.toml`` do not pull in (their closure through
the installed packages' metadata; no network). The few optional extras (UMAP, ONNX, cryoSPARC's
compressed format) are allowed to be missing, and a README line whose command reaches one of
them directly says which extra it needs.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import typer
from emvae_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
#: Modules of optional extras -> the extra that installs them.
OPTIONAL = {
    "umap": "umap",
    "onnx": "onnx",
    "onnxscript": "onnx",
    "onnxruntime": "onnx",
    "cryosparc": "cryosparc",
}
#: Optional for an input format, not a command (docs/inputs.md says so): not named per line.
FORMAT_EXTRAS = {"cryosparc"}
EMVAE_LINE = re.compile(r"(?:^|\s|\))emvae\s+([a-z][a-z0-9-]*)(?:\s+([a-z][a-z0-9-]*))?")


def readme_commands() -> list[tuple[str, str | None, str]]:
    """``(command, subcommand or None, line)`` for each ``emvae`` line of the README's bash
    blocks (comments and ``pip`` lines skipped)."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            code = line.split("#", 1)[0]
            m = EMVAE_LINE.search(code)
            if m:
                found.append((m.group(1), m.group(2), line))
    return found


def _group() -> Any:
    """The app's click group (Typer's own click, whichever it ships)."""
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a name imported from a module (emvae.safety.check_writable)
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (top level and in functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def reachable(module: str) -> tuple[set[str], set[str]]:
    """The emvae modules ``module`` reaches through imports anywhere in their code (closure),
    and the other top-level modules they import."""
    ours, others, todo = set(), set(), [module]
    while todo:
        name = todo.pop()
        if name in ours:
            continue
        path = _module_file(name)
        if path is None:  # a name imported from a module, not a module
            continue
        ours.add(name)
        for imp in _imports(path):
            top = imp.split(".")[0]
            if top in ("emvae", "emvae_cli"):
                todo.append(imp)
            elif top not in sys.stdlib_module_names and top != "__future__":
                others.add(top)
    return ours, others


def _command_module(cmd: str, sub: str | None) -> str:
    command = _group().commands[cmd]
    if hasattr(command, "commands") and sub:
        command = command.commands[sub]
    return inspect.unwrap(command.callback).__module__


def test_readme_commands_exist():
    lines = readme_commands()
    assert len(lines) > 20  # the usage block was found
    group = _group()
    for cmd, sub, line in lines:
        assert cmd in group.commands, f"README line names no emvae command: {line}"
        command = group.commands[cmd]
        if hasattr(command, "commands"):
            assert sub in command.commands, f"README line names no emvae {cmd} command: {line}"


def _direct_imports(cmd: str, sub: str | None) -> set[str]:
    """What a command imports itself: the imports in the command's function, and those of
    its CLI module's top-level imports whose names the function uses (a module serves several
    commands)."""
    command = _group().commands[cmd]
    if hasattr(command, "commands") and sub:
        command = command.commands[sub]
    callback = inspect.unwrap(command.callback)  # under @user_errors
    tree = ast.parse(Path(inspect.getfile(callback)).read_text())
    function = next(
        f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == callback.__name__
    )
    used = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if any((a.asname or a.name) in used for a in node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if (a.asname or a.name).split(".")[0] in used}
    for node in ast.walk(function):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_readme_lines_name_their_extra():
    """A command that imports an optional extra's module itself (in its function, its CLI
    module or the emvae modules these import) has a README line naming that extra
    (``emvae[umap]``, ...)."""
    needs: dict[str, set[str]] = {}
    lines: dict[str, list[str]] = {}
    for cmd, sub, line in readme_commands():
        direct = _direct_imports(cmd, sub)
        tops = {m.split(".")[0] for m in direct}
        for m in direct:
            path = _module_file(m) if m.startswith("emvae.") else None
            if path is not None:
                tops |= {i.split(".")[0] for i in _imports(path)}
        needs[cmd] = {OPTIONAL[t] for t in tops if t in OPTIONAL} - FORMAT_EXTRAS
        lines.setdefault(cmd, []).append(line)
    for cmd, extras in needs.items():
        for extra in extras:
            named = any(f"emvae[{extra}]" in line for line in lines[cmd])
            assert named, f"no README line of emvae {cmd} says it needs emvae[{extra}]"
    assert {c: e for c, e in needs.items() if e} == {"analyze": {"umap"}, "export-onnx": {"onnx"}}


def base_dependencies() -> list[str]:
    """The requirement strings of ``[project] dependencies`` in pyproject.toml (read without
    tomllib, which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, flags=re.S | re.M)
    assert block is not None
    return re.findall(r'^\s*"([^"]+)"', block.group(1), flags=re.M)


def _base_closure() -> list[str]:
    """Distribution names (normalised) that the base dependencies pull in, transitively,
    from the installed packages' metadata (markers evaluated, extras not taken)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [Requirement(d) for d in base_dependencies()]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            pass  # a base dependency that is not installed here: its import fails below
    return sorted(seen)


CHILD = textwrap.dedent(
    """
    import importlib, json, sys
    from importlib import metadata
    from packaging.utils import canonicalize_name

    allowed, modules, optional = json.loads(sys.argv[1])
    owners = metadata.packages_distributions()
    blocked = {
        top for top, dists in owners.items()
        if top not in ("emvae", "emvae_cli")
        and not any(canonicalize_name(d) in allowed for d in dists)
    }

    for top in blocked:  # None in sys.modules: "import top" fails, find_spec says None
        sys.modules[top] = None
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            if name.split(".")[0] not in optional:
                failed[name] = str(e)
    try:  # the control: a test-only package is refused
        importlib.import_module("pytest")
        failed["(control) pytest"] = "imported: nothing is blocked"
    except ImportError:
        pass
    print(json.dumps(failed))
    """
)


def test_readme_commands_import_with_base_dependencies():
    """Every module a README command reaches imports in an interpreter that refuses every
    package outside the base dependencies (the optional extras' modules excepted)."""
    modules: set[str] = set()
    for cmd, sub, _ in readme_commands():
        ours, others = reachable(_command_module(cmd, sub))
        modules |= ours | others
    assert {"emvae.analyze", "emvae.explore_app", "sklearn", "fastapi", "uvicorn"} <= modules
    args = json.dumps([_base_closure(), sorted(modules), sorted(OPTIONAL)])
    paths = f"{ROOT}:{ROOT / 'cli'}"
    r = subprocess.run(
        [sys.executable, "-c", CHILD, args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": paths, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    failed = json.loads(r.stdout.strip().splitlines()[-1])
    assert failed == {}, failed
