"""Evaluation metrics of sampled responses: avg@n, unbiased pass@k, maj@n, lengths by correctness, per difficulty.

Plain Python on per-prompt results (`PromptResult`: the `n` samples' correctness, format bit, token length, and the
majority vote's outcome), so the numbers are checked by hand in tests and identical on every rank. `eval_metrics`
names them as they are logged, under a prefix such as "eval/math500/":

- `avg@n`: mean correctness over all prompts and samples (what the papers call pass@1 (avg@n)).
- `pass@k` for k = 1, 2, 4, ... <= n: the unbiased estimator `1 - C(n - c, k) / C(n, k)` per prompt (Chen et al.,
  2021, "Evaluating Large Language Models Trained on Code"), averaged over prompts. `pass@1` equals `avg@n`.
- `maj@n`: the fraction of prompts whose majority answer is correct (`majority_correct` says how votes count).
- `length`, `length_correct`, `length_incorrect`: mean response length in tokens over all samples, the correct ones
  and the incorrect ones (NaN, logged as null, where there is none).
- `format`: the fraction of samples with the expected think/answer layout (the scorer's format bit).
- `prompts`: how many prompts the numbers are over.
The same keys again under `level_<d>/` for each difficulty value `d` of the prompts that have one.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PromptResult", "difficulty_label", "eval_metrics", "ks_for", "majority_correct", "pass_at_k", "summarize"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one prompt with `c` correct among `n` samples: `1 - C(n - c, k) / C(n, k)`.

    Computed as `1 - prod_{i = n - c + 1}^{n} (1 - k / i)`, a product of at most `c` factors in (0, 1], with no
    binomial coefficients (which overflow a float past n ~ 1000) and no cancellation. 1.0 when `n - c < k` (every
    draw of k samples holds a correct one).
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)) or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need integers 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def ks_for(n: int) -> list[int]:
    """The k of the reported pass@k: 1, 2, 4, ... up to n."""
    return [2**j for j in range(n.bit_length())]


def majority_correct(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    same: Callable[[str, str], bool] = operator.eq,
) -> bool:
    """Whether the majority vote over one prompt's samples picks a correct answer.

    Votes: every sample with an extracted answer votes for it; a sample with none (`None`) does not vote. Classes:
    all correct answers are one class (each equals the reference, so they equal each other; no check is spent on
    them); an incorrect answer joins the first earlier incorrect class whose first answer it equals by
    `same(answer, first)` (string equality by default; the math evaluation passes its equivalence check), else it
    starts a class. The largest class wins; a tie goes to the class whose first vote came earliest in sample order.
    No vote at all: False.
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_correct: {len(answers)} answers but {len(correct)} correctness values")
    classes: list[list[Any]] = []  # [first answer, votes, first sample index, correct]
    for i, (answer, ok) in enumerate(zip(answers, correct)):
        if answer is None:
            continue
        if ok:
            match = next((c for c in classes if c[3]), None)
        else:
            match = next((c for c in classes if not c[3] and same(answer, c[0])), None)
        if match is None:
            classes.append([answer, 1, i, bool(ok)])
        else:
            match[1] += 1
    if not classes:
        return False
    return bool(min(classes, key=lambda c: (-c[1], c[2]))[3])


@dataclass(frozen=True)
class PromptResult:
    """One prompt's `n` samples, scored."""

    correct: tuple[bool, ...]
    """[n] the scorer's correctness of each sample."""
    formatted: tuple[bool, ...]
    """[n] the scorer's format bit of each sample."""
    lengths: tuple[int, ...]
    """[n] response lengths in tokens (the stop token included, as the training metric counts them)."""
    majority: bool
    """`majority_correct` of the samples' extracted answers."""
    difficulty: str | None = None
    """The prompt's difficulty label (`difficulty_label`), None if it has none."""


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(results: Sequence[PromptResult], n: int) -> dict[str, float]:
    """The metrics of the module docstring over `results` (each with `n` samples), without a prefix."""
    if any(len(r.correct) != n or len(r.formatted) != n or len(r.lengths) != n for r in results):
        raise ValueError(f"summarize: every prompt needs exactly n={n} samples")
    samples = [(ok, fmt, length) for r in results for ok, fmt, length in zip(r.correct, r.formatted, r.lengths)]
    out = {f"avg@{n}": _mean([float(ok) for ok, _, _ in samples])}
    for k in ks_for(n):
        out[f"pass@{k}"] = _mean([pass_at_k(n, sum(r.correct), k) for r in results])
    out[f"maj@{n}"] = _mean([float(r.majority) for r in results])
    out["length"] = _mean([float(length) for _, _, length in samples])
    out["length_correct"] = _mean([float(length) for ok, _, length in samples if ok])
    out["length_incorrect"] = _mean([float(length) for ok, _, length in samples if not ok])
    out["format"] = _mean([float(fmt) for _, fmt, _ in samples])
    out["prompts"] = float(len(results))
    return out


def difficulty_label(value: Any) -> str | None:
    """A difficulty value as it appears in a metric name: `3` and `3.0` -> "3", `"Level 3"` -> "Level_3"; None
    (no difficulty) for None and for text with nothing but separators."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    label = re.sub(r"[^0-9A-Za-z.+-]+", "_", str(value)).strip("_")
    return label or None


def _level_order(label: str) -> tuple[int, float, str]:
    """Numbers first, in numeric order, then text."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def eval_metrics(results: Sequence[PromptResult], n: int, prefix: str = "") -> dict[str, float]:
    """`summarize` over all prompts as `<prefix><key>`, then over each difficulty's as `<prefix>level_<d>/<key>`."""
    out = {prefix + k: v for k, v in summarize(results, n).items()}
    labels = sorted({r.difficulty for r in results if r.difficulty is not None}, key=_level_order)
    for label in labels:
        part = [r for r in results if r.difficulty == label]
        out.update({f"{prefix}level_{label}/{k}": v for k, v in summarize(part, n).items()})
    return out
