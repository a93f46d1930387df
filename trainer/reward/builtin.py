"""The built-in reward: a response's correctness and format bits by the data's own rule, and its length.

`score(responses, answers, task=...)` gives the two `[N]` bool tensors that `fastslow.thinking_reward` (FAST) and
plain GRPO (correctness only) take: a built-in task's rule (`trainer.tasks`, e.g. `trainer.tasks.synthetic.check`)
or the math grader (`trainer.reward.math_grader.score_batch`). `task_for(data_cfg)` picks the task from the data
source; `lengths` gives the lengths FAST's length term reads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from trainer import tasks as builtin_tasks
from trainer.reward.config import LENGTH_UNITS
from trainer.reward.math_grader import score_batch

__all__ = [
    "LENGTH_UNITS",
    "TASKS",
    "TaskSource",
    "char_length",
    "decode_responses",
    "lengths",
    "prompt_opens_think",
    "score",
    "score_completions",
    "task_for",
    "think_opened_flags",
]

TASKS = (*builtin_tasks.NAMES, "math")


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
            (`trainer.reward.math_grader`: boxed or `<answer>` answer, exact then symbolic comparison, FAST's format).
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
    per_item = [prompt_opens_think(tokenizer, it["prompt_ids"]) for it in items]  # once per prompt, not per response
    return [flag for flag in per_item for _ in range(n)]


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
