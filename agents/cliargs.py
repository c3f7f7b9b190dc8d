"""Command-line flags from a dataclass: one field, one flag, one help text.

Every command's settings are a dataclass whose fields carry their help (and, where the values
are a fixed set, their choices) in ``field(metadata=...)``::

    @dataclass
    class Args:
        env: str = field(default="pendulum", metadata={"help": "task", "choices": ("a", "b")})

:func:`dataclass_parser` turns it into an ``argparse`` parser (``--field-name value``;
booleans as ``--[no-]field``; ``X | None`` fields accept ``none``), and :func:`parse` builds
the dataclass from ``argv`` and turns a ``ValueError`` of its checks into argparse's usage
error (exit status 2) naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["dataclass_parser", "flag", "parse"]

T = TypeVar("T")


def flag(name: str) -> str:
    """The flag of a field: ``n_train`` -> ``--n-train``."""
    return "--" + name.replace("_", "-")


def _optional(typ: type) -> Callable[[str], Any]:
    """argparse type: ``none`` -> ``None``, else ``typ(value)``."""

    def conv(v: str) -> Any:
        return None if v.lower() == "none" else typ(v)

    conv.__name__ = typ.__name__  # argparse names the type in its errors
    return conv


def _base_type(hint: Any) -> tuple[type, bool]:
    """``(int, False)`` for ``int``; ``(int, True)`` for ``int | None``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return hint, False


def dataclass_parser(cls: type, prog: str, description: str,
                     defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one flag per field of the dataclass ``cls``.

    :param defaults: defaults that differ from the dataclass's (shown in ``--help``)
    """
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        default = defaults.get(f.name, f.default)
        help_ = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        typ, optional = _base_type(hints[f.name])
        if typ is bool:
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=default,
                           help=help_)
            continue
        if typ not in (int, float, str):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported flag type {hints[f.name]}")
        conv = _optional(typ) if optional else typ
        p.add_argument(flag(f.name), type=conv, default=default, help=help_,
                       choices=None if choices is None else list(choices),
                       metavar=None if choices is None else "{" + ",".join(map(str, choices))
                       + "}")
    return p


def parse(cls: type[T], argv: Sequence[str] | None, parser: argparse.ArgumentParser,
          check: Callable[[T], None] | None = None, **extra: Any) -> T:
    """``cls(**flags, **extra)`` from ``argv``; a ``ValueError`` from the constructor or from
    ``check`` exits with argparse's usage error (status 2)."""
    ns = vars(parser.parse_args(argv))
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        obj = cls(**{k: v for k, v in ns.items() if k in names}, **extra)
        if check is not None:
            check(obj)
    except ValueError as e:
        parser.error(str(e))
    return obj
