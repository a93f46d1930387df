"""The base of every config section: `ConfigError`, and each field's value coerced and checked against its type hint.

`trainer.config` builds the section tree on `_Section` and re-exports these names; `trainer.config_io` uses the
type helpers (`_describe`, `_hints`, `_suggest`, `_unwrap`) for its override values and messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, Literal

__all__ = ["ConfigError", "InputError", "input_errors"]


class ConfigError(ValueError):
    """A bad configuration: the message names the key (`section.key`), the value and what is allowed."""


class InputError(ConfigError):
    """A bad input found after the config parsed (data file, model folder, resume target, run folder): one line,
    exit status 2, like a config error; the message names the file or folder and the key that points at it."""


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Inside, a loader's `ValueError` / `OSError` (a missing file, a bad row, a folder that does not load: their
    messages name the file) becomes an `InputError` with the same message."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, OSError) as err:
        message = str(err) if not isinstance(err, OSError) or not err.filename else f"{err.filename}: {err.strerror}"
        raise InputError(message) from err


class _Section:
    """Base of every section: coerces and type-checks each field, then runs the section's own `validate()`."""

    SECTION = ""  # the TOML table name; "" for the top level

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.metadata.get("internal"):
                setattr(self, f.name, _coerce(self._key(f.name), getattr(self, f.name), _hints(type(self))[f.name]))
        self.validate()

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def _require(self, ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{self._key(name)} = {getattr(self, name)!r}: {allowed}")

    def _at_least(self, minimum: float, *names: str) -> None:
        for name in names:
            self._require(getattr(self, name) >= minimum, name, f"must be >= {minimum}")

    def validate(self) -> None:
        """Range and cross-field checks of this section; raises `ConfigError`."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """`(X, True)` for `X | None`, else `(hint, False)`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner, True
    return hint, False


def _describe(hint: Any) -> str:
    base, optional = _unwrap(hint)
    if typing.get_origin(base) is Literal:
        text = "one of " + ", ".join(map(repr, typing.get_args(base)))
    else:
        text = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
            base, "a list of 2 numbers"
        )
    return text + (" (or none)" if optional else "")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against `hint` (ints widen to float, lists to tuples); `ConfigError` when it does not fit."""
    base, optional = _unwrap(hint)
    if isinstance(base, type) and issubclass(base, _Section):
        if isinstance(value, base):
            return value
    elif value is None:
        if optional:
            return None
    elif typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, bool) and str(value).lower() in choices:  # `think_opened = true` in TOML
            return str(value).lower()
        raise ConfigError(f"{key} = {value!r}: expected {_describe(hint)}{_suggest(str(value), choices)}")
    elif base is bool or base is str:
        if isinstance(value, base):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2:  # tuple[float, float]
        return tuple(_coerce(key, v, float) for v in value)
    raise ConfigError(f"{key} = {value!r}: expected {_describe(hint)}")


def _suggest(word: str, candidates: Sequence[str], prefix: str = "") -> str:
    """ "; did you mean 'X'?" for the closest candidate (difflib), or ""."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""
