"""Reward functions: score decoded responses as correct/formatted bits, and measure response lengths.

`score(responses, answers, task=...)` gives the two `[N]` bool tensors that `fastslow.thinking_reward` (FAST) and
plain GRPO (correctness only) take: the synthetic task's rule (`trainer.task.check`) or the math verifier
(`fastslow.math_reward.score_batch`). `task_for(data_cfg)` picks the task from the data source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fastslow.math_reward import score_batch
from trainer import task as synthetic_task

__all__ = ["LENGTH_UNITS", "TASKS", "lengths", "score", "task_for"]

TASKS = ("synthetic", "math")
LENGTH_UNITS = ("tokens", "chars")


def task_for(data_cfg: Any) -> str:
    """The reward task of a data source: "synthetic" for the built-in task, "math" for a file of prompts."""
    return "synthetic" if str(data_cfg.source) == "synthetic" else "math"


def score(
    responses: Sequence[str],
    answers: Sequence[str],
    *,
    task: str,
    think_opened: bool = False,
    timeout_s: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Scores `N` decoded responses against their reference answers.

    Args:
        responses: `N` generated texts (special tokens already stripped).
        answers: `N` reference answers, `answers[i]` for `responses[i]`.
        task: "synthetic" (`trainer.task.check`) or "math" (`fastslow.math_reward`: boxed or `<answer>` answer,
            exact then symbolic comparison, FAST's think/answer format).
        think_opened: math only: the prompt (chat template) already opened the `<think>` block.
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
    if task == "math":
        correct, formatted, _ = score_batch(
            list(responses), [str(a) for a in answers], timeout_s=timeout_s, think_opened=think_opened
        )
        return correct, formatted
    verdicts = [synthetic_task.check(r, str(a)) for r, a in zip(responses, answers)]
    correct = torch.tensor([v.correct for v in verdicts], dtype=torch.bool)
    formatted = torch.tensor([v.formatted for v in verdicts], dtype=torch.bool)
    return correct, formatted


def lengths(response_token_counts: Sequence[int] | Tensor, responses: Sequence[str], unit: str) -> Tensor:
    """Response lengths for the FAST length score, in `unit`: "tokens" (the counts given) or "chars" (of the text).

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
        return torch.tensor([float(len(r)) for r in responses], dtype=torch.float32)
    if isinstance(response_token_counts, Tensor):
        return response_token_counts.detach().to("cpu", torch.float32).reshape(-1)
    return torch.tensor([float(c) for c in response_token_counts], dtype=torch.float32)
