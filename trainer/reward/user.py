"""User reward functions: plugged in by import path, loaded once, called per chunk, their values checked.

A user reward function (`reward.function` in the config) plugs in by import path, "package.module:function" or
"path/to/file.py:function". `load_reward_fn(spec)` imports it once (the config does this when it loads, so a bad
path fails before any work); `call_reward_fn` calls it on one generation chunk and checks what comes back. The
contract:

    fn(responses: list[str], answers: list[str], prompts: list[str]) -> list[float] | Tensor

`responses[i]` is the i-th decoded response of the chunk (special tokens stripped), `answers[i]` the reference
answer of its prompt and `prompts[i]` the prompt text as the data gave it (before the chat template); responses of
one prompt are adjacent (group by group). It returns one finite number per response: a sequence of `N` numbers
(bools count as 0/1) or a 1-D tensor of `N` values. Example, in `my_rewards.py`:

    def brevity(responses, answers, prompts):
        # 1 for the right final answer, minus a little for every character past 200
        out = []
        for text, answer in zip(responses, answers):
            right = text.strip().endswith(answer)
            out.append(float(right) - 0.001 * max(len(text) - 200, 0))
        return out

run with `reward.function=my_rewards:brevity` (from the folder holding it, or with it on PYTHONPATH) or
`reward.function=path/to/my_rewards.py:brevity`. The user's value is the reward GRPO's advantages use; the
built-in scorer (`trainer.reward.builtin`) still judges correctness for the accuracy metric, the online filters,
the accuracy-based KL and FAST's difficulty (see `trainer.step`). The function runs on every rank, on that rank's
responses; when it raises, `call_reward_fn` with on_error="raise" calls it again on each sample alone to name the
first one that fails. With `reward.timeout_s > 0` (the default) each call runs in a forked child process that is
killed past the limit (`trainer.reward.worker`), so a function that hangs costs at most that long and Ctrl-C still
stops the run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

from trainer.reward.config import ON_ERROR

__all__ = [
    "ON_ERROR",
    "RewardError",
    "RewardFn",
    "call_reward_fn",
    "load_reward_fn",
]


RewardFn = Callable[[list[str], list[str], list[str]], Any]
"""A user reward function: `(responses, answers, prompts) -> N numbers` (see the module docstring)."""

_SPEC_FORMS = "expected 'package.module:function' or 'path/to/file.py:function'"
_LOADED: dict[str, RewardFn] = {}
"""`load_reward_fn`'s cache, by spec: each module is imported once per process."""


class RewardError(RuntimeError):
    """A user reward function that cannot be loaded, or a call that failed or returned a bad value."""


