"""The math grader: extract the final answer, check it against the reference, and check the think/answer format.

`math_reward(response, reference)` gives one response's correctness and format bit; `score_batch` gives a chunk's as
the bool tensors `fastslow.thinking_reward` takes. Correctness is decided in two stages:

1. Normalised strings (`"exact"`): delimiters (`$`, `\\[ \\]`, a whole-answer `\\boxed{}`), whole-answer emphasis and
   choice wrappers (`\\textbf{(073)}` -> `073`, `\\text{(B)}` -> `B`, also `\\mathbf`, `\\mathrm`, `\\textit`, `\\emph`
   and a parenthesised single letter or number), `\\left`/`\\right`, thin spaces, `\\dfrac`, degrees, a trailing unit
   in `\\text{}`, `%`, thousands separators, a trailing full stop and all white space are dropped, then the strings
   are compared; plain numbers (`0.5`, `1/2`, `\\frac{1}{2}`, `1.5e3`, `073`) are compared as exact fractions, so
   AIME's zero-padded `073` is `73`. Cheap and needs no sympy.
2. Symbolic (`"symbolic"` / `"mismatch"`): math-verify, in a pool of verifier subprocesses (`trainer.reward.verifier`)
   that enforces `timeout_s` from any thread, even on sympy stuck in C code (`"timeout"`). Numbers match when they
   agree to 6 decimals (math-verify's `float_rounding`): `0.333333` matches `\\frac{1}{3}`, `0.33` does not.

Answer choices given with their label (`(B) 5`, `\\text{(B) } 5`, `\\textbf{(B)}\\ 5`) are compared part by part
instead: the letters if both sides give one, the values (both stages) if both give one; correct iff at least one
part is shared and every shared part agrees. So `(B) 5` matches `B` and `5` but not `A`, `(A) 5` or `(B) 6`, and a
bare letter never matches a number.

Decisions and departures (the first three as common graders do):
- Degrees are dropped, not converted: `120^\\circ` matches `120` both ways (math-verify does the same, and the
  Minerva normalisation that verl's `math_dapo` uses removes `^\\circ`); `60^\\circ` does not match `\\frac{\\pi}{3}`.
- A trailing unit in `\\text{}` is ignored (`5\\text{ cm}` matches `5`), as are `%` (`50\\%` matches `50` and `0.5`)
  and a leading `x=` (`x=3` matches `3`, math-verify's equation handling).
- Choice letters, and single letters generally, compare case-blind (`b` matches `\\text{(B)}`), as in math-verify.
- A text wrapper holding a word is not unwrapped for math-verify (`\\text{east}` stays one symbol there; bare,
  `east` parses as `e*a*s*t`, which `seat` would equal); the exact stage still equates `\\text{east}` and `east`.
- Only a choice label in parentheses starts a labelled choice: `B. 5` or `B) 5` is compared as written.

No exception escapes the checks for any input string: failures are verdicts (`"error"`), timeouts are verdicts
(`"timeout"`), and every verdict is counted in `REASON_COUNTS`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from fastslow._checks import check_finite_number
from trainer.reward.verifier import start_verifier, stop_verifier, symbolic_check, worker_count

__all__ = [
    "MAX_ANSWER_CHARS",
    "REASON_COUNTS",
    "MathScore",
    "Verdict",
    "answers_match",
    "check_answer",
    "extract_answer",
    "extract_boxed",
    "format_ok",
    "math_reward",
    "score_batch",
    "start_verifier",
    "stop_verifier",
]

REASONS = ("exact", "symbolic", "mismatch", "no_answer", "timeout", "error")
MAX_ANSWER_CHARS = 1000
"""Longer answers (or references) are only compared as stripped strings: no normalisation, no sympy."""
REASON_COUNTS: Counter[str] = Counter()
"""How many checks ended with each reason since import (thread-safe updates; read it, do not write it)."""

_COUNT_LOCK = threading.Lock()
_BOX_LEVELS = 8  # `\boxed{\boxed{x}}` is unwrapped this deep at most, keeping extraction linear

# ---------------------------------------------------------------------------------------------------- extraction

_BOX_TOKENS = re.compile(r"(?P<box>\\(?:boxed|fbox)\s{0,16}\{)|(?P<esc>\\.)|(?P<open>\{)|(?P<close>\})", re.DOTALL)


def _last_box(text: str) -> tuple[int, int, int] | None:
    """(opener start, content start, content end) of the outermost box that opens last; None if none or unclosed."""
    depth = 0
    opener = start = 0
    last = None
    for m in _BOX_TOKENS.finditer(text):  # one pass; escaped braces (`\{`, `\}`) and `\\` never count
        kind = m.lastgroup
        if depth == 0:
            if kind == "box":
                depth, opener, start = 1, m.start(), m.end()
        elif kind in ("box", "open"):
            depth += 1
        elif kind == "close":
            depth -= 1
            if depth == 0:
                last = (opener, start, m.start())
    return None if depth else last


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\boxed {...}`, `\\fbox{...}`) in `text`, braces balanced.

    "Last" is the outermost box that opens last; a box nested in it is part of its content, except that a box whose
    whole content is another box is unwrapped (`\\boxed{\\boxed{5}}` -> `5`). Escaped braces `\\{ \\}` are content,
    not grouping (`\\boxed{\\{1,2\\}}` -> `\\{1,2\\}`). If that last box never closes (a truncated response), the
    result is None rather than an earlier box. Linear time in `len(text)`.

    Returns:
        The content, not stripped; None if there is no complete box or `text` is not a string.
    """
    if not isinstance(text, str):
        return None
    span = _last_box(text)
    if span is None:
        return None
    content = text[span[1] : span[2]]
    for _ in range(_BOX_LEVELS):
        inner = _last_box(content)
        if inner is None or content[: inner[0]].strip() or content[inner[2] + 1 :].strip():
            break
        content = content[inner[1] : inner[2]]
    return content


