"""Math answer rewards: extraction, normalised and symbolic checks, format rule, timeouts off the main thread, batches.

One verifier worker (sympy imported once) serves the whole file; the timeout and crash tests swap in a pool whose
worker runs a stand-in check from a small module written to a temporary folder, so they never pay sympy's import.
"""

from __future__ import annotations

import textwrap
import threading
import time

import pytest
import torch

from fastslow.thinking_reward import thinking_reward
from trainer.reward import verifier
from trainer.reward.math_grader import (
    REASON_COUNTS,
    MathScore,
    Verdict,
    answers_match,
    check_answer,
    extract_answer,
    extract_boxed,
    format_ok,
    math_reward,
    score_batch,
)


def boxed(answer: str) -> str:
    """A well-formatted response whose final answer is `answer`."""
    return f"<think>Let me work it out.</think> The final answer is $\\boxed{{{answer}}}$."


# (response, reference, correct). Debatable choices, as decided in trainer/reward/math_grader.py's docstring:
# numbers agree to 6 decimals (math-verify's float_rounding), so 0.333333 ~ 1/3 but 0.33 and 3.14 do not;
# a percentage reference matches both 50 and 0.5; a trailing LaTeX unit and degrees are ignored; `x=3` answers `3`.
TABLE = [
    (boxed(r"\frac{1}{2}"), "0.5", True),
    (boxed("0.5"), r"\frac{1}{2}", True),
    (boxed("1/2"), r"\frac{1}{2}", True),
    (boxed(r"\dfrac{1}{2}"), r"\frac12", True),
    (boxed(r"\tfrac{3}{4}"), "0.75", True),
    (boxed(r"-\frac{1}{2}"), "-0.5", True),
    (boxed("-3"), "-3", True),
    (boxed("3"), "-3", False),
    (boxed(r"\left( 1, 2 \right)"), "(1,2)", True),
    (boxed(r"2\sqrt{2}"), r"\sqrt{8}", True),
    (boxed(r"\frac{\pi}{2}"), r"\pi/2", True),
    (boxed(r"\pi"), r"\pi", True),
    (boxed("3.14"), r"\pi", False),
    (boxed(r"50\%"), "50", True),
    (boxed("0.5"), r"50\%", True),
    (boxed(r"5\text{ cm}"), "5", True),
    (boxed("5"), r"5 \text{cm}^2", True),
    (boxed(r"90^\circ"), "90", True),
    (boxed(r"\$12.50"), "12.5", True),
    (boxed("(1, 2]"), "(1,2]", True),
    (boxed("[1, 2]"), "(1,2]", False),
    (boxed(r"\{1,2\}"), r"\{2, 1\}", True),
    (boxed(r"\{1,2\}"), r"\{1,2,3\}", False),
    (boxed("(1, 2)"), "(2, 1)", False),
    (boxed("x=3"), "3", True),
    (boxed("x^2+2x+1"), "(x+1)^2", True),
    (boxed(r"1.5\times 10^{3}"), "1500", True),
    (boxed("1.5e3"), "1500", True),
    (boxed("1,000"), "1000", True),
    (boxed("1000"), "1{,}000", True),
    (boxed("0.33"), r"\frac{1}{3}", False),
    (boxed("0.333333"), r"\frac{1}{3}", True),
    (boxed(r"\text{(B)}"), "B", True),
    (boxed("1, 2, 3"), "3", False),  # a list is not its last element
    (boxed(""), "5", False),
    (boxed("}{"), "5", False),
    (boxed("é中😀\ud800"), "5", False),
    ("The answer is 5.", "5", False),  # no box, no answer tag: no answer
    (r"<think>so</think> \boxed{5", "5", False),  # unbalanced: truncated
    (r"<think>so</think> \boxed{\boxed{5}}", "5", True),
    (r"\boxed{4} wait, no: \boxed{5}", "5", True),
    (r"\boxed{5} wait, no: \boxed{4}", "5", False),
    ("<think>hmm</think><answer>7</answer>", "7", True),
    ("<think>hmm</think><answer>The answer is 7</answer>", "7", True),
    (r"<answer>so \boxed{7}</answer>", r"$\boxed{7}$", True),
]


@pytest.mark.parametrize(("response", "reference", "correct"), TABLE)
def test_table(response: str, reference: str, correct: bool) -> None:
    score = math_reward(response, reference)
    assert isinstance(score, MathScore)
    assert score.correct is correct, score
    assert score.reason in ("exact", "symbolic") if correct else score.reason in ("mismatch", "no_answer")