def load_reward_fn(spec: str) -> RewardFn:
    """The user reward function named by `spec`, imported once per process (later calls return the same object).

    Args:
        spec: "package.module:function" (imported with `importlib`, from `sys.path`: the installed packages and,
            under `python -m` or `torchrun -m`, the working directory) or "path/to/file.py:function" (a file,
            relative to the working directory). The function part may be dotted (`module:Class.method`).

    Raises:
        RewardError: a malformed spec, a missing file or module, an exception while importing it (its type and
            message are given), a missing attribute, or an object that cannot be called with three arguments.
    """
    spec = spec.strip()
    if spec in _LOADED:
        return _LOADED[spec]
    where, colon, attr = spec.rpartition(":")
    if not colon or not where.strip() or not attr.strip():
        raise RewardError(f"{_SPEC_FORMS}, got {spec!r}")
    where, attr = where.strip(), attr.strip()
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    module = _import_file(where) if is_file else _import_module(where)
    fn: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(fn, part):
            owner = where if i == 0 else ".".join(attr.split(".")[:i])
            names = [n for n in dir(fn) if not n.startswith("_")]
            close = _closest(part, names)
            raise RewardError(f"{owner} has no attribute {part!r}{close}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise RewardError(f"{attr} in {where} is not a function (its type is {type(fn).__name__})")
    try:
        inspect.signature(fn).bind(["response"], ["answer"], ["prompt"])
    except TypeError as exc:
        raise RewardError(f"{attr} must take (responses, answers, prompts): {exc}") from exc
    except ValueError:  # no signature to inspect (some builtins): the first call will tell
        pass
    _LOADED[spec] = fn
    return fn


def _closest(word: str, names: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(names), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # ImportError, or whatever the module raised (or exited with) importing
        raise RewardError(f"cannot import module {name!r}: {_what(exc)}") from exc


def _import_file(path_text: str) -> Any:
    """The module of a Python file, executed once per resolved path (registered in `sys.modules`)."""
    path = Path(path_text).expanduser().resolve()
    name = f"_fastslow_reward_{path.stem}_{abs(hash(str(path))):x}"
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise RewardError(f"no such file: {path_text} ({path} does not exist or is not a file)")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RewardError(f"cannot import {path_text}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as `import` does (dataclasses and pickling look it up)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # `sys.exit(...)` at import is a bad module, not the run's exit status
        del sys.modules[name]
        raise RewardError(f"cannot import {path_text}: {_what(exc)}") from exc
    return module


def call_reward_fn(
    fn: RewardFn,
    responses: Sequence[str],
    answers: Sequence[str],
    prompts: Sequence[str],
    *,
    name: str,
    on_error: str = "raise",
    timeout_s: float = 0.0,
) -> tuple[Tensor, int]:
    """A user reward function's rewards for `N` responses, checked: one finite number each.

    Args:
        fn: the function (from `load_reward_fn`).
        responses, answers, prompts: `N` each, passed to `fn` as lists.
        name: how errors name the function (its import path, `reward.function`).
        on_error: what a failure does: "raise" (a `RewardError` naming `name`, the first bad sample's index in
            this chunk and what was wrong) or "zero" (the bad samples score 0: each bad entry, or all `N` when the
            call raised, timed out or returned the wrong count or type).
        timeout_s: `> 0`: the call runs in a child process (`trainer.reward.worker`) killed after this many
            seconds, which counts as a failure of the whole call; a stop requested meanwhile raises
            `trainer.signals.Interrupted`. 0: called in this process, without a limit.

    Returns:
        `(rewards, errors)`: `[N]` float32 CPU tensor, and how many samples were scored 0 for an error.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    n = len(responses)
    if len(answers) != n or len(prompts) != n:
        raise ValueError(f"responses, answers and prompts differ in length: {n}, {len(answers)}, {len(prompts)}")
    args = (list(responses), list(answers), list(prompts))
    if timeout_s > 0:
        from trainer.reward import worker

        try:
            outcome = worker.run(_checked(fn, on_error), args, timeout_s)
        except worker.RewardTimeout as exc:
            outcome = ("failed", f"took longer than reward.timeout_s = {timeout_s:g} s on a chunk of {n} samples")
            if on_error == "raise":
                raise RewardError(f"reward function {name} {outcome[1]} ({exc})") from None
        except worker.ChildError as exc:
            outcome = ("failed", f"failed on a chunk of {n} samples: {exc}")
    else:
        outcome = _outcome(fn, on_error, *args, keep_exception=True)
    if outcome[0] == "failed":
        if on_error == "zero":
            return torch.zeros(n), n
        raise RewardError(f"reward function {name} {outcome[1]}") from (outcome[2] if len(outcome) > 2 else None)
    values, first = outcome[1], outcome[2]
    if first is not None and on_error == "raise":
        i, why = first
        raise RewardError(
            f"reward function {name} returned {why} for sample {i} of {n} in this chunk "
            f"(response {_short(responses[i])}, answer {_short(answers[i])})"
        )
    errors = sum(why is not None for _, why in values)
    return torch.tensor([x for x, _ in values], dtype=torch.float32), errors


@functools.cache
def _checked(fn: RewardFn, on_error: str) -> Callable[..., tuple[Any, ...]]:
    """`_outcome` bound to one function and policy: the same object each time (the worker keeps one child per)."""
    return functools.partial(_outcome, fn, on_error)


def _outcome(
    fn: RewardFn,
    on_error: str,
    responses: list[str],
    answers: list[str],
    prompts: list[str],
    *,
    keep_exception: bool = False,
) -> tuple[Any, ...]:
    """Call `fn` and check what it returned, in plain values (it may run in a child process):
    `("failed", why)` when it raised or returned the wrong type or count (`("failed", why, exception)` for a raise
    with `keep_exception`), else `("values", [(x, why), ...], first)` with each entry's number (0.0 when bad) and
    what was wrong with it (None when fine), and the first bad entry `(i, why)` or None."""
    n, args = len(responses), (responses, answers, prompts)
    try:
        with _no_exit():
            out = fn(*args)
    except (Exception, SystemExit) as exc:  # user code's `sys.exit()` / `os._exit()` is a failure of the call
        where = _first_failing(fn, args) if on_error == "raise" else ""
        why = f"raised on a chunk of {n} samples: {_what(exc)}{where}"
        return ("failed", why, exc) if keep_exception else ("failed", why)
    values, problem = _as_list(out, n)
    if values is None:
        return ("failed", problem)
    checked = [_as_number(v) for v in values]
    first = next(((i, why) for i, (_, why) in enumerate(checked) if why is not None), None)
    return ("values", checked, first)


def _what(exc: BaseException) -> str:
    """An exception as the error line shows it: `Type: message`, or what the code called to exit."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: called sys.exit({exc.code!r})"
    message = str(exc)  # MemoryError() has none: "MemoryError", not "MemoryError: "
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class UserExit(Exception):
    """The user function called `os._exit`, which would end the trainer's process with no word (status 0 included)."""


@contextlib.contextmanager
def _no_exit() -> Iterator[None]:
    """While the user function runs in this process, `os._exit(n)` raises `UserExit` instead of ending it. (In a
    forked child, `reward.timeout_s > 0`, it ends the child, which the parent reports.)"""
    real = os._exit

    def refuse(status: int) -> NoReturn:
        raise UserExit(f"called os._exit({status})")

    os._exit = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = real


def _first_failing(fn: RewardFn, args: tuple[list[str], list[str], list[str]]) -> str:
    """Where a chunk's call raised: the first sample that raises when scored alone (the run is stopping anyway)."""
    for i in range(len(args[0])):
        try:
            with _no_exit():
                fn(*([a[i]] for a in args))
        except (Exception, SystemExit) as exc:
            return (
                f"; the first sample that raises alone is {i} ({_what(exc)}; response "
                f"{_short(args[0][i])}, answer {_short(args[1][i])})"
            )
    return "; every sample scores alone without an error, so the failure depends on the chunk as a whole"


def _as_list(out: Any, n: int) -> tuple[list[Any] | None, str]:
    """`out` as a list of `n` entries, or `(None, what is wrong)`."""
    if isinstance(out, Tensor) or type(out).__module__ == "numpy":
        if getattr(out, "ndim", 0) != 1:
            return None, f"returned a {type(out).__name__} of shape {tuple(out.shape)}, expected shape ({n},)"
        out = out.tolist()
    elif isinstance(out, (str, bytes, dict)) or not isinstance(out, Sequence):
        return None, f"returned a {type(out).__name__}, not a list of {n} numbers (one per response)"
    if len(out) != n:
        missing = f" (sample {len(out)} on has none)" if len(out) < n else ""
        return None, f"returned {len(out)} rewards for {n} samples{missing}"
    return list(out), ""


def _as_number(v: Any) -> tuple[float, str | None]:
    """`(float(v), None)` for a finite real number, else `(0.0, what it is)`."""
    if (isinstance(v, Tensor) and v.numel() == 1) or (type(v).__module__ == "numpy" and getattr(v, "ndim", 1) == 0):
        v = v.item()  # a 1-element tensor or a numpy scalar (np.bool_ is not a numbers.Real)
    if v is None:
        return 0.0, "None"
    if not isinstance(v, numbers.Real):
        return 0.0, f"{_short(v)} (a {type(v).__name__}, not a number)"
    x = float(v)
    if not math.isfinite(x):
        return 0.0, repr(x)
    if abs(x) > _FLOAT32_MAX:  # finite here, inf once it is a float32 reward: the advantages would be NaN
        return 0.0, f"{x!r} (beyond float32's range, ±3.4e38)"
    return x, None


_FLOAT32_MAX = 3.4028234663852886e38


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
