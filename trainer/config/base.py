"""The base of every config section: `ConfigError`, and each field's value coerced and checked against its type hint.

Every section (`trainer.config.tree` assembles them; each lives beside what it configures) is a dataclass on
`_Section`. A field typed as another `_Section` is a nested section (`[rollout.vllm]`, key `rollout.vllm.mode`);
`subsections` and `leaves` tell the two kinds of field apart, and `leaf_keys` lists every dotted key under a section.
`trainer.config.io` uses the type helpers (`_describe`, `_hints`, `_suggest`, `_unwrap`) for override values and
messages.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Any, Literal

__all__ = ["ConfigError", "InputError", "input_errors", "leaf_keys", "leaves", "subsections", "warn"]


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


def warn(message: str) -> None:
    """One warning line on stderr, from rank 0 only (every rank loads the config)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr)


class _Section:
    """Base of every section: coerces and type-checks each field, then runs the section's own `validate()`.

    A field typed as a `_Section` is a nested section: it takes an instance, or a mapping of its keys."""

    SECTION = ""  # the dotted TOML table name ("rollout", "rollout.vllm"); "" for the top level

    def __post_init__(self) -> None:
        for name, hint in _hints(type(self)).items():
            setattr(self, name, _coerce(self._key(name), getattr(self, name), hint))
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
    """Field name -> type of a section, in field order."""
    return typing.get_type_hints(cls)


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, _Section)


def subsections(cls: type) -> dict[str, type[_Section]]:
    """The nested sections of `cls`: field name -> section class, in field order."""
    return {k: t for k, t in _hints(cls).items() if _is_section(t)}


def leaves(cls: type) -> dict[str, Any]:
    """The value fields of `cls` (not nested sections): field name -> type, in field order."""
    return {k: t for k, t in _hints(cls).items() if not _is_section(t)}


@cache
def leaf_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every value key under `cls`, dotted (`rollout.vllm.mode`), -> its type: `cls`'s own, then each nested
    section's, in field order."""
    out = {f"{prefix}{k}": t for k, t in leaves(cls).items()}
    for name, sub in subsections(cls).items():
        out.update(leaf_keys(sub, f"{prefix}{name}."))
    return out


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
    if _is_section(base):
        if isinstance(value, base):
            return value
        if isinstance(value, Mapping):
            return base(**value)
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