# (predicted, reference, correct): answer-choice and emphasis wrappers, as decided in math_reward's docstring.
WRAPPERS = [
    (r"\textbf{(073)}", "073", True),  # AIME24's own solution: emphasis, parentheses and a zero pad
    (r"\boxed{\textbf{(073)}}", "73", True),
    (r"\textbf{(113) }", "113", True),
    (r"\mathbf{127} ", "127", True),
    (r"\mathrm{\frac{1}{2}}", "0.5", True),
    (r"\textit{12}", "12", True),
    (r"\emph{x}", "x", True),
    (r"\textbf{5}.", "5", True),
    (r"\textbf{1,000}", "1000", True),
    (r"\mathbf{(-5)}", "-5", True),
    (r"\textbf{(1,2)}", "(1,2)", True),
    ("073", "73", True),  # AIME answers are integers 0-999, often zero-padded
    ("073", "730", False),
    ("(B)", "B", True),
    (r"\textbf{(B)}", r"\text{(B)}", True),
    (r"\mathrm{(E)}", "E", True),
    ("b", r"\text{(B)}", True),  # single letters compare case-blind, as in math-verify
    (r"\text{(B)}", "C", False),
    # A bare letter never matches a number.
    ("B", "2", False),
    (r"\text{(B)}", "2", False),
    ("2", r"\textbf{(B)}", False),
    # A labelled choice: the parts both sides give must agree, and at least one must be shared.
    (r"\text{(A) } 5", "5", True),
    (r"\text{(A) } 5", "A", True),
    (r"\text{(A) } 5", r"\text{(A)}", True),
    (r"\textbf{(C)}\ \frac{1}{2}", "0.5", True),
    (r"\textbf{(C) }5", r"\text{(C) } 5", True),
    ("(A) 5", "(A) 5", True),
    ("A", r"\text{(A) } 5", True),
    ("5", r"\text{(A) } 5", True),
    (r"\text{(A) } 5", "B", False),
    (r"\text{(A) } 5", "6", False),
    (r"\text{(A) } 5", r"\text{(B) } 5", False),
    ("(A) 5", "(A) 6", False),
    ("B", r"\text{(A) } 5", False),
    ("(A)(B)", "A", False),  # no space after the label: a product, not a choice
    # Words stay one symbol for math-verify, not a product of letters that an anagram would equal.
    (r"\text{seat}", r"\text{east}", False),
    (r"\textbf{seat}", "east", False),
    (r"\textbf{east}", r"\text{east}", True),
    # Degrees are dropped, not converted to radians.
    ("120", r"120^\circ", True),
    (r"120^{\circ}", "120", True),
    (r"60^\circ", r"\frac{\pi}{3}", False),
]


@pytest.mark.parametrize(("predicted", "reference", "correct"), WRAPPERS)
def test_wrappers(predicted: str, reference: str, correct: bool) -> None:
    verdict = check_answer(predicted, reference)
    assert verdict.correct is correct, verdict
    assert verdict.reason in (("exact", "symbolic") if correct else ("mismatch",))


def test_wrapped_box_in_a_response() -> None:
    response = r"so $d = \boxed{\textbf{(073)}}.$"  # AIME24's own solution, as written
    assert math_reward(response, "073") == MathScore(True, False, r"\textbf{(073)}", "exact")


def test_reasons_and_counter() -> None:
    before = REASON_COUNTS.copy()
    assert check_answer(r"5\text{ cm}", "5") == Verdict(True, "exact")
    assert check_answer(r"2\sqrt{2}", r"\sqrt{8}") == Verdict(True, "symbolic")
    assert check_answer("4", "5") == Verdict(False, "mismatch")
    assert check_answer("  ", "5") == Verdict(False, "no_answer")
    assert check_answer("5", "") == Verdict(False, "error")
    assert check_answer("5", "$$") == Verdict(False, "error")
    assert math_reward("no answer here", "5").reason == "no_answer"
    gained = REASON_COUNTS - before
    assert gained == {"exact": 1, "symbolic": 1, "mismatch": 1, "no_answer": 2, "error": 2}
    assert answers_match("0.5", r"\frac{1}{2}") and not answers_match("0.4", r"\frac{1}{2}")


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_timeout(bad: object) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        check_answer("1", "1", timeout_s=bad)


def test_non_strings_are_verdicts() -> None:
    assert check_answer(None, "5") == Verdict(False, "no_answer")  # type: ignore[arg-type]
    assert check_answer("5", None) == Verdict(False, "error")  # type: ignore[arg-type]
    assert math_reward(None, "5") == MathScore(False, False, None, "no_answer")  # type: ignore[arg-type]


