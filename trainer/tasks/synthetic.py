"""The built-in task "synthetic" (the default): the last digit of a sum of digits, with a think trace that can help.

A prompt is `NUM_DIGITS` digits and `=`, e.g. `"3 0 0 5 0 2 ="`; the answer is the last digit of their sum (`0`).
The level (difficulty) of a problem is how many of its digits are not zero, 1 to `MAX_LEVEL`. Two ways to answer:

    direct:  <answer> 0 </answer>                                   (3 tokens + the stop token)
    thought: <think> 3 3 3 8 8 0 </think> <answer> 0 </answer>        (the running sums' last digits, 11 + 1)

and a thought may carry filler words before `</think>` ("<think> 3 3 3 8 8 0 wait check </think> ..."), which cost
length and carry nothing.

Why this task. Each algorithm's mechanism needs something real to act on, on 2 CPU cores with a 2-layer, 64-wide
model:
- Thinking helps on hard problems and only costs on easy ones, by the model's own limits, not by a rule: the j-th
  running sum is the previous one plus the prompt's j-th digit, which sits at a fixed distance back (every prompt
  has the same length), so a small transformer learns the step and it generalises to unseen digit strings; the
  direct answer needs the whole sum at once, which the same model gets right for one non-zero digit (a copy) and
  rarely for three or more. After the built-in warm start (`trainer.model.warm_start`, 200 steps on the training split),
  measured on 64 held-out problems per level, sampled at temperature 1 (level 1 -> 5): a direct answer is right
  0.95, 0.66, 0.06, 0.14, 0.11 of the time, a thought 0.97, 0.95, 0.91, 0.86, 0.84.
- Lengths vary and can move both ways: 4 tokens for a direct answer, 12 or more for a thought, a stop token after
  `</answer>` that the model learns, and filler words that only cost.
- Mixed difficulty with pass rates spread across (0, 1) from the first step: the warm-started model answers directly
  about half the time, so its held-out accuracy is 0.95, 0.80, 0.47, 0.42, 0.31 by level (avg@4 ~0.67 overall).
- Enough problems for a held-out split: `split="eval"` is the fifth of digit strings whose CRC-32 is divisible by 5,
  `split="train"` the rest; the two never share a problem.

How this relates to the papers' set-ups: they start RL from models that already reason at length (distilled long-CoT
or math models) on math problems of graded difficulty (MATH levels), and measure held-out accuracy and response
length. Here the warm start plays the distilled model (it thinks about half the time, and sometimes pads its
thinking), the levels play MATH's levels, and `trainer.eval` measures the held-out split the same way.

The reward rule (`check`), exactly. The response is split into pieces (`pieces`): the four tags, single digits and
other words.
- predicted: the first digit after the first `<answer>`; None if there is no `<answer>` or no digit after it (the
  digits of the thinking are not an answer). correct: predicted equals the answer as an integer.
- formatted (the FAST format bonus): (1) exactly one `<answer>`, and the piece right after it is a digit; (2) at
  most one `<think>` and at most one `</think>`, both before `<answer>`; a `<think>` must be closed by a later
  `</think>` (a lone `</think>` is fine: the prompt may have opened the block); (3) the answer is closed: exactly one
  `</answer>`, right after the answer's digit, and nothing after it. A direct answer (no think block) is formatted:
  fast thinking skips the block, which `trainer.reward.math_grader.format_ok` allows as an empty `<think></think>`.
  Rule (3) is the seed's: its format regex (as `format_ok` implements it) wants `<answer>X</answer>` with only white
  space after it. An earlier version also accepted an unclosed `<answer> d`, and FAST's brevity reward found it
  (`<think>...</think><answer>2<eos>`, one token shorter); a response cut at the token limit is wrong either way
  (`reward.truncated`).
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "FILLER",
    "MAX_LEVEL",
    "NAME",
    "NUM_DIGITS",
    "SPLITS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "VERSION",
    "VOCAB",
    "Verdict",
    "check",
    "make_dataset",
    "pieces",
    "solution",
    "split_of",
    "warm_start_examples",
]

NAME = "synthetic"
VERSION = "digit-sum-v1"
"""Changes whenever prompts or worked solutions change, so that an old warm-start cache is never reused."""

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
DIGITS = tuple(str(d) for d in range(10))
OPERATORS = ("+", "-", "=")
FILLER = ("so", "is", "plus", "makes", "then", "ok", "wait", "hmm", "check", "count")
"""Thinking words: they carry no information, they only let a response be longer or shorter."""
VOCAB = DIGITS + OPERATORS + TAGS + FILLER
"""The task's words, in token-id order after the special tokens (see `trainer.model.tiny.build_tokenizer`)."""