def extract_answer(response: str) -> str | None:
    """The final answer of a response: the last `\\boxed{}`, else the last `<answer>...</answer>` block.

    Inside an `<answer>` block a box wins over the rest of its text. The result is stripped of white space; an empty
    box gives `""` (an answer that is empty, not a missing one).

    Returns:
        The answer text, or None when the response has neither a complete box nor a closed answer block.
    """
    if not isinstance(response, str):
        return None
    boxed = extract_boxed(response)
    if boxed is not None:
        return boxed.strip()
    end = response.rfind("</answer>")  # rfind, not a lazy regex: linear even on a megabyte of open tags
    start = response.rfind("<answer>", 0, max(end, 0))
    if end < 0 or start < 0:
        return None
    inner = response[start + len("<answer>") : end]
    boxed = extract_boxed(inner)
    return (inner if boxed is None else boxed).strip()


def format_ok(response: str, *, think_opened: bool = False) -> bool:
    """The think/answer layout of FAST's `fmt` term: one think block, then the answer.

    The rule, exactly:
    1. `</think>` occurs exactly once. `<think>` occurs exactly once and, leading white space aside, opens the
       response; with `think_opened=True` (the chat template already emitted `<think>`, as R1-distilled models'
       do) it must not occur at all. The think block may be empty: fast thinking is allowed to skip it.
    2. After `</think>` comes the answer, either
       a. `<answer>X</answer>` with only white space around it, X not blank, and no other answer tag anywhere; or
       b. no answer tag anywhere, and any text holding a complete, non-empty box (`extract_boxed`).
    Anything else, including non-string input, is False.
    """
    if not isinstance(response, str) or response.count("</think>") != 1:
        return False
    head, _, tail = response.partition("</think>")
    if think_opened:
        if "<think>" in response:
            return False
    elif response.count("<think>") != 1 or not head.lstrip().startswith("<think>"):
        return False
    n_open, n_close = response.count("<answer>"), response.count("</answer>")
    if n_open == 0 and n_close == 0:
        boxed = extract_boxed(tail)
        return boxed is not None and bool(boxed.strip())
    if n_open != 1 or n_close != 1:
        return False
    tail = tail.strip()
    if not (tail.startswith("<answer>") and tail.endswith("</answer>")):
        return False
    return bool(tail[len("<answer>") : -len("</answer>")].strip())


# ------------------------------------------------------------------------------------------------- normalisation

