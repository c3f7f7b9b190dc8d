"""Command settings as dataclass fields, shared by the commands (train, imitate, study, mpc):
:func:`arg` declares a field with its flag's help (and choices) in its metadata, read by
:func:`dilqr_rl.agents.cliargs.dataclass_parser`; :func:`check_fields` checks ranges."""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from .cliargs import flag

__all__ = ["arg", "check_fields"]


def arg(default: Any, text: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with default ``default``, its flag's help ``text`` and ``choices``."""
    meta = {"help": text} if choices is None else {"help": text, "choices": choices}
    return field(default=default, metadata=meta)


def check_fields(obj: Any, min_int: dict[str, int], positive: tuple[str, ...] = (),
                 nonneg: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming the flag of the first field out of range: ints ``>=`` their
    minimum (``None`` allowed where the default is ``None``), floats finite and ``> 0``
    (``positive``) or ``>= 0`` (``nonneg``)."""
    for k, lo in min_int.items():
        v = getattr(obj, k)
        if v is None and getattr(type(obj), k, 0) is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{flag(k)} must be an integer >= {lo}, got {v!r}")
    for k in (*positive, *nonneg):
        v = getattr(obj, k)
        if v is None and getattr(type(obj), k, 0) is None:
            continue
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (v > 0 if k in positive else v >= 0))
        if not ok:
            raise ValueError(f"{flag(k)} must be a finite number "
                             f"{'> 0' if k in positive else '>= 0'}, got {v!r}")
