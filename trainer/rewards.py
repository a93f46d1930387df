"""Reward functions: the built-in scorers (correct/formatted bits), user reward functions, and response lengths.

`score(responses, answers, task=...)` gives the two `[N]` bool tensors that `fastslow.thinking_reward` (FAST) and
plain GRPO (correctness only) take: the synthetic task's rule (`trainer.task.check`) or the math verifier
(`fastslow.math_reward.score_batch`). `task_for(data_cfg)` picks the task from the data source.

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
built-in scorer still judges correctness for the accuracy metric, the online filters, the accuracy-based KL and
FAST's difficulty (see `trainer.step`). The function runs on every rank, on that rank's responses; when it raises,
`call_reward_fn` with on_error="raise" calls it again on each sample alone to name the first one that fails.
With `reward.timeout_s > 0` (the default) each call runs in a forked child process that is killed past the limit
(`trainer.reward_worker`), so a function that hangs costs at most that long and Ctrl-C still stops the run.
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
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import torch
from torch import Tensor

from fastslow.math_reward import score_batch
from trainer import tasks as builtin_tasks
from trainer.config.reward import LENGTH_UNITS, ON_ERROR

__all__ = [
    "LENGTH_UNITS",
    "ON_ERROR",
    "TASKS",
    "RewardError",
    "RewardFn",
    "TaskSource",
    "call_reward_fn",
    "char_length",
    "decode_responses",
    "lengths",
    "load_reward_fn",
    "prompt_opens_think",
    "score",
    "score_completions",
    "task_for",
    "think_opened_flags",
]

TASKS = (*builtin_tasks.NAMES, "math")

RewardFn = Callable[[list[str], list[str], list[str]], Any]
"""A user reward function: `(responses, answers, prompts) -> N numbers` (see the module docstring)."""

_SPEC_FORMS = "expected 'package.module:function' or 'path/to/file.py:function'"
_LOADED: dict[str, RewardFn] = {}
"""`load_reward_fn`'s cache, by spec: each module is imported once per process."""


class RewardError(RuntimeError):
    """A user reward function that cannot be loaded, or a call that failed or returned a bad value."""


class TaskSource(Protocol):
    """What `task_for` reads of a data config: its `source` (`trainer.config.DataConfig`, or a stand-in)."""

    @property
    def source(self) -> str: ...


def task_for(data_cfg: TaskSource) -> str:
    """The reward task of a data source: a built-in task's own name ("synthetic", "chain"), "math" for a file."""
    source = str(data_cfg.source)
    return source if builtin_tasks.is_builtin(source) else "math"