_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:(?:,|\{,\})\d{3})+(?:\.\d+)?")
_LEFT_RIGHT_DOT = re.compile(r"\\(?:left|right)\s*\.")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_THIN_SPACE = re.compile(r"(?<!\\)\\[!,;:> ]")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°")
_TRAILING_UNIT = re.compile(
    r"(?<=[\d}.])\s*\\(?:text|textrm|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z\s.]*\}(?:\s*\^\s*\{?\d\}?)?\s*$"
)
# Text and emphasis commands: a whole-answer one is unwrapped (`_unwrap`), and any flat one is dropped from the key.
_EMPHASIS = r"\\(?:text(?:bf|it|rm|sf|normal)?|math(?:bf|rm|it|sf)|emph|mbox|boldsymbol|bm)"
_WRAPPER = re.compile(_EMPHASIS + r"\s*\{")
_TEXT = re.compile(_EMPHASIS + r"\s*\{([^{}]*)\}")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # two letters that are not a command name
_PLAIN = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_PAREN_ATOM = re.compile(r"\(\s*([A-Z]|" + _PLAIN + r")\s*\)")  # `(B)`, `(073)`: a choice label or emphasis
_CHOICE = re.compile(  # `(B) 5`, `\text{(B) } 5`, `\textbf{(B)}\ 5`: an answer choice's letter, then its value
    r"(?:" + _EMPHASIS + r"\s*\{\s*\(\s*(?P<wrapped>[A-Z])\s*\)\s*\}|\(\s*(?P<bare>[A-Z])\s*\))"
    r"(?P<sep>(?:\s|~|\\[ ,;:]|\\q?quad(?![A-Za-z]))*)(?P<value>.*)",
    re.DOTALL,
)
_GROUP_TOKENS = re.compile(r"\\.|\{|\}", re.DOTALL)
_PERCENT = re.compile(r"\\?%")
_WHITE = re.compile(r"\s+")
_NUMBER = re.compile(_PLAIN + r"(?:[eE][+-]?\d{1,3})?")  # exponent capped: 1e999999999 stays text
_FRACTION = re.compile(r"([+-]?)(?:\\frac\{([+-]?\d{1,30})\}\{(\d{1,30})\}|(\d{1,30})/(\d{1,30}))")


def _group_end(s: str, start: int) -> int | None:
    """The index of the `}` closing the group whose content starts at `start`; None if it never closes."""
    depth = 1
    for m in _GROUP_TOKENS.finditer(s, start):  # escaped braces and `\\` never count
        if m.group() == "{":
            depth += 1
        elif m.group() == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return None


def _unwrap(s: str) -> str:
    """The answer without whole-answer emphasis and choice wrappers: `\\textbf{(073)}` -> `073`, `\\text{(B)}` -> `B`.

    A wrapper whose content holds a word stays (`\\text{east}`): bare, math-verify reads `east` as the product
    `e*a*s*t`, which an anagram would equal. The key drops it anyway (`_TEXT`), so `\\text{east}` still equals `east`.
    """
    for _ in range(_BOX_LEVELS):
        m = _WRAPPER.match(s)
        if m:
            end = _group_end(s, m.end())
            inner = "" if end is None or s[end + 1 :].strip() else s[m.end() : end].strip()
            if inner and not _WORD.search(inner):
                s = inner
                continue
        m = _PAREN_ATOM.fullmatch(s)
        if not m:
            return s
        s = m.group(1)
    return s


def _drop_stop(s: str) -> str:
    return s[:-1].rstrip() if s.endswith(".") and not s.endswith("..") else s


