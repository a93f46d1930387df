"""Record the signatures of the Triton kernels the tests launch through the interpreter, for the real compiler.

Under `TRITON_INTERPRET=1` every `@triton.jit` function is an `InterpretedFunction`; `install_recorder()` wraps its
`run` so each launch also notes what the compiled launcher would have specialised on: every argument's type and
attribute exactly as `triton.runtime.jit` computes them (`native_specialize_impl`: pointer dtype and 16-byte
alignment, integers divisible by 16, an integer equal to 1 turned into a constant), the constexpr values and the
launch options (`num_warps`, `num_stages`). `tests/conftest.py` installs it for every test session, so
`tests/test_triton_compile.py` compiles whatever the kernel tests launched earlier in the same run, a new kernel
or a new constexpr combination included; `python -m bench.triton_compile record` writes the same records to
`tests/triton_launches.json` (committed), which covers runs of the compile test on its own.

A record is a plain dict: {"kernel": "module:name", "signature": {arg: type}, "constexprs": {arg: value},
"attrs": {arg: attr}, "options": {...}}; a constexpr that is a Triton dtype is stored as {"dtype": "bf16"}.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any

RECORD_FILE = Path(__file__).resolve().parent.parent / "tests" / "triton_launches.json"
# Launch keywords that are compiler options rather than kernel arguments (the rest are rejected by Triton itself).
_OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")

_recorded: dict[str, dict[str, Any]] = {}
_installed = False


def record_key(record: dict[str, Any]) -> str:
    """A stable identity for a record: two launches with the same key compile to the same kernel."""
    return json.dumps(record, sort_keys=True)


def _encode_constexpr(value: Any) -> Any:
    if value.__class__.__name__ == "dtype":  # triton.language.dtype
        return {"dtype": value.name}
    if hasattr(value, "value") and value.__class__.__name__ == "constexpr":
        return _encode_constexpr(value.value)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise TypeError(f"constexpr of type {type(value).__name__} cannot be recorded")


def _is_constexpr(param: inspect.Parameter) -> bool:
    # `from __future__ import annotations` leaves the annotation as the string "tl.constexpr"
    return "constexpr" in str(param.annotation)


@functools.cache
def _signature(fn: Any) -> inspect.Signature:
    return inspect.signature(fn)


def describe_launch(fn: Any, do_not_specialize: tuple[Any, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """The record of one launch of the Python function `fn` with `args`/`kwargs` (as given to `kernel[grid]`)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    sig = _signature(fn)
    names = list(sig.parameters)
    options = {k: kwargs[k] for k in _OPTION_KEYS if k in kwargs}
    bound = sig.bind(*args, **{k: v for k, v in kwargs.items() if k not in options})
    bound.apply_defaults()
    no_spec = {names[i] if isinstance(i, int) else i for i in do_not_specialize}
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[str, str] = {}
    for name, param in sig.parameters.items():
        value = bound.arguments[name]
        if _is_constexpr(param):
            signature[name] = "constexpr"
            constexprs[name] = _encode_constexpr(value)
            continue
        kind, attr = native_specialize_impl(BaseBackend, value, False, name not in no_spec, True)
        signature[name] = kind
        if kind == "constexpr":  # an integer equal to 1: the launcher makes it a constant
            constexprs[name] = _encode_constexpr(attr)
        elif isinstance(attr, str) and attr:
            attrs[name] = attr
    return {
        "kernel": f"{fn.__module__}:{fn.__name__}",
        "signature": signature,
        "constexprs": constexprs,
        "attrs": attrs,
        "options": options,
    }


def install_recorder() -> bool:
    """Record every interpreted kernel launch of this process from now on; False when not interpreting.

    Idempotent. Recording costs one `inspect.signature` bind per launch, nothing next to the interpreter.
    """
    global _installed
    if _installed:
        return True
    try:
        from triton import knobs
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    if not knobs.runtime.interpret:
        return False
    original = InterpretedFunction.run

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        dns = tuple(self.kwargs.get("do_not_specialize") or ())
        record = describe_launch(self.fn, dns, args, kwargs)
        _recorded.setdefault(record_key(record), record)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run  # type: ignore[method-assign]
    _installed = True
    return True


def recorded() -> list[dict[str, Any]]:
    """The distinct launches recorded in this process so far."""
    return list(_recorded.values())


def load(path: Path = RECORD_FILE) -> list[dict[str, Any]]:
    """The records of a file written by `save` (empty when it does not exist)."""
    if not path.exists():
        return []
    return json.loads(path.read_text())["launches"]


def save(records: list[dict[str, Any]], path: Path = RECORD_FILE) -> None:
    """Write `records` (deduplicated, sorted) so that regenerating an unchanged recording changes nothing."""
    unique = {record_key(r): r for r in records}
    body = {
        "about": "Triton launches recorded from the kernel tests; regenerate with `python -m bench.triton_compile "
        "record` (`make compile-report`).",
        "launches": [unique[k] for k in sorted(unique)],
    }
    path.write_text(json.dumps(body, indent=1) + "\n")  # arguments stay in parameter order


def merged(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct records of several lists, in a stable order."""
    unique = {record_key(r): r for g in groups for r in g}
    return [unique[k] for k in sorted(unique)]


def save_on_exit_path() -> Path | None:
    """Where a test session should write its recording (`FASTSLOW_RECORD_TRITON`), or None."""
    target = os.environ.get("FASTSLOW_RECORD_TRITON")
    return Path(target) if target else None
