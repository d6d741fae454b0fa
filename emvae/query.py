"""Conditions on a particle table (``emvae select --query``), evaluated without Python.

A condition is read with Python's own parser (:func:`ast.parse`) and then evaluated by this
module, node by node, against an allow-list: nothing in it is ever handed to ``eval``, pandas'
``DataFrame.eval`` or any other interpreter, so a condition can read the table's columns and
nothing else. What a condition may hold:

* column names (``z1``, ``theta_deg``, ``cluster``, ``class`` — Python's other keywords are
  read as column names too; a name that is not an identifier in backticks:
  ```rlnDefocusU```), numbers, quoted strings, ``True``/``False``;
* arithmetic ``+ - * / // % **`` and unary ``-``;
* comparisons ``< <= > >= == !=`` (chained too: ``-1 < z1 < 1``), ``in`` / ``not in`` a list of
  constants (``cluster in [1, 3]``);
* ``and``, ``or``, ``not``; pandas' ``&``, ``|``, ``~`` are read as these, with their
  precedence (``z1 > 0 & z2 < 1`` is ``(z1 > 0) and (z2 < 1)``);
* the functions in :data:`FUNCTIONS` (``abs(z2) < 1``).

Anything else (attributes, subscripts, ``@`` names, lambdas, other calls, keyword arguments) is
refused with one line naming what was found.
"""

from __future__ import annotations

import ast
import functools
import io
import keyword
import operator
import re
import tokenize
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from emvae.errors import ConfigError

__all__ = ["FUNCTIONS", "MAX_LENGTH", "condition_mask"]

#: Functions a condition may call, by name: one argument each (two for arctan2).
FUNCTIONS: dict[str, Callable[..., Any]] = {
    name: getattr(np, name)
    for name in (
        "abs sqrt exp expm1 log log1p log10 sin cos tan arcsin arccos arctan arctan2 sinh cosh "
        "tanh floor ceil round isnan isfinite"
    ).split()
}
#: Longest condition accepted, in characters (the parser's recursion stays bounded).
MAX_LENGTH = 1000

_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_BACKTICKS = re.compile(r"`([^`]*)`")
#: pandas' spellings, read with the precedence pandas gives them (that of and/or/not).
_SYMBOLS = {"&": "and", "|": "or", "~": "not"}


class _Refused(Exception):
    """A condition outside what this module evaluates (message: what was found)."""


def condition_mask(frame: pd.DataFrame, condition: str, *, where: str = "--query") -> np.ndarray:
    """The rows of ``frame`` where ``condition`` is true: bool array of shape (len(frame),).

    Rows where the condition is undefined (a missing value) are not kept. Every failure is a
    :class:`~emvae.errors.ConfigError` with one line starting with ``where`` and the condition.
    """
    what = f"{where} {condition!r}"
    if not condition.strip():
        raise ConfigError(f"{what}: an empty condition")
    if len(condition) > MAX_LENGTH:
        raise ConfigError(f"{what[:60]}...: longer than {MAX_LENGTH} characters")
    quoted: dict[str, str] = {}

    def _placeholder(m: re.Match[str]) -> str:
        key = f"_emvae_column_{len(quoted)}"
        quoted[key] = m.group(1)
        return key

    text = _BACKTICKS.sub(_placeholder, " ".join(condition.split()))
    try:
        tree = ast.parse(_words(text, quoted), mode="eval")
    except _Refused as e:
        raise ConfigError(f"{what}: {e}") from None
    except (SyntaxError, ValueError, RecursionError, MemoryError, tokenize.TokenError) as e:
        msg = getattr(e, "msg", None) or (e.args[0] if e.args else type(e).__name__)
        raise ConfigError(f"{what}: not a valid condition ({msg})") from None
    columns = {str(c): c for c in frame.columns}
    try:
        with np.errstate(all="ignore"):  # log(-1), 1/0: nan and inf, compared as such
            result = _Evaluator(frame, columns, quoted).value(tree.body)
    except _Refused as e:
        msg = str(e)
        for key in sorted(quoted, key=len, reverse=True):  # the names as the user wrote them
            msg = msg.replace(key, quoted[key])
        raise ConfigError(f"{what}: {msg}") from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply") from None
    except (TypeError, ValueError, ArithmeticError) as e:  # e.g. a string compared with a number
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{what}: cannot be evaluated ({msg})") from None
    if not isinstance(result, pd.Series) or len(result) != len(frame):
        raise ConfigError(f"{what}: is not a condition on each particle's columns")
    if result.dtype.kind != "b" and str(result.dtype) != "boolean":
        raise ConfigError(
            f"{what}: gives {result.dtype} values, not true/false for each particle "
            "(compare a column: 'z1 > 0.5')"
        )
    mask: np.ndarray = result.fillna(False).to_numpy(dtype=bool)
    return mask


