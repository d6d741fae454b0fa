"""The library's layering, read from its source with ``ast``: no import cycle among emvae's
modules, no emvae module imports the command line (emvae_cli), each concept has one owner, and
the command line is thin: option parsing, a library call, printing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "emvae"
CLI = LIBRARY.parent / "cli" / "emvae_cli"

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
    """No circle among emvae's modules, counting imports at module level and inside functions
    alike (a function-level import only defers a circle: the two modules still need each
    other); the annotations-only imports under ``if TYPE_CHECKING:`` do not count."""
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_low_modules_do_not_import_the_package_root():
    """``__version__`` comes from emvae._version; only the package's own __init__ gathers the
    public API, so importing any module never needs the whole package first."""
    importers = sorted(name for name, deps in _graph().items() if "emvae" in deps)
    assert importers == []


def _imports(tree: ast.Module) -> list[str]:
    """Every module a tree imports, anywhere in it (``from . import x``: "")."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


#: Concepts with one owner: the functions that are the concept, defined in the owner's module
#: only, and the idioms (regular expressions) that write it again, found nowhere else.
OWNERS = {
    "emvae.geometry": (  # angles wrapped onto one turn
        {"wrap_degrees", "wrap_radians"},
        [r"\b(?:mod|remainder|fmod)\([^\n]*\+ ?180\b", r"% ?360\b", r"\bangle\(np\.exp\("],
    ),
    "emvae.io.stack": (  # image names k@path, made and taken apart
        {
            "image_name",
            "split_image_name",
            "split_image_names",
            "image_key",
            "image_label",
            "same_image",
        },
        [r"""\b(?:r?partition|r?split|r?index|r?find)\(\s*["']@["']""", r"\}@\{", r"\}@[\"']"],
    ),
    "emvae.run": (  # whether an output (a table, a checkpoint, a JSON) is of this fit
        {"check_same_run"},
        [r"\brun_id\b[^\n]*[!=]=|[!=]=[^\n]*\brun_id\b"],  # a run id compared on a line
    ),
    "emvae.safety": ({"use_force"}, [r"use --force"]),  # an existing output: refuse, or --force
    "emvae.ctf": ({"phase_flip", "phase_flipped"}, [r"\bsign\(\s*ctf"]),  # phases flipped
    "emvae.plotstyle": (set(), [r"\bdpi\s*=", r"\.savefig\(", r"\brcParams\b"]),  # one style
    "emvae.metrics": (  # correlations and angular errors of a fit against a reference or truth
        {"pearson", "circular_correlation", "circular_mean", "angular_error_deg"},
        [r"\bcorrcoef\("],
    ),
}


def _sources() -> dict[str, str]:
    """The library's modules and the command line's, by name -> source."""
    cli = {f"emvae_cli.{f.stem}": f for f in sorted(CLI.glob("*.py"))}
    return {name: path.read_text() for name, path in {**_modules(), **cli}.items()}


def _copies(sources: dict[str, str], owners: tuple[str, ...] = tuple(OWNERS)) -> list[str]:
    """Each place outside its owner that defines one of a concept's functions or writes one of
    its idioms (of the concepts of ``owners``)."""
    found = []
    for owner in owners:
        functions, idioms = OWNERS[owner]
        pattern = re.compile("|".join(idioms))
        for name, source in sources.items():
            if name == owner:
                continue
            defs = [
                n.name
                for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.FunctionDef) and n.name in functions
            ]
            found += [f"{name}: def {d} ({owner}'s)" for d in defs]
            found += [f"{name}: {m.group()!r} ({owner}'s)" for m in pattern.finditer(source)]
    return found


def test_angle_wrapping_and_image_names_have_one_owner():
    """Wrapping angles (``geometry.wrap_degrees``, ``wrap_radians``) and the ``k@path`` names
    of images (``io.stack.image_name``, ``split_image_name``, ``image_key``, ``same_image``)
    are written once: no other module of emvae or emvae_cli defines a function of that name or
    writes the idiom (by regular expression, in code, strings and comments alike; text is cheap
    to reword)."""
    assert _copies(_sources(), ("emvae.geometry", "emvae.io.stack")) == []


def test_the_owner_check_sees_copies():
    copies = {
        "a": "def wrap_degrees(d):\n    return np.mod(d + 180.0, 360.0) - 180.0\n",
        "b": "x = (d + 180) % 360 - 180\ny = np.angle(np.exp(1j * r))\n",
        "c": 'k, _, path = name.partition("@")\nname = f"{k}@{path}"\n',
        "d": "k = name.split('@')[0]\ndef same_image(a, b): ...\n",
        "emvae.geometry": "def wrap_degrees(d):\n    return np.mod(d + 180.0, 360.0) - 180.0\n",
    }
    found = sorted(c.split(":")[0] for c in _copies(copies))
    assert found == ["a", "a", "b", "b", "c", "c", "d", "d"]  # the owner's own: not copies


