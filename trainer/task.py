"""The built-in synthetic verifiable task: small sums, answered in a think/answer layout.

A prompt is `"a + b ="` with `a + b <= MAX_SUM` (4: fifteen problems); the answer is the sum. The expected response
is `"<think> ... </think> <answer> 3 </answer>"`. Prompts and responses are made of the words of `VOCAB`, one token
each in the code-built tokenizer (`trainer.model.build_tokenizer`).

Why this task. The default run must show a randomly initialised 2-layer, 64-wide Qwen2 learning with GRPO in ~150
steps on a CPU. Measured with plain group-normalised policy gradient (the GRPO loss on-policy: 16 prompts x 8
samples, 16 new tokens, temperature 1, token-mean loss, Adam lr 3e-3, grad clip 1; sampled accuracy over the first
-> last 10% of 150 steps): seeds 0-5 go 0.12 -> 0.60, 0.13 -> 0.72, 0.12 -> 0.75, 0.14 -> 0.65, 0.11 -> 0.40,
0.11 -> 0.52. Sums <= 9 (55 problems) only reached 0.15-0.29 in the same budget and `(a + b) mod 10` did not move.
Two choices matter as much as the task:
- Problems are drawn uniformly over the ANSWER (then `a` uniformly), so no answer is more frequent than another: with
  the natural pair distribution the policy collapses onto the most frequent sum and stays there.
- A response without an answer tag is read by its FIRST number, not its last: a random-init model sees the prompt
  clearly only in its first generated tokens (on a copy-the-digit variant: 0.10 -> 0.34 reading the last number,
  0.12 -> 0.81 reading the first).

The reward rule (`check`), exactly. The response is split into pieces (`pieces`): the four tags, single digits (the
numbers: the built-in tokenizer decodes without spaces, so `3 3` reads `33`, and every answer is one digit) and
other words.
- predicted: the first digit after the first `<answer>` when the response has one; otherwise the first digit in
  the response; None if there is none. correct: predicted equals the answer as an integer. A random policy is right
  ~10% of the time, which gives GRPO a signal from the first step.
- formatted (the FAST format bonus): (1) exactly one `<answer>`, and the piece right after it is a digit; (2) at
  most one `<think>` and at most one `</think>`, both before `<answer>`; a `<think>` must be closed by a later
  `</think>` (a lone `</think>` is fine: the prompt may have opened the block); (3) at most one `</answer>`, and
  only right after the answer's digit. The full layout `<think> ... </think> <answer> 3 </answer>` is formatted,
  and so are its shortened forms: no think block (fast thinking may skip it, as in
  `fastslow.math_reward.format_ok`) and words after the answer (a response cut at the token limit). Deliberately
  lenient: a random policy over the 31 tokens hits it ~3-10% of the time, so the bonus is reachable and learnable
  (with a 0.5 format bonus added to the reward above: formatted 0.05-0.10 -> 0.34-1.0 over 150 steps, accuracy
  0.12 -> 0.23-0.37), whereas the strict layout needs five specific tokens in a row and a random policy
  essentially never produces it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "FILLER",
    "MAX_SUM",
    "THINK_CLOSE",
    "THINK_OPEN",
    "VOCAB",
    "Verdict",
    "check",
    "make_dataset",
    "pieces",
    "problems",
]

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
DIGITS = tuple(str(d) for d in range(10))
OPERATORS = ("+", "-", "=")
FILLER = ("so", "is", "plus", "makes", "then", "ok", "wait", "hmm", "check", "count")
"""Thinking words: they carry no information, they only let a response be longer or shorter."""
VOCAB = DIGITS + OPERATORS + TAGS + FILLER
"""The task's words, in token-id order after the special tokens (see `trainer.model.build_tokenizer`)."""

MAX_SUM = 4
"""Largest answer; operands and sums are one digit."""


@dataclass(frozen=True)
class Verdict:
    """How one response scores."""

    correct: bool
    formatted: bool
    predicted: str | None
    """The number the rule read as the answer (None if the response holds none)."""


_PIECE = re.compile(r"</?(?:think|answer)>|\d|[^\s<\d]+|<")


def pieces(response: str) -> list[str]:
    """Splits a response into tags, digits (each its own number) and other runs of characters.

    Digits are read one by one because the built-in tokenizer decodes without spaces: `3 3` and `33` are the same
    text (two tokens), and every answer of the task is one digit.
    """
    return _PIECE.findall(response)


def problems() -> list[tuple[int, int]]:
    """Every `(a, b)` the task asks about: `a + b <= MAX_SUM` (15 pairs)."""
    return [(a, b) for a in range(MAX_SUM + 1) for b in range(MAX_SUM + 1) if a + b <= MAX_SUM]


def make_dataset(size: int, seed: int) -> list[dict[str, str]]:
    """`size` problems, deterministic for `seed`: the sum uniform in [0, MAX_SUM], then `a` uniform in [0, sum].

    Returns:
        `[{"prompt": "1 + 2 =", "answer": "3"}, ...]`.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    rng = random.Random(seed)
    items = []
    for _ in range(size):
        total = rng.randint(0, MAX_SUM)
        a = rng.randint(0, total)
        items.append({"prompt": f"{a} + {total - a} =", "answer": str(total)})
    return items


def _as_int(text: str) -> int | None:
    """The integer a number piece or a reference spells, None when it is not a plain non-negative integer."""
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 30 else None


def check(response: str, answer: str) -> Verdict:
    """Scores one response against its reference answer by the rule in the module docstring; never raises."""
    if not isinstance(response, str):
        return Verdict(False, False, None)
    ps = pieces(response)
    if ANSWER_OPEN in ps:
        after = ps[ps.index(ANSWER_OPEN) + 1 :]
        predicted = next((p for p in after if p.isdigit()), None)
    else:
        predicted = next((p for p in ps if p.isdigit()), None)
    want = _as_int(str(answer))
    correct = predicted is not None and want is not None and _as_int(predicted) == want
    return Verdict(correct, _formatted(ps), predicted)


def _formatted(ps: list[str]) -> bool:
    """Rule (1)-(3) of the module docstring."""
    if ps.count(ANSWER_OPEN) != 1:
        return False
    at = ps.index(ANSWER_OPEN)
    if at + 1 >= len(ps) or not ps[at + 1].isdigit():
        return False
    head = ps[:at]
    if head.count(THINK_OPEN) > 1 or head.count(THINK_CLOSE) > 1 or THINK_OPEN in ps[at:] or THINK_CLOSE in ps[at:]:
        return False
    if THINK_OPEN in head and THINK_CLOSE in head and head.index(THINK_OPEN) > head.index(THINK_CLOSE):
        return False
    if THINK_OPEN in head and THINK_CLOSE not in head:
        return False  # an open think block never closed: the answer is still inside the thinking
    n_close = ps.count(ANSWER_CLOSE)
    return n_close == 0 or (n_close == 1 and at + 2 < len(ps) and ps[at + 2] == ANSWER_CLOSE)
