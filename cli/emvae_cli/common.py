"""What every command shares: the console, error handling and default look-ups."""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from emvae.config import TrainConfig
from emvae.errors import EmvaeError

if TYPE_CHECKING:  # the click that typer bundles: the type of a context's parent
    from typer._click.core import Context as ClickContext

err_console = Console(stderr=True, soft_wrap=True)  # a pipe or log gets whole lines
#: The largest --seed (NumPy and torch both take it).
SEED_MAX = 2**63 - 1
#: --device's help: the kinds of device (not a fixed set: cuda:N names a GPU).
DEVICE_HELP = "auto (cuda when present, else cpu), cpu, cuda or cuda:N (the N-th GPU)."
F = TypeVar("F", bound=Callable[..., Any])


def default(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` (so help texts cannot disagree with config.py)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def field_option(
    cls: type, name: str, text: str, *flags: str, unset: bool = False, **options: Any
) -> Any:
    """A Typer option for field ``name`` of the config dataclass ``cls``: the field's default,
    the flag ``--name-with-dashes`` unless ``flags`` are given, help ``text``. ``unset``: None
    unless given, no default shown (the library, or ``fit --example``, picks the value)."""
    flags = flags or ("--" + name.replace("_", "-"),)
    if unset:
        return typer.Option(None, *flags, help=text, show_default=False, **options)
    return typer.Option(default(cls, name), *flags, help=text, **options)


#: --device's default (the training config's).
DEVICE = default(TrainConfig, "device")


def arg(fn: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of library function ``fn`` (the CLI repeats none)."""
    return inspect.signature(fn).parameters[name].default


def user_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        code = 1
        try:
            return fn(*args, **kwargs)
        except EmvaeError as e:
            line = f"[bold red]error:[/] {escape(str(e))}"
        except KeyboardInterrupt:
            line = "interrupted; a fit continues from its last completed epoch with --resume"
            code = 130
        except OSError as e:  # a full disk, a read-only folder, a vanished file
            where = f"{e.filename}: " if e.filename else ""
            line = f"[bold red]error:[/] {where}{e.strerror or e}"
        except MemoryError:
            line = "[bold red]error:[/] out of memory; use a smaller --batch-size"
        err_console.print(line, highlight=False)  # one line: err_console soft-wraps
        raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def command_line(ctx: typer.Context) -> str:
    """The running command as a shell line, for config.json and the report.

    Rebuilt from what was parsed (only the options given on the command line, arguments
    first), so it is the same whether emvae runs from its entry point, ``python -m`` or a
    test's CliRunner, whose ``sys.argv`` is the test runner's.
    """
    chain: list[str] = []
    c: ClickContext = ctx  # the subcommands' names (the program's own name varies: emvae,
    while c.parent is not None:  # "python -m emvae_cli.main", a test's runner)
        chain.append(c.info_name or "")
        c = c.parent
    words = ["emvae", *reversed(chain)]
    options: list[str] = []
    for param in ctx.command.params:
        name = param.name
        source = ctx.get_parameter_source(name) if name else None
        if name is None or source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[name]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if param.param_type_name == "argument":
            words += [str(v) for v in values]
        elif getattr(param, "is_flag", False) and isinstance(value, bool):
            flags = (param.opts if value else param.secondary_opts) or param.opts
            options.append(max(flags, key=len))
        else:
            flag = max(param.opts, key=len)
            for v in values:
                options += [flag, str(v.value if isinstance(v, enum.Enum) else v)]
    return shlex.join(words + options)