def _words(text: str, quoted: dict[str, str]) -> str:
    """``&``, ``|``, ``~`` outside strings as ``and``, ``or``, ``not``, as pandas reads them
    (``z1 > 0 & z2 < 1`` is ``(z1 > 0) and (z2 < 1)``); a Python keyword the language does
    not use (``class``, emvae's column of ``--classes``) as a column name, like a name in
    backticks (a placeholder recorded in ``quoted``)."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    spans = [
        (starts[tok.start[0] - 1] + tok.start[1], starts[tok.end[0] - 1] + tok.end[1], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if (tok.type == tokenize.OP and (tok.string in _SYMBOLS or tok.string == "@"))
        or (tok.type == tokenize.NAME and tok.string in _KEYWORD_COLUMNS)
    ]
    if any(symbol == "@" for _, _, symbol in spans):
        raise _Refused("'@' names Python variables, which a condition cannot reach")
    for start, end, symbol in reversed(spans):
        word = _SYMBOLS.get(symbol)
        if word is None:  # a keyword read as a column
            word = f"_emvae_column_{len(quoted)}"
            quoted[word] = symbol
        text = f"{text[:start]} {word} {text[end:]}"
    return text.strip()


#: Python keywords a condition reads as column names (the language uses the others)
_KEYWORD_COLUMNS = frozenset(keyword.kwlist) - {"and", "or", "not", "in", "is", "True", "False"}


class _Evaluator:
    """Evaluates an allow-listed expression tree on a frame's columns (pd.Series values)."""

    def __init__(self, frame: pd.DataFrame, columns: dict[str, Any], quoted: dict[str, str]):
        self.frame = frame
        self.columns = columns
        self.quoted = quoted

    def column(self, name: str) -> pd.Series:
        name = self.quoted.get(name, name)
        if name not in self.columns:
            hint = f" (columns: {', '.join(self.columns)})"
            if name in FUNCTIONS:
                hint = f" ({name} is a function: {name}(column))"
            raise _Refused(f"no column {name!r}{hint}")
        return self.frame[self.columns[name]]

    def constant(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.constant(node.operand)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v if isinstance(node.op, ast.USub) else v
        raise _Refused(f"a list may hold numbers and strings only, not {_shown(node)}")

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float, str, bool)):
                return node.value
            raise _Refused(f"{type(node.value).__name__} values are not part of a condition")
        if isinstance(node, ast.Name):
            return self.column(node.id)
        if isinstance(node, ast.BoolOp):
            values = [_truth(self.value(v)) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            return functools.reduce(combine, values)
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand)
            if isinstance(node.op, ast.Not):
                return ~_truth(operand) if isinstance(operand, pd.Series) else not operand
            if isinstance(node.op, ast.USub):
                return -_number(operand)
            if isinstance(node.op, ast.UAdd):
                return _number(operand)
            raise _Refused(f"{_shown(node)} is not part of a condition")
        if isinstance(node, ast.BinOp):
            op = _ARITHMETIC.get(type(node.op))
            if op is None:
                raise _Refused(f"the operator {_shown(node)} is not part of a condition")
            left, right = _number(self.value(node.left)), _number(self.value(node.right))
            return op(left, right)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise _Refused(
            f"{_shown(node)} is not part of a condition (use column names, numbers, strings, "
            "comparisons, and/or/not, and the functions " + ", ".join(FUNCTIONS) + ")"
        )

    def compare(self, node: ast.Compare) -> Any:
        out: Any = None
        left = self.value(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right_node, (ast.List, ast.Tuple, ast.Set)):
                    raise _Refused("'in' needs a list of values: cluster in [1, 3]")
                values = [self.constant(v) for v in right_node.elts]
                if not isinstance(left, pd.Series):
                    raise _Refused("'in' needs a column on its left: cluster in [1, 3]")
                right: Any = None
                part = left.isin(values)
                part = ~part if isinstance(op, ast.NotIn) else part
            else:
                fn = _COMPARE.get(type(op))
                if fn is None:
                    raise _Refused(f"the comparison {type(op).__name__} is not part of a condition")
                right = self.value(right_node)
                part = fn(left, right)
            out = part if out is None else (_truth(out) & _truth(part))
            left = right
        return out

    def call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise _Refused(
                f"{_shown(node.func)}(...) is not one of the functions " + ", ".join(FUNCTIONS)
            )
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _Refused(f"{node.func.id}(...) takes plain arguments only")
        want = 2 if node.func.id == "arctan2" else 1
        if len(node.args) != want:
            raise _Refused(f"{node.func.id} takes {want} argument{'s' if want > 1 else ''}")
        args = [_number(self.value(a)) for a in node.args]
        return FUNCTIONS[node.func.id](*args)


def _number(v: Any) -> Any:
    """A numeric series, or a constant as a float (so no power of integers can grow without
    bound); strings and text columns take part in comparisons only."""
    if isinstance(v, pd.Series):
        if v.dtype.kind in "iuf" or str(v.dtype) in ("Int64", "Float64"):
            return v
        raise _Refused(f"{v.name!s} is not a number column: compare it ('{v.name!s} == ...')")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise _Refused(f"{v!r} is not a number")


def _truth(v: Any) -> Any:
    """A series as true/false values (missing values false); a constant as a Python bool."""
    if isinstance(v, pd.Series):
        if v.dtype.kind == "b" or str(v.dtype) == "boolean":
            return v.fillna(False).astype(bool)
        raise _Refused(f"{v.name!s} is not true/false: compare it ('{v.name!s} > 0')")
    if isinstance(v, bool):
        return v
    raise _Refused(f"{v!r} is not true/false")


def _shown(node: ast.AST) -> str:
    """A node as the user wrote it, shortened to one short phrase."""
    try:
        text = ast.unparse(node)
    except Exception:  # unparse fails on some partial trees; the node's kind is enough then
        text = type(node).__name__
    return repr(text if len(text) <= 40 else text[:37] + "...")
