"""What every command shares: the console, error handling and default look-ups."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from emvae.errors import EmvaeError

err_console = Console(stderr=True)
#: The largest --seed (NumPy and torch both take it).
SEED_MAX = 2**63 - 1
#: --device's help: the kinds of device (not a fixed set: cuda:N names a GPU).
DEVICE_HELP = "auto (cuda when present, else cpu), cpu, cuda or cuda:N (the N-th GPU)."
F = TypeVar("F", bound=Callable[..., Any])


def default(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` (so help texts cannot disagree with config.py)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def arg(fn: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of library function ``fn`` (the CLI repeats none)."""
    return inspect.signature(fn).parameters[name].default


def user_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EmvaeError as e:
            err_console.print(
                f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print(
                "interrupted; a fit continues from its last completed epoch with --resume",
                highlight=False,
            )
            raise typer.Exit(130) from None
        except OSError as e:  # a full disk, a read-only folder, a vanished file
            where = f"{e.filename}: " if e.filename else ""
            err_console.print(
                f"[bold red]error:[/] {where}{e.strerror or e}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None
        except MemoryError:
            err_console.print(
                "[bold red]error:[/] out of memory; use a smaller --batch-size", highlight=False
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def command_line() -> str:
    return " ".join(["emvae", *sys.argv[1:]])