def test_whether_an_output_is_of_this_fit_has_one_owner():
    """Whether a table, checkpoint or JSON was made by the fit that config.json describes is
    ``run.check_same_run``'s to say: no other module compares a run id by hand (issue 36)."""
    assert _copies(_sources(), ("emvae.run",)) == []


def test_the_owner_check_sees_run_ids_compared():
    copies = {
        "a": 'if made.get("run_id") != r.config.run_id:\n    raise InputError(path, "...")\n',
        "b": "if made_by and config.run_id and made_by != config.run_id:\n    pass\n",
        "c": "def check_same_run(path, made_by, described): ...\n",
        "d": 'record_outputs(dest, names, run_id=config.run_id)\nx = {"run_id": run_id}\n',
        "emvae.run": "if run_id and made_by == run_id:\n    pass\n",
    }
    found = sorted(c.split(":")[0] for c in _copies(copies, ("emvae.run",)))
    assert found == ["a", "b", "c"]  # keywords and keys are no comparison; the owner's: its own


def test_refusals_phase_flips_and_the_plot_style_have_one_owner():
    """The words "use --force" are said by ``safety.use_force`` only (through
    ``refuse_existing`` and ``claim_outputs``), the phases are flipped by ``ctf.phase_flip``
    only, and figures are written at one resolution in one style by ``plotstyle`` only
    (issue 36)."""
    assert _copies(_sources(), ("emvae.safety", "emvae.ctf", "emvae.plotstyle")) == []


def test_correlations_have_one_owner():
    """A Pearson correlation (or a circular one) is ``metrics.pearson``'s to compute: no other
    module calls ``np.corrcoef`` (issue 36: bench computed its own)."""
    assert _copies(_sources(), ("emvae.metrics",)) == []
    found = _copies({"a": "r = np.corrcoef(x, y)[0, 1]\n", "b": "r = circcorrcoef(a, b)\n"})
    assert found == ["a: 'corrcoef(' (emvae.metrics's)"]


def test_the_owner_check_sees_refusals_flips_and_styles():
    copies = {
        "a": 'raise OutputExistsError(f"{out}: exists; use --force to overwrite")\n',
        "b": "f = f * torch.sign(ctf_grid(params, d))[:, None]\ndef phase_flip(x, p): ...\n",
        "c": 'fig.savefig(path, dpi=110)\nmatplotlib.rcParams["font.size"] = 9\n',
        "d": "with matplotlib.rc_context(STYLE):\n    save(fig, path)  # --force: replace\n",
        "emvae.plotstyle": "fig.savefig(path, dpi=dpi)\n",
    }
    owners = ("emvae.safety", "emvae.ctf", "emvae.plotstyle")
    found = sorted(c.split(":")[0] for c in _copies(copies, owners))
    assert found == ["a", "b", "b", "c", "c", "c"]


#: emvae's input specs (``file.h5:/dataset``, ``file.fits[EXT]``, ``k@path`` stacks) read and
#: their readers chosen: emvae.io's functions, defined nowhere else (issue 36).
IO_ONLY = {"split_h5_path", "split_fits_path", "spec_file", "input_kind", "kind_by_suffix"}


def test_only_io_parses_input_specs():
    found = [
        f"{name}: def {n.name}"
        for name, source in _sources().items()
        if not name.startswith("emvae.io")
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and n.name in IO_ONLY | {"input_files"}
    ]
    assert found == []


def test_the_figures_draw_from_arrays():
    """emvae.figures draws what it is given (arrays, tables, a config for the captions): it
    opens no run, checkpoint or model (issue 36: the plots took a Run and loaded the model)."""
    graph = _graph()
    opened = {"emvae.run", "emvae.checkpoint", "emvae.models", "emvae.particles", "emvae.data"}
    found = [
        f"{name}: {dep}"
        for name, deps in graph.items()
        if name.startswith("emvae.figures")
        for dep in deps
        if dep in opened or dep.startswith("emvae.models.")
    ]
    found += [
        f"{name}: {t}"
        for name, path in _modules().items()
        if name.startswith("emvae.figures")
        for t in _imports(ast.parse(path.read_text()))
        if t.split(".")[0] == "torch"
    ]
    assert found == []


#: Module-level defaults that are config.py's only: Galaxy Zoo's window and network, and the
#: networks' widths and layer counts (issue 36).
CONFIG_DEFAULTS = re.compile(r"GALAXY_\w+|\w*(?:WIDTH|LAYERS|HIDDEN)")


def test_galaxy_and_layer_defaults_live_in_config():
    found = [
        f"{name}: {t.id}"
        for name, source in _sources().items()
        if name != "emvae.config"
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name) and CONFIG_DEFAULTS.fullmatch(t.id)
    ]
    assert found == []


#: An input's suffix tested against a reader's (which reader reads it): emvae.io's to decide
#: (:func:`emvae.io.kind_by_suffix`, :func:`emvae.io.input_kind`), nowhere else (issue 36).
READER_SUFFIX = re.compile(
    r"""(?:suffix(?:\.lower\(\))?\s*(?:==|in)|endswith\()\s*\(?\s*["']\."""
    r"""(?:star|cs|mrcs?|npy|h5|hdf5?|fits|jpe?g|png)["']"""
)
#: Modules that test a suffix of an output's name (not an input's), and why.
OUTPUT_NAMES = {"emvae.fitting": "emvae encode refuses a table named .star (it writes one)"}


