"""The second built-in task, "chain": a running sum over 1 to 16 lettered terms, whose worked trace grows with the
number of terms and whose warm start pads it with a redundant check that a length reward can remove.

A prompt lists `level` terms, each one token that joins a letter (its place) and a digit 1-9, then `=`:

    prompt:   a3 b5 c2 =                                               (level 3; the answer is (3+5+2) % 10 = 0)
    direct:   <answer> 0 </answer>                                     (3 tokens + the stop token)
    thought:  <think> a3 3 b5 8 c2 0 </think> <answer> 0 </answer>     (2 + 2 * level + 3, + the stop token)
    padded:   <think> a3 3 b5 8 c2 0 wait 0 0 </think> <answer> 0 </answer>

Each step of the thought restates one term and writes the running sum's last digit. The next term is found by its
letter (the successor of the previous step's letter, which every prompt has in the same order), so a two-layer model
can learn the step, and it learns it for any number of terms. `wait` then checks the result `k` times (1 <= k <=
level): a verification pass that repeats the final sum, computes nothing new, costs 1 + k tokens and leaves the
answer as it was. Repeating a digit is nearly free of errors, so the pass neither helps nor hurts accuracy: a plain
accuracy reward has no reason to drop it, a length reward has every reason to. (A first version restated the last
steps in full; copying them cost accuracy, and GRPO dropped the pass on its own.) Lengths run from 4 tokens (a
direct answer) to 2 + 32 + 17 + 4 = 55 (level 16, checked 16 times).

Why this task, beside the quick digit-sum one (`trainer.tasks.synthetic`, which saturates: GRPO reaches about 0.93
in 40-70 steps and every answer is about 12 tokens long):
- It leaves headroom on a 2-core budget: a thought at level L is right only if all L lookups and sums are, so the
  long chains stay hard (from the warm start's 0.67 held-out, GRPO at lr 2e-4 levels off near 0.83 by step 40 of
  60, level 16 near 0.5; `bench/results/study_full_cpu_*.md`).
- Length can move both ways, and what is reachable is known per level: level 1 can be answered directly (a copy)
  as well as by a thought; from level 2 on only a thought is right; the check can go at every level without
  losing accuracy. `bench.task_frontier` measures this frontier on the warm start.
- The levels are graded like MATH's, for FAST-GRPO's difficulty split and its length claim per level.

The split: `split="eval"` is the fifth of prompts whose CRC-32 is divisible by 5, `split="train"` the rest.

The reward rule is the digit-sum task's (`trainer.tasks.synthetic.check`): the answer is the first digit after
`<answer>` (the pieces of a term token are its letter and its digit, so a thought's digits are never read as the
answer), and a response is formatted when its answer is closed, `<answer> d </answer>` with nothing after it.
"""

from __future__ import annotations

import random
import zlib

from trainer.tasks.synthetic import ANSWER_CLOSE, ANSWER_OPEN, DIGITS, THINK_CLOSE, THINK_OPEN, Verdict, check

__all__ = [
    "LETTERS",
    "MAX_LEVEL",
    "NAME",
    "VERSION",
    "VOCAB",
    "Verdict",
    "check",
    "make_dataset",
    "solution",
    "split_of",
    "warm_start_examples",
]

NAME = "chain"
VERSION = "chain-v6"
"""Changes whenever prompts or worked solutions change, so that an old warm-start cache is never reused."""
MAX_LEVEL = 16
"""Levels are 1 .. MAX_LEVEL terms."""
LETTERS = "abcdefghijklmnop"
TERMS = tuple(f"{letter}{d}" for letter in LETTERS for d in range(1, 10))
VERIFY = "wait"
VOCAB = (*DIGITS, "=", THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, VERIFY, *TERMS)
"""The task's words, in token-id order after the special tokens (see `trainer.model.tiny.build_tokenizer`)."""
SPLITS = ("train", "eval")

assert len(LETTERS) == MAX_LEVEL


def split_of(prompt: str) -> str:
    """ "eval" for the fifth of prompts whose CRC-32 is divisible by 5, else "train"."""
    return "eval" if zlib.crc32(prompt.encode()) % 5 == 0 else "train"


def _prompt(digits: list[int]) -> str:
    return " ".join(f"{LETTERS[i]}{d}" for i, d in enumerate(digits)) + " ="


def make_dataset(size: int, seed: int, *, split: str = "train", weights: list[float] | None = None) -> list[dict]:
    """`size` problems of `split`, deterministic for `seed`; the level of each is uniform in 1..MAX_LEVEL, or drawn
    with `weights` (one per level).

    Returns:
        `[{"prompt": "a3 b5 c2 =", "answer": "0", "level": 3, "digits": [3, 5, 2]}, ...]`.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    levels = list(range(1, MAX_LEVEL + 1))
    rng = random.Random(f"chain:{seed}:{split}")
    items = []
    while len(items) < size:
        level = rng.choices(levels, weights)[0] if weights else rng.randint(1, MAX_LEVEL)
        digits = [rng.randint(1, 9) for _ in range(level)]
        prompt = _prompt(digits)
        if split_of(prompt) == split:
            items.append({"prompt": prompt, "answer": str(sum(digits) % 10), "level": level, "digits": digits})
    return items


def solution(digits: list[int], *, think: bool, verify: int = 0) -> str:
    """A correct response: the direct answer, or the thought, with the final sum checked `verify` times after `wait`
    (0: no check; at most the number of terms)."""
    answer = f"{ANSWER_OPEN} {sum(digits) % 10} {ANSWER_CLOSE}"
    if not think:
        return answer
    steps, total = [], 0
    for i, d in enumerate(digits):
        total = (total + d) % 10
        steps.append(f"{LETTERS[i]}{d} {total}")
    k = max(0, min(int(verify), len(steps)))
    padding = [VERIFY, *[str(total)] * k] if k else []
    return " ".join([THINK_OPEN, *steps, *padding, THINK_CLOSE, answer])


WARM_START_WEIGHTS = [1.0] * MAX_LEVEL
"""Level weights of the warm start's examples (uniform, as the task's). Tried and left: chains of 9+ terms made rare
(weights 0.15 and 0.05) gave a warm start that was either right everywhere or wrong everywhere past 4 terms."""


def warm_start_examples(n: int, *, seed: int, direct: float, filler: float) -> list[tuple[str, str]]:
    """`n` (prompt, response) pairs on the training split for the warm start, levels drawn by `WARM_START_WEIGHTS`:
    a direct answer with probability `direct`, else a thought, checked with probability `filler`, a number of times
    uniform in 1..level."""
    rng = random.Random(f"chain-warm-start:{seed}")
    pairs = []
    for item in make_dataset(n, seed, split="train", weights=WARM_START_WEIGHTS):
        think = rng.random() >= direct
        verify = rng.randint(1, item["level"]) if think and rng.random() < filler else 0
        pairs.append((item["prompt"], solution(item["digits"], think=think, verify=verify)))
    return pairs
