"""trainer.tasks.synthetic: the digit-sum task (held-out split, levels, worked solutions) and its reward rule."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from trainer.tasks import synthetic as task


def test_dataset_is_deterministic_with_levels_and_right_answers() -> None:
    a, b = task.make_dataset(3000, seed=1), task.make_dataset(3000, seed=1)
    assert a == b and a != task.make_dataset(3000, seed=2)
    for item in a:
        *digits, eq = item["prompt"].split()
        assert eq == "=" and len(digits) == task.NUM_DIGITS and list(map(int, digits)) == item["digits"]
        assert item["level"] == sum(d != 0 for d in item["digits"])
        assert item["answer"] == str(sum(item["digits"]) % 10)
    levels = Counter(item["level"] for item in a)
    assert set(levels) == set(range(1, task.MAX_LEVEL + 1))
    assert max(levels.values()) < 1.25 * min(levels.values())  # uniform over levels


def test_held_out_split_is_disjoint_from_training() -> None:
    train = {item["prompt"] for item in task.make_dataset(20000, seed=0, split="train")}
    held = {item["prompt"] for item in task.make_dataset(2000, seed=0, split="eval")}
    assert not train & held
    assert len(held) > 1000  # enough distinct held-out problems (level 1 has only 54 problems in all)
    assert all(task.split_of(item["digits"]) == "eval" for item in task.make_dataset(500, seed=3, split="eval"))
    with pytest.raises(ValueError, match="split"):
        task.make_dataset(4, seed=0, split="test")
    with pytest.raises(ValueError, match="size"):
        task.make_dataset(0, seed=0)


@pytest.mark.parametrize("think", [False, True])
@pytest.mark.parametrize("fillers", [0, 3])
def test_worked_solutions_score_right_and_formatted(think: bool, fillers: int) -> None:
    for item in task.make_dataset(50, seed=5):
        text = task.solution(item["digits"], think=think, fillers=fillers, rng=random.Random(0))
        verdict = task.check(text, item["answer"])
        assert verdict.correct and verdict.formatted, text
    text = task.solution([3, 0, 0, 5, 0, 2], think=True)
    assert text == "<think> 3 3 3 8 8 0 </think> <answer> 0 </answer>"
    assert task.solution([3, 0, 0, 5, 0, 2], think=False) == "<answer> 0 </answer>"


@pytest.mark.parametrize(
    ("response", "correct", "formatted"),
    [
        ("<think> 3 3 3 8 8 0 </think> <answer> 0 </answer>", True, True),
        ("<think>333880</think><answer>0</answer>", True, True),  # the built-in tokenizer decodes without spaces
        ("<think> 3 3 3 8 8 0 wait check </think> <answer> 0 </answer>", True, True),  # fillers cost, no harm
        ("<answer> 0 </answer>", True, True),  # no think block: fast thinking skips it
        ("</think> <answer> 0 </answer>", True, True),  # the prompt opened the block
        ("</think> <answer> 0", True, False),  # an answer never closed (the loophole FAST's brevity reward found)
        ("<think> 4 3 7 7 2 0 </think> <answer> 0", True, False),  # ... as it found it
        ("<answer> 0 </answer> ok wait", True, False),  # words after the answer (the seed's regex wants none)
        ("0", False, False),  # no answer tag: no answer (the thought's digits are not one)
        ("<think> 3 3 3 8 8 0 </think>", False, False),  # thought, never answered
        ("<think> 0 </think> <answer> 5 </answer>", False, True),  # the tagged answer counts, not the thought
        ("<answer> so 0 </answer>", True, False),  # the digit is after the tag, but not right after it
        ("<think> <answer> 0 </answer>", True, False),  # think block never closed
        ("</think> <think> <answer> 0 </answer>", True, False),  # think tags out of order
        ("<answer> 0 </answer> <answer> 0 </answer>", True, False),  # two answers
        ("<answer> 0 </answer> </answer>", True, False),
        ("<answer> 0 <think> </think>", True, False),  # think tags after the answer
        ("<answer>", False, False),
        ("", False, False),
        ("\x00\ufffd\U0001f600 <answer> 0 </answer>", True, True),
        ("\x00\ufffd\U0001f600 <answer> 0", True, False),
    ],
)
def test_task_rule_on_hand_written_responses(response: str, correct: bool, formatted: bool) -> None:
    verdict = task.check(response, "0")
    assert (verdict.correct, verdict.formatted) == (correct, formatted)


def test_task_rule_never_raises() -> None:
    for bad_response in (None, 3, b"3", ["3"]):
        assert task.check(bad_response, "3") == task.Verdict(False, False, None)  # type: ignore[arg-type]
    for bad_answer in ("x", "", " ", "-3", "3.0", "9" * 40):
        assert not task.check("<answer> 3 </answer>", bad_answer).correct
    assert task.check("<answer> 3 </answer>", " 3 ").correct
    assert task.check("so 7 <answer> 4", "4").predicted == "4"
    assert task.check("so 7", "7").predicted is None