def score(
    responses: Sequence[str],
    answers: Sequence[str],
    *,
    task: str,
    think_opened: bool | Sequence[bool] = False,
    timeout_s: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Scores `N` decoded responses against their reference answers.

    Args:
        responses: `N` generated texts (special tokens already stripped).
        answers: `N` reference answers, `answers[i]` for `responses[i]`.
        task: a built-in task (`trainer.tasks`: "synthetic", "chain"; their `check`) or "math"
            (`fastslow.math_reward`: boxed or `<answer>` answer, exact then symbolic comparison, FAST's format).
        think_opened: math only: the prompt (chat template) already opened the `<think>` block, so FAST's format
            term expects the response to close it without opening it: one bool for all, or one per response
            (`prompt_opens_think` tells it from a rendered prompt).
        timeout_s: math only: limit of one symbolic check.

    Returns:
        `(correct, formatted)`: `[N]` bool CPU tensors.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if isinstance(responses, str) or isinstance(answers, str):
        raise ValueError("responses and answers must be sequences of strings, not one string")
    if len(responses) != len(answers):
        raise ValueError(f"answers has {len(answers)} items but responses has {len(responses)}")
    opened = [bool(think_opened)] * len(responses) if isinstance(think_opened, bool) else list(think_opened)
    if len(opened) != len(responses):
        raise ValueError(f"think_opened has {len(opened)} items but responses has {len(responses)}")
    if task == "math":
        correct = torch.zeros(len(responses), dtype=torch.bool)
        formatted = torch.zeros(len(responses), dtype=torch.bool)
        for flag in (False, True):  # one verifier batch per kind of prompt
            idx = [i for i, o in enumerate(opened) if o == flag]
            if idx:
                c, f, _ = score_batch(
                    [responses[i] for i in idx], [str(answers[i]) for i in idx], timeout_s=timeout_s,
                    think_opened=flag,
                )  # fmt: skip
                correct[idx], formatted[idx] = c, f
        return correct, formatted
    check = builtin_tasks.get(task).check
    verdicts = [check(r, str(a)) for r, a in zip(responses, answers)]
    correct = torch.tensor([v.correct for v in verdicts], dtype=torch.bool)
    formatted = torch.tensor([v.formatted for v in verdicts], dtype=torch.bool)
    return correct, formatted


def score_completions(
    tokenizer: Any,
    completions: Sequence[Sequence[int]],
    answers: Sequence[str],
    *,
    task: str,
    think_opened: Sequence[bool],
    truncated: str,
) -> tuple[list[str], Tensor, Tensor]:
    """`(texts, correct, formatted)` of generated completions, as training and evaluation both score them.

    `score` on the decoded texts; with `truncated = "wrong"` (`reward.truncated`) a completion that does not end
    with the stop token (cut at the token limit: its answer was never finished) is neither correct nor formatted.
    """
    texts = decode_responses(tokenizer, completions)
    correct, formatted = score(texts, answers, task=task, think_opened=think_opened)
    if truncated == "wrong":
        eos = tokenizer.eos_token_id
        ended = torch.tensor([bool(c) and c[-1] == eos for c in completions], dtype=torch.bool)
        correct, formatted = correct & ended, formatted & ended
    return texts, correct, formatted


def decode_responses(tokenizer: Any, completions: Sequence[Sequence[int]]) -> list[str]:
    """The texts the scorers read: each completion decoded without its stop token and special tokens."""
    eos = tokenizer.eos_token_id
    return [tokenizer.decode([t for t in c if t != eos], skip_special_tokens=True) for c in completions]


def think_opened_flags(mode: str, tokenizer: Any, items: Sequence[dict], n: int) -> list[bool]:
    """`reward.think_opened` per response of `items` (each with `n` responses): forced by "true" / "false", or
    read from each item's rendered prompt ("auto", `prompt_opens_think`)."""
    if mode != "auto":
        return [mode == "true"] * (len(items) * n)
    return [prompt_opens_think(tokenizer, it["prompt_ids"]) for it in items for _ in range(n)]


def prompt_opens_think(tokenizer: Any, prompt_ids: Sequence[int]) -> bool:
    """Whether a rendered generation prompt ends inside an open think block (R1-distilled models' chat templates end
    with `<think>`): its last tokens, decoded with the special tokens kept, end with `<think>` once trailing white
    space is removed."""
    tail = tokenizer.decode(list(prompt_ids[-16:]), skip_special_tokens=False)
    return tail.rstrip().endswith("<think>")


def lengths(response_token_counts: Sequence[int] | Tensor, responses: Sequence[str], unit: str) -> Tensor:
    """Response lengths for the FAST length score, in `unit`: "tokens" (the counts given) or "chars" (of the text,
    counted as the seed does: `char_length`).

    Args:
        response_token_counts: `[N]` generated tokens per response (the stop token included, padding not).
        responses: `N` decoded texts.
        unit: "tokens" or "chars".

    Returns:
        `[N]` float32 CPU tensor.
    """
    if unit not in LENGTH_UNITS:
        raise ValueError(f"unit must be one of {', '.join(LENGTH_UNITS)}, got {unit!r}")
    n_tokens = len(response_token_counts)
    if n_tokens != len(responses):
        raise ValueError(f"response_token_counts has {n_tokens} items but responses has {len(responses)}")
    if unit == "chars":
        return torch.tensor([float(char_length(r)) for r in responses], dtype=torch.float32)
    if isinstance(response_token_counts, Tensor):
        return response_token_counts.detach().to("cpu", torch.float32).reshape(-1)
    return torch.tensor([float(c) for c in response_token_counts], dtype=torch.float32)


_TAG_SPACE = re.compile(r"\s*([<>/])\s*")


def char_length(response: str) -> int:
    """The FAST seed's character count: `len(response)` once the whitespace around `<`, `>` and `/` is removed.

    `"<think> 3 / 4 </think> The answer is \\boxed{42}"` is 42 characters (47 before the removal).
    """
    return len(_TAG_SPACE.sub(r"\1", response))


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
        timeout_s: `> 0`: the call runs in a child process (`trainer.reward_worker`) killed after this many
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
        from trainer import reward_worker

        try:
            outcome = reward_worker.run(_checked(fn, on_error), args, timeout_s)
        except reward_worker.RewardTimeout as exc:
            outcome = ("failed", f"took longer than reward.timeout_s = {timeout_s:g} s on a chunk of {n} samples")
            if on_error == "raise":
                raise RewardError(f"reward function {name} {outcome[1]} ({exc})") from None
        except reward_worker.ChildError as exc:
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
    return f"{type(exc).__name__}: {exc}"


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