HUGE = 1_000_000
HUGE_RESPONSES = {
    "long_box": "<think>x</think>\\boxed{" + "1" * HUGE + "}",
    "prose": "x" * HUGE,
    "open_braces": "{" * HUGE,
    "open_boxes": "\\boxed{" * (HUGE // 7),
    "backslashes": "\\" * HUGE,
    "spaces_box": "\\boxed" + " " * HUGE + "{5}",
    "answer_tags": "<answer>" * (HUGE // 8),
    "think_tags": "<think></think>" * (HUGE // 15),
    "nested": "\\boxed{" * 50_000 + "5" + "}" * 50_000,
}


@pytest.mark.parametrize("name", HUGE_RESPONSES)
def test_huge_response_is_fast_and_false(name: str) -> None:
    response = HUGE_RESPONSES[name]
    start = time.perf_counter()
    score = math_reward(response, "7")
    format_ok(response)
    assert time.perf_counter() - start < 2.0
    assert not score.correct


def test_huge_answer_skips_sympy() -> None:
    answer = "1" * HUGE
    assert check_answer(answer, "5") == Verdict(False, "mismatch")
    assert check_answer(answer, answer) == Verdict(True, "exact")


# ---------------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{a\}b}", r"a\}b"),  # an escaped brace does not close the box
        (r"\boxed{1 \\ 2}", r"1 \\ 2"),  # `\\` is a line break, and the brace after it is real
        (r"\boxed {42}", "42"),
        (r"\fbox{42}", "42"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\boxed{\boxed{3}}}", "3"),
        (r"\boxed{a + \boxed{3}}", r"a + \boxed{3}"),  # the outer box is the answer
        (r"\boxed{1} then \boxed{2", None),  # the last box is truncated: no earlier fallback
        (r"\boxed{", None),
        (r"\boxed5", None),
        (r"\boxedx{5}", None),
        ("no box", None),
        (r"\boxed{}", ""),
        ("", None),
        (None, None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer> 12 </answer>", "12"),
        (r"<answer>so \boxed{12} ok</answer>", "12"),
        (r"\boxed{3} <answer>4</answer>", "3"),  # a box wins over answer tags
        ("<answer>1</answer> <answer>2</answer>", "2"),
        ("<answer>1", None),
        ("</answer><answer>", None),
        (r"\boxed{ 5 }", "5"),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    ("response", "ok"),
    [
        ("<think>a</think><answer>5</answer>", True),
        ("\n <think>\na\n</think>\n<answer> 5 </answer>\n", True),
        ("<think></think><answer>5</answer>", True),  # fast thinking may skip the thought
        (r"<think>a</think> so the answer is $\boxed{5}$.", True),
        ("<answer>5</answer>", False),  # missing think
        (r"\boxed{5}", False),
        ("<think>a</think>", False),  # missing answer
        ("<think>a</think><answer> </answer>", False),
        (r"<think>a</think> \boxed{}", False),
        (r"<think>a</think> \boxed{5", False),
        ("<think>a</think><think>b</think><answer>5</answer>", False),  # two thinks
        ("<think>a<think>b</think><answer>5</answer>", False),
        ("<answer>5</answer><think>a</think>", False),  # answer before think
        (r"<answer>5</answer><think>a</think> \boxed{5}", False),
        ("intro <think>a</think><answer>5</answer>", False),
        ("<think>a</think>so<answer>5</answer>", False),
        ("<think>a</think><answer>5</answer> and more", False),
        ("<think>a</think><answer>5</answer><answer>6</answer>", False),
        ("<think>a</think>a</think><answer>5</answer>", False),
        ("<think>a</think><answer>5", False),
        ("", False),
        (None, False),
        ("\x00\ud800😀<think>", False),
    ],
)
def test_format_ok(response: str, ok: bool) -> None:
    assert format_ok(response) is ok


def test_format_ok_think_opened() -> None:
    assert format_ok("a</think><answer>5</answer>", think_opened=True)
    assert format_ok(r"a</think> \boxed{5}", think_opened=True)
    assert not format_ok("<think>a</think><answer>5</answer>", think_opened=True)
    assert not format_ok("a<answer>5</answer>", think_opened=True)


# ------------------------------------------------------------------------------------------------ threads, batches


def test_works_off_the_main_thread() -> None:
    verdicts: list[Verdict] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            verdicts.append(check_answer(r"2\sqrt{2}", r"\sqrt{8}"))
            verdicts.append(check_answer("7", r"\sqrt{8}"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert verdicts.count(Verdict(True, "symbolic")) == 3
    assert verdicts.count(Verdict(False, "mismatch")) == 3


def test_score_batch_feeds_thinking_reward() -> None:
    responses = [boxed("1/2"), boxed("3"), "<think>x</think> 5", r"\boxed{5}"]
    references = ["0.5", "4", "5", "5"]
    correct, formatted, reasons = score_batch(responses, references)
    assert correct.dtype == torch.bool and formatted.dtype == torch.bool
    assert correct.shape == formatted.shape == (4,)
    assert correct.tolist() == [True, False, False, True]
    assert formatted.tolist() == [True, True, False, False]
    assert reasons == ["exact", "mismatch", "no_answer", "exact"]
    out = thinking_reward(torch.tensor([10.0, 20.0, 30.0, 40.0]), correct, formatted, group_size=2)
    assert out.rewards.shape == (4,)


def test_score_batch_empty_and_bad_lengths() -> None:
    correct, formatted, reasons = score_batch([], [])
    assert correct.shape == formatted.shape == (0,) and correct.dtype == torch.bool and reasons == []
    with pytest.raises(ValueError, match="references"):
        score_batch(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="responses"):
        score_batch("ab", ["a", "b"])


# ------------------------------------------------------------------------------------ timeouts and dead workers

STAND_INS = textwrap.dedent(
    """
    import os, signal, time

    def sleepy(gold, pred):  # pure Python: the worker's soft alarm interrupts it
        time.sleep(30)
        return True

    def stubborn(gold, pred):  # as if stuck in C code: the alarm never lands, the caller must kill the worker
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(30)
        return True

    def crash(gold, pred):
        os._exit(3)

    def equal(gold, pred):
        return gold == pred
    """
)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """Installs a pool whose worker runs `stand_ins.<name>` instead of math-verify; yields the installer."""
    (tmp_path / "stand_ins.py").write_text(STAND_INS)
    monkeypatch.syspath_prepend(str(tmp_path))  # the worker is given the parent's sys.path
    pools = []

    def install(name: str, size: int = 1) -> verifier._Pool:
        pool = verifier._Pool(size, target=f"stand_ins:{name}")
        monkeypatch.setattr(verifier, "_POOL", pool)
        pools.append(pool)
        return pool

    yield install
    for pool in pools:
        pool.close()


@pytest.mark.parametrize("name", ["sleepy", "stubborn"])
def test_timeout(stand_in, name: str) -> None:
    pool = stand_in(name)
    pool.start(1)  # start-up is not part of the timeout
    before = REASON_COUNTS["timeout"]
    timeout_s = 0.5
    start = time.perf_counter()
    assert check_answer("a", "b", timeout_s=timeout_s) == Verdict(False, "timeout")
    elapsed = time.perf_counter() - start
    assert timeout_s * 0.9 < elapsed < timeout_s + 1.0
    assert REASON_COUNTS["timeout"] == before + 1
    # The soft timeout keeps the worker; the stubborn one was killed and its slot freed.
    assert (len(pool._idle), pool._live) == ((1, 1) if name == "sleepy" else (0, 0))


def test_timeout_in_a_thread(stand_in) -> None:
    stand_in("stubborn").start(1)
    verdicts: list[Verdict] = []
    thread = threading.Thread(target=lambda: verdicts.append(check_answer("a", "b", timeout_s=0.3)))
    thread.start()
    thread.join(timeout=10)
    assert verdicts == [Verdict(False, "timeout")]


def test_crashed_and_vanished_workers(stand_in) -> None:
    stand_in("crash")
    assert check_answer("a", "b") == Verdict(False, "error")
    pool = stand_in("equal")
    pool.start(1)
    pool._idle[0].proc.kill()  # dies while idle: the next check retries on a fresh worker
    pool._idle[0].proc.wait()
    assert check_answer("a", "b") == Verdict(False, "mismatch")
    assert (len(pool._idle), pool._live) == (1, 1)


def test_interrupted_wait_kills_the_worker(stand_in, monkeypatch) -> None:
    pool = stand_in("sleepy")
    pool.start(1)

    def interrupted(self, deadline: float) -> bytes | None:
        raise KeyboardInterrupt

    monkeypatch.setattr(verifier._Worker, "_read_line", interrupted)
    with pytest.raises(KeyboardInterrupt):
        check_answer("a", "b")
    assert (len(pool._idle), pool._live) == (0, 0)  # its late reply can never answer another request


def test_score_batch_uses_several_workers(stand_in) -> None:
    pool = stand_in("equal", size=2)
    responses = [rf"\boxed{{{c}}}" for c in "abcdefgh"]
    correct, _, reasons = score_batch(responses, list("abcdxxxx"))
    assert correct.tolist() == [True] * 4 + [False] * 4
    assert reasons == ["exact"] * 4 + ["mismatch"] * 4
    assert 1 <= pool._live <= 2
