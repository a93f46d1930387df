"""The built-in tasks, by the data source name that selects them: "synthetic" (the digit sum, the quick default job)
and "chain" (a running sum whose trace grows with difficulty, for the full learning comparison).

Each task module has `NAME`, `VERSION` (its warm-start cache key), `VOCAB` (the built-in tokenizer's words, in id
order), `MAX_LEVEL`, `make_dataset(size, seed, split=)`, `check(response, answer) -> Verdict` and
`warm_start_examples(n, seed=, direct=, filler=)`. A new task is one module and one line in `_MODULES`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["DEFAULT", "NAMES", "get", "is_builtin", "of_source"]

_MODULES = {"synthetic": "trainer.tasks.synthetic", "chain": "trainer.tasks.chain"}
NAMES = tuple(_MODULES)
DEFAULT = "synthetic"


def is_builtin(source: object) -> bool:
    """Whether a data or eval source names a built-in task (else it is a file)."""
    return str(source) in _MODULES


def get(name: str) -> ModuleType:
    """The task module of a built-in source name."""
    if name not in _MODULES:
        raise ValueError(f"no built-in task {name!r}; the built-in tasks are {', '.join(NAMES)}")
    return importlib.import_module(_MODULES[name])


def of_source(source: object) -> ModuleType:
    """The task of a data source: its own for a built-in name, the default one (whose tokenizer the tiny preset
    uses) for a file."""
    return get(str(source) if is_builtin(source) else DEFAULT)
