"""PEP 562 lazy exports for a package: each public name's module is imported the first time the name is asked for
(`fastslow`, `trainer.rollout` and `trainer.config` use it, so importing them stays light)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's `__getattr__` and `__dir__`. `exports` maps a public name to the module that defines it: a
    dotted path as it is, a bare name as a submodule of `package`. A value once imported is cached in `namespace`
    (the package's `globals()`), so later lookups do not come back here."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module if "." in module else f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