NUM_DIGITS = 6
"""Digits per prompt: every prompt has the same length, so each running sum's digit is a fixed distance back."""
MAX_LEVEL = 5
"""Levels are 1 .. MAX_LEVEL non-zero digits."""
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Verdict:
    """How one response scores."""

    correct: bool
    formatted: bool
    predicted: str | None
    """The digit the rule read as the answer (None if the response gives none)."""


_PIECE = re.compile(r"</?(?:think|answer)>|\d|[^\s<\d]+|<")


def pieces(response: str) -> list[str]:
    """Splits a response into tags, digits (each its own number) and other runs of characters.

    Digits are read one by one because the built-in tokenizer decodes without spaces: `3 3` and `33` are the same
    text (two tokens), and every answer of the task is one digit.
    """
    return _PIECE.findall(response)


def split_of(digits: list[int] | tuple[int, ...]) -> str:
    """ "eval" for the fifth of digit strings whose CRC-32 is divisible by 5, else "train"."""
    return "eval" if zlib.crc32("".join(map(str, digits)).encode()) % 5 == 0 else "train"


def _problem(rng: random.Random, split: str) -> tuple[list[int], int]:
    """Digits of one problem of `split`: a level uniform in 1..MAX_LEVEL, then its positions, then digits 1-9."""
    level = rng.randint(1, MAX_LEVEL)
    while True:
        digits = [0] * NUM_DIGITS
        for p in rng.sample(range(NUM_DIGITS), level):
            digits[p] = rng.randint(1, 9)
        if split_of(digits) == split:
            return digits, level


def make_dataset(size: int, seed: int, *, split: str = "train") -> list[dict]:
    """`size` problems of `split`, deterministic for `seed` (problems may repeat within the list).

    Returns:
        `[{"prompt": "3 0 0 5 0 2 =", "answer": "0", "level": 3, "digits": [3, 0, 0, 5, 0, 2]}, ...]`.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = random.Random(f"{seed}:{split}")
    items = []
    for _ in range(size):
        digits, level = _problem(rng, split)
        prompt = " ".join(map(str, digits)) + " ="
        items.append({"prompt": prompt, "answer": str(sum(digits) % 10), "level": level, "digits": digits})
    return items


def solution(digits: list[int], *, think: bool, fillers: int = 0, rng: random.Random | None = None) -> str:
    """A correct response: the direct answer, or the running-sum thought (with `fillers` filler words at its end)."""
    answer = f"{ANSWER_OPEN} {sum(digits) % 10} {ANSWER_CLOSE}"
    if not think:
        return answer
    running, total = [], 0
    for d in digits:
        total = (total + d) % 10
        running.append(str(total))
    words = [(rng or random).choice(FILLER) for _ in range(fillers)]
    return " ".join([THINK_OPEN, *running, *words, THINK_CLOSE, answer])


def warm_start_examples(n: int, *, seed: int, direct: float, filler: float) -> list[tuple[str, str]]:
    """`n` (prompt, response) pairs on the training split for the warm start (`trainer.model.warm_start`): direct with
    probability `direct`, else a thought with a geometric number of filler words (each further one with probability
    `filler`)."""
    rng = random.Random(f"warm-start:{seed}")
    pairs = []
    for item in make_dataset(n, seed, split="train"):
        think = rng.random() >= direct
        fillers = 0
        while think and rng.random() < filler:
            fillers += 1
        pairs.append((item["prompt"], solution(item["digits"], think=think, fillers=fillers, rng=rng)))
    return pairs


def _as_int(text: str) -> int | None:
    """The integer a number piece or a reference spells, None when it is not a plain non-negative integer."""
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 30 else None


def check(response: str, answer: str) -> Verdict:
    """Scores one response against its reference answer by the rule in the module docstring; never raises."""
    if not isinstance(response, str):
        return Verdict(False, False, None)
    ps = pieces(response)
    predicted = None
    if ANSWER_OPEN in ps:
        after = ps[ps.index(ANSWER_OPEN) + 1 :]
        predicted = next((p for p in after if p.isdigit()), None)
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
    return ps.count(ANSWER_CLOSE) == 1 and len(ps) == at + 3 and ps[at + 2] == ANSWER_CLOSE