def test_only_io_chooses_a_reader_by_suffix():
    found = [
        f"{name}: {m.group()!r}"
        for name, source in _sources().items()
        if not name.startswith("emvae.io") and name not in OUTPUT_NAMES
        for m in READER_SUFFIX.finditer(source)
    ]
    assert found == []


def test_the_reader_check_sees_a_suffix_test():
    hits = [
        READER_SUFFIX.search(t)
        for t in (
            'if p.suffix.lower() == ".star":',
            'if first.lower().endswith(".star"):',
            "ok = path.endswith(('.mrcs', '.mrc'))",
            'out = p.with_suffix(".star")',
        )
    ]
    assert [h is not None for h in hits] == [True, True, True, False]


def test_the_library_does_not_import_the_command_line():
    offenders = []
    for name, path in _modules().items():
        targets = _imports(ast.parse(path.read_text()))
        offenders += [f"{name}: {t}" for t in targets if t.split(".")[0] == "emvae_cli"]
    assert offenders == []


#: The most statements a command's body may hold (its docstring not counted).
COMMAND_STATEMENTS = 15
#: What a command may call inside a loop: printing only (the loops over data are the library's).
PRINTS = {"err_console.print", "console.print", "typer.echo", "print"}
#: Array and tensor libraries: the command line handles none.
HEAVY = {"torch", "numpy", "pandas"}


def _cli_modules() -> dict[str, ast.Module]:
    return {f.name: ast.parse(f.read_text()) for f in sorted(CLI.glob("*.py"))}


def _commands(tree: ast.Module) -> list[ast.FunctionDef]:
    """The module's command functions: those wrapped by ``user_errors``."""
    return [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d).endswith("user_errors") for d in node.decorator_list)
    ]


def _body(fn: ast.FunctionDef) -> list[ast.stmt]:
    """``fn``'s statements, nested ones included, less its docstring."""
    first = fn.body[0]
    doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return [s for top in fn.body[doc:] for s in ast.walk(top) if isinstance(s, ast.stmt)]


def _prints_only(loop: ast.For) -> bool:
    return not loop.orelse and all(
        isinstance(s, ast.Expr)
        and isinstance(s.value, ast.Call)
        and ast.unparse(s.value.func) in PRINTS
        for s in loop.body
    )


def test_cli_commands_are_short():
    """Each command: options, one library call (or a plan and its execution), printing."""
    long = [
        f"{name}: {fn.name} ({len(_body(fn))} statements)"
        for name, tree in _cli_modules().items()
        for fn in _commands(tree)
        if len(_body(fn)) > COMMAND_STATEMENTS
    ]
    assert long == []


def test_cli_commands_loop_only_to_print():
    """No loop over data in the command line: a loop's body prints, nothing else."""
    loops = [
        f"{name}:{s.lineno} in {fn.name}"
        for name, tree in _cli_modules().items()
        for fn in _commands(tree)
        for s in _body(fn)
        if isinstance(s, ast.While | ast.AsyncFor)
        or (isinstance(s, ast.For) and not _prints_only(s))
    ]
    assert loops == []


def _library_calls(tree: ast.Module, fn: ast.FunctionDef) -> list[str]:
    """The calls in ``fn`` of what its module imports from emvae (``bn.run_x`` counted by
    its root ``bn``)."""
    names = {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "emvae"
        for a in node.names
    } | {
        (a.asname or a.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
        if a.name.split(".")[0] == "emvae"
    }
    calls = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            root = node.func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in names:
                calls.append(ast.unparse(node.func))
    return calls


def test_cli_commands_make_one_library_call():
    """Each command's work is one call into emvae (issue 36): option parsing, the call,
    printing."""
    many = [
        f"{name}:{fn.name} {calls}"
        for name, tree in _cli_modules().items()
        for fn in _commands(tree)
        if len(calls := _library_calls(tree, fn)) > 1
    ]
    assert many == []


def test_cli_imports_no_array_library():
    """torch, numpy and pandas are the library's: the command line passes paths and options."""
    found = []
    for name, tree in _cli_modules().items():
        found += [f"{name}: {t}" for t in _imports(tree) if t.split(".")[0] in HEAVY]
    assert found == []


def test_the_thin_cli_checks_see_a_thick_command():
    source = (
        '@user_errors\ndef cmd(x):\n    """Doc."""\n    for v in x:\n        y = v\n    print(y)\n'
    )
    fn = _commands(ast.parse(source))[0]
    loops = [s for s in _body(fn) if isinstance(s, ast.For)]
    assert len(_body(fn)) == 3 and not _prints_only(loops[0])
    two = "from emvae.x import a\nimport emvae.y as b\n@user_errors\ndef cmd():\n    a(b.c())\n"
    tree = ast.parse(two)
    assert _library_calls(tree, _commands(tree)[0]) == ["a", "b.c"]