def _light(s: str) -> str:
    """Normalisation safe to hand to math-verify: delimiters, a whole-answer box or wrapper, full stop, separators."""
    s = s.strip().replace("\\$", "").replace("$", "").strip()
    for left, right in (("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(left) and s.endswith(right) and len(s) >= 4:
            s = s[2:-2].strip()
    if s.startswith(("\\boxed", "\\fbox")):
        span = _last_box(s)
        if span is not None and span[0] == 0 and not s[span[2] + 1 :].strip():
            s = (extract_boxed(s) or "").strip()
    s = _drop_stop(_unwrap(_drop_stop(s)))  # `\textbf{5}.` and `\textbf{5.}`
    if _THOUSANDS.fullmatch(s):
        s = s.replace("{,}", "").replace(",", "")
    return re.sub(r"(?<!\\)%", r"\\%", s)


def _key(light: str) -> str:
    """The exact-comparison key of a `_light` string: layout-only LaTeX, units, `%` and white space dropped."""
    s = re.sub(r"\\[dt]frac", r"\\frac", light)
    s = _LEFT_RIGHT.sub("", _LEFT_RIGHT_DOT.sub("", s))
    s = _DEGREES.sub("", _THIN_SPACE.sub(" ", s))
    s = _TEXT.sub(r"\1", _TRAILING_UNIT.sub("", s))
    return _WHITE.sub("", _PERCENT.sub("", s))


def _choice(light: str) -> tuple[str, str] | None:
    """(letter, value) of an answer choice written with its label, `(B) 5` -> ('B', '5'); value '' if only a label.

    A bare `(B)` needs white space (or `~`, `\\ `, `\\quad`) before a value, so `(A)(B)` is no choice.
    """
    m = _CHOICE.fullmatch(light)
    if m is None or (m.group("bare") and m.group("value") and not m.group("sep")):
        return None
    return m.group("wrapped") or m.group("bare"), m.group("value").strip()


def _number(key: str) -> Fraction | None:
    """The exact value of a plain number key (`-0.5`, `1.5e3`, `3/4`, `\\frac{3}{4}`), else None."""
    if len(key) > 80:
        return None
    try:
        if _NUMBER.fullmatch(key):
            return Fraction(key)
        m = _FRACTION.fullmatch(key)
        if m:
            num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
            value = Fraction(int(num), int(den))
            return -value if m.group(1) == "-" else value
    except (ValueError, ZeroDivisionError, OverflowError):
        pass
    return None


# ---------------------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Verdict:
    """The outcome of one answer check."""

    correct: bool
    reason: str
    """'exact' | 'symbolic' (correct); 'mismatch' | 'no_answer' | 'timeout' | 'error' (not)."""


@dataclass(frozen=True)
class MathScore:
    """One response's math reward inputs."""

    correct: bool
    formatted: bool
    """`format_ok(response)`: FAST's `fmt` term."""
    answer: str | None
    """The extracted answer (`extract_answer`), None when there is none."""
    reason: str
    """The `Verdict` reason of the correctness check."""


def _count(verdict: Verdict) -> Verdict:
    with _COUNT_LOCK:
        REASON_COUNTS[verdict.reason] += 1
    return verdict


def _check_timeout(timeout_s: float) -> float:
    if check_finite_number("timeout_s", timeout_s) <= 0:
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
    return float(timeout_s)


def check_answer(predicted: str, reference: str, *, timeout_s: float = 2.0) -> Verdict:
    """Checks an extracted answer against the reference: normalised strings first, then math-verify.

    Args:
        predicted: the model's answer (e.g. from `extract_answer`), not the whole response.
        reference: the gold answer, LaTeX or plain (`$...$` and `\\boxed{}` around it are fine).
        timeout_s: wall-clock limit of the symbolic stage, enforced from any thread (`trainer.reward.verifier`).

    Returns:
        A `Verdict`; an empty prediction is `'no_answer'`, an empty reference `'error'`. Never raises for any string
        input (only for a bad `timeout_s`).
    """
    timeout_s = _check_timeout(timeout_s)
    try:
        return _count(_check(predicted, reference, timeout_s))
    except Exception:  # a bug in the normalisation must cost one reward, not the training step
        logging.getLogger(__name__).debug("answer check failed", exc_info=True)
        return _count(Verdict(False, "error"))


def _check(predicted: str, reference: str, timeout_s: float, *, choices: bool = True) -> Verdict:
    if not isinstance(predicted, str) or not predicted.strip():
        return Verdict(False, "no_answer")
    if not isinstance(reference, str) or not reference.strip():
        return Verdict(False, "error")
    if len(predicted) > MAX_ANSWER_CHARS or len(reference) > MAX_ANSWER_CHARS:
        same = predicted.strip() == reference.strip()
        return Verdict(same, "exact" if same else "mismatch")
    pred, gold = _light(predicted), _light(reference)
    if not pred:
        return Verdict(False, "no_answer")
    if not gold:  # a reference of only delimiters, e.g. "$$"
        return Verdict(False, "error")
    pred_key, gold_key = _key(pred), _key(gold)
    if pred_key == gold_key:
        return Verdict(True, "exact")
    pred_num, gold_num = _number(pred_key), _number(gold_key)
    if pred_num is not None and pred_num == gold_num:
        return Verdict(True, "exact")
    pred_choice, gold_choice = (_choice(pred), _choice(gold)) if choices else (None, None)
    if pred_choice is not None or gold_choice is not None:
        return _check_choice(
            pred_choice or _as_choice(pred, pred_key), gold_choice or _as_choice(gold, gold_key), timeout_s
        )
    reason = symbolic_check(gold, pred, timeout_s)
    return Verdict(reason == "symbolic", reason)


def _as_choice(light: str, key: str) -> tuple[str, str]:
    """An answer that is no labelled choice, as one: a single letter is a label (`B`), anything else a value."""
    return (key, "") if len(key) == 1 and key.isascii() and key.isalpha() else ("", light)


def _check_choice(pred: tuple[str, str], gold: tuple[str, str], timeout_s: float) -> Verdict:
    """Compares the parts of two (letter, value) choices that both give; correct iff there is one and all agree.

    So `(B) 5` matches `B`, `(B)`, `5` and `(B) 5`, not `(A) 5`, `(B) 6` or `A`, and a bare letter never matches a
    number. Letters compare case-blind, as math-verify compares single letters.
    """
    verdict = None
    if pred[0] and gold[0]:
        same = pred[0].upper() == gold[0].upper()
        verdict = Verdict(same, "exact" if same else "mismatch")
        if not same:
            return verdict
    if pred[1] and gold[1]:
        verdict = _check(pred[1], gold[1], timeout_s, choices=False)  # a value holds no second label
    return verdict or Verdict(False, "mismatch")


def answers_match(predicted: str, reference: str, *, timeout_s: float = 2.0) -> bool:
    """True iff `check_answer(predicted, reference)` says correct; a timeout or error is False."""
    return check_answer(predicted, reference, timeout_s=timeout_s).correct


def math_reward(response: str, reference: str, *, timeout_s: float = 2.0, think_opened: bool = False) -> MathScore:
    """Scores one response: extracts its answer, checks it against `reference`, and checks its format.

    Args:
        response: the generated text.
        reference: the gold answer.
        timeout_s: limit of the symbolic check (`check_answer`).
        think_opened: the prompt already opened the think block (`format_ok`).
    """
    timeout_s = _check_timeout(timeout_s)
    answer = extract_answer(response)
    verdict = (
        _count(Verdict(False, "no_answer")) if answer is None else check_answer(answer, reference, timeout_s=timeout_s)
    )
    return MathScore(verdict.correct, format_ok(response, think_opened=think_opened), answer, verdict.reason)


def score_batch(
    responses: Sequence[str],
    references: Sequence[str],
    *,
    timeout_s: float = 2.0,
    think_opened: bool = False,
) -> tuple[Tensor, Tensor, list[str]]:
    """Scores a chunk of responses for `fastslow.thinking_reward`.

    Responses are checked concurrently, one thread per verifier worker, so the symbolic checks use the whole pool.

    Args:
        responses: `N` generated texts.
        references: `N` gold answers, `references[i]` for `responses[i]`.
        timeout_s, think_opened: as in `math_reward`.

    Returns:
        `(correct, formatted, reasons)`: `[N]` bool CPU tensors and the `N` verdict reasons.
    """
    timeout_s = _check_timeout(timeout_s)
    for name, seq in (("responses", responses), ("references", references)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
            raise ValueError(f"{name} must be a sequence of strings, got {type(seq).__name__}")
    if len(references) != len(responses):
        raise ValueError(f"references has {len(references)} items but responses has {len(responses)}")
    score = lambda pair: math_reward(pair[0], pair[1], timeout_s=timeout_s, think_opened=think_opened)
    pairs = list(zip(responses, references))
    threads = min(len(pairs), worker_count())
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="math_reward") as ex:
            scores = list(ex.map(score, pairs))
    else:
        scores = [score(p) for p in pairs]
    correct = torch.tensor([s.correct for s in scores], dtype=torch.bool)
    formatted = torch.tensor([s.formatted for s in scores], dtype=torch.bool)
    return correct, formatted, [s.reason for s in scores]
