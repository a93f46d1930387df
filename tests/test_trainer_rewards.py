"""trainer.reward.user: user reward functions (loading by import path or file, every failure mode under on_error
"raise" and "zero") and their wiring into the step's scoring (`trainer.reward.scoring.score_chunk`)."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainer import step as step_mod
from trainer.config import Config, from_dict
from trainer.model.tiny import build_tokenizer
from trainer.reward import builtin, scoring
from trainer.reward import user as R

RESPONSES = ["<think>so</think><answer>3</answer>", "4", "<answer>3</answer>", ""]
ANSWERS = ["3", "3", "3", "3"]
PROMPTS = ["1 + 2 ="] * 4

MODULE = """
calls = 0


def good(responses, answers, prompts):
    global calls
    calls += 1
    return [float(r.endswith(a + "</answer>")) + 0.5 * len(p) / 10 for r, a, p in zip(responses, answers, prompts)]


def constant(value):
    def fn(responses, answers, prompts):
        return [value] * len(responses)
    return fn


class Scorer:
    @staticmethod
    def score(responses, answers, prompts):
        return [1.0] * len(responses)


two_args = lambda responses, answers: [0.0] * len(responses)
"""


@pytest.fixture
def module_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(MODULE)
    return path


def _call(fn, on_error: str = "raise", n: int = 4, name: str = "user_mod:fn") -> tuple[torch.Tensor, int]:
    return R.call_reward_fn(fn, RESPONSES[:n], ANSWERS[:n], PROMPTS[:n], name=name, on_error=on_error)


# ------------------------------------------------------------------------------------------------------ loading


def test_load_from_a_file_once(module_file: Path) -> None:
    spec = f"{module_file}:good"
    fn = R.load_reward_fn(spec)
    assert R.load_reward_fn(spec) is fn and R.load_reward_fn(f" {spec} ") is fn  # imported once, cached
    rewards, errors = _call(fn)
    assert errors == 0 and rewards.dtype == torch.float32
    assert rewards.tolist() == pytest.approx([1.35, 0.35, 1.35, 0.35])
    assert R.load_reward_fn(f"{module_file}:Scorer.score")(["a"], ["b"], ["c"]) == [1.0]  # dotted attribute


def test_load_from_an_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "user_pkg_rewards_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = R.load_reward_fn("user_pkg_rewards_test.scoring:good")
    assert fn.__module__ == "user_pkg_rewards_test.scoring"
    assert _call(fn)[0].tolist() == pytest.approx([1.35, 0.35, 1.35, 0.35])
    # the config resolves it at load time and the step finds the same object
    cfg = from_dict({"reward": {"function": "user_pkg_rewards_test.scoring:good"}})
    assert R.load_reward_fn(cfg.reward.function) is fn


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope_module_q:fn", "cannot import module 'nope_module_q': ModuleNotFoundError"),
        ("{file}:nope", "has no attribute 'nope'"),
        ("{file}:calls", "calls in {file} is not a function (its type is int)"),
        ("{file}:two_args", "two_args must take (responses, answers, prompts)"),
        ("{file}", "expected 'package.module:function' or 'path/to/file.py:function'"),
        ("{dir}/absent.py:fn", "no such file"),
    ],
)
def test_load_errors(module_file: Path, spec: str, message: str) -> None:
    fill = dict(file=module_file, dir=module_file.parent)
    with pytest.raises(R.RewardError, match=re.escape(message.format(**fill))):
        R.load_reward_fn(spec.format(**fill))


def test_a_file_that_raises_on_import(tmp_path: Path) -> None:
    path = tmp_path / "raises_on_import.py"
    path.write_text("raise RuntimeError('no API key')\n")
    with pytest.raises(R.RewardError, match=r"cannot import .*raises_on_import\.py: RuntimeError: no API key"):
        R.load_reward_fn(f"{path}:fn")


# ------------------------------------------------------------------------------------------------ good returns


@pytest.mark.parametrize(
    "out",
    [
        [1, 0.5, True, -2.0],
        (1, 0.5, True, -2.0),
        torch.tensor([1, 0.5, 1, -2.0], dtype=torch.float64),
        np.array([1, 0.5, 1, -2.0]),
        [torch.tensor(1.0), np.float32(0.5), np.bool_(True), -2],
    ],
    ids=["list", "tuple", "tensor", "numpy", "scalars"],
)
def test_accepted_returns(out: object) -> None:
    rewards, errors = _call(lambda r, a, p: out)
    assert errors == 0 and rewards.tolist() == [1.0, 0.5, 1.0, -2.0]


# ------------------------------------------------------------------------------------------------ failure modes


def _raises(responses, answers, prompts):
    for i, r in enumerate(responses):
        if r == "4":
            raise KeyError(f"bad response {i}")
    return [0.5] * len(responses)


ENTRY_CASES = {  # one bad entry at index 2: (values, what the error says about it)
    "none": ([1.0, 1.0, None, 1.0], "returned None for sample 2 of 4"),
    "nan": ([1.0, 1.0, math.nan, 1.0], "returned nan for sample 2 of 4"),
    "inf": ([1.0, 1.0, -math.inf, 1.0], "returned -inf for sample 2 of 4"),
    "string": ([1.0, 1.0, "1.0", 1.0], "returned '1.0' (a str, not a number) for sample 2 of 4"),
    "nan_tensor": (torch.tensor([1.0, 1.0, math.nan, 1.0]), "returned nan for sample 2 of 4"),
    # finite in Python, inf as the float32 reward: before, advantages.py raised without naming the function
    "huge": ([1.0, 1.0, 1e300, 1.0], "returned 1e+300 (beyond float32's range, ±3.4e38) for sample 2 of 4"),
}


@pytest.mark.parametrize("case", ENTRY_CASES)
def test_bad_entries(case: str) -> None:
    values, message = ENTRY_CASES[case]
    fn = lambda r, a, p: values
    with pytest.raises(R.RewardError, match=re.escape(f"reward function user_mod:fn {message} in this chunk")) as e:
        _call(fn)
    assert "response '<answer>3</answer>'" in str(e.value) and "answer '3'" in str(e.value)
    rewards, errors = _call(fn, "zero")
    assert errors == 1 and rewards.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_several_bad_entries_name_the_first_and_count_all() -> None:
    fn = lambda r, a, p: [1.0, None, math.nan, 2.0]
    with pytest.raises(R.RewardError, match="returned None for sample 1 of 4"):
        _call(fn)
    rewards, errors = _call(fn, "zero")
    assert errors == 2 and rewards.tolist() == [1.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ([1.0, 1.0, 1.0], "returned 3 rewards for 4 samples (sample 3 on has none)"),
        ([1.0] * 5, "returned 5 rewards for 4 samples"),
        (None, "returned a NoneType, not a list of 4 numbers (one per response)"),
        (1.0, "returned a float, not a list of 4 numbers"),
        ("1111", "returned a str, not a list of 4 numbers"),
        ((x for x in [1.0] * 4), "returned a generator, not a list of 4 numbers"),
        (torch.ones(4, 1), "returned a Tensor of shape (4, 1), expected shape (4,)"),
        (torch.tensor(1.0), "returned a Tensor of shape (), expected shape (4,)"),
    ],
    ids=["short", "long", "none", "float", "str", "generator", "tensor_2d", "tensor_0d"],
)
def test_wrong_count_or_type_scores_the_whole_chunk(out: object, message: str) -> None:
    fn = lambda r, a, p: out
    with pytest.raises(R.RewardError, match=re.escape(f"reward function user_mod:fn {message}")):
        _call(fn)
    rewards, errors = _call(fn, "zero")
    assert errors == 4 and rewards.tolist() == [0.0] * 4


def test_an_exception_names_type_message_and_first_failing_sample() -> None:
    with pytest.raises(R.RewardError) as e:
        _call(_raises, name="my_rewards:strict")
    text = str(e.value)
    assert text.startswith(
        "reward function my_rewards:strict raised on a chunk of 4 samples: KeyError: 'bad response 1'"
    )
    assert "the first sample that raises alone is 1 (KeyError: 'bad response 0'; response '4', answer '3')" in text
    assert isinstance(e.value.__cause__, KeyError)
    rewards, errors = _call(_raises, "zero")
    assert errors == 4 and rewards.tolist() == [0.0] * 4


def test_an_exception_of_the_chunk_as_a_whole() -> None:
    def needs_two(responses, answers, prompts):
        if len(responses) > 2:
            raise ValueError("batch too large")
        return [1.0] * len(responses)

    with pytest.raises(R.RewardError, match="ValueError: batch too large; every sample scores alone without an error"):
        _call(needs_two)


def test_call_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="on_error must be one of raise, zero"):
        _call(lambda r, a, p: [0.0] * 4, on_error="skip")
    with pytest.raises(ValueError, match="differ in length"):
        R.call_reward_fn(lambda r, a, p: [], ["a"], [], [], name="x")


# ------------------------------------------------------------------------------------------------ step wiring


def _ctx(function: str, *, on_error: str = "raise", algorithm: str = "grpo") -> step_mod.StepContext:
    cfg = from_dict(
        {
            "rollout": {"group_size": 2},
            "reward": {"function": function, "on_error": on_error},
            "algorithm": {"reward_shaping": "thinking" if algorithm == "fast_grpo" else "none", "filter": "none"},
        }
    )
    tok = build_tokenizer()
    info = SimpleNamespace(rank=0, world=1, device=torch.device("cpu"))
    return step_mod.StepContext(
        cfg=cfg, info=info, policy=None, ref=None, optimizer=None, scheduler=None, engine=None, tokenizer=tok,
        prompts=[], sampler=None, kl=None, schedule=None, switch=None, task="synthetic",
    )  # fmt: skip


def _chunk(tok) -> tuple[list[dict], list[list[list[int]]]]:
    items = [
        {"prompt": p, "prompt_ids": tok(p)["input_ids"], "answer": a} for p, a in (("1 + 2 =", "3"), ("2 + 2 =", "4"))
    ]
    texts = [
        ["<think> so </think> <answer> 3 </answer>", "2"],
        ["<answer> 4 </answer>", "<think> 4 </think> <answer> 4"],
    ]
    completions = [[tok(t)["input_ids"] + [tok.eos_token_id] for t in group] for group in texts]
    return items, completions


def test_score_chunk_uses_the_user_reward(module_file: Path) -> None:
    ctx = _ctx(f"{module_file}:good")
    items, completions = _chunk(ctx.tokenizer)
    groups, errors = step_mod._score_chunk(ctx, items, completions)
    rewards = torch.cat([g.rewards for g in groups])
    # good(): 1 for "...<answer>" ending, + 0.05 * len(prompt) (7 characters)
    assert rewards.tolist() == pytest.approx([1.35, 0.35, 1.35, 0.35])
    assert torch.cat([g.correct for g in groups]).tolist() == [True, False, True, True]  # the built-in scorer
    assert errors == 0
    builtin, builtin_errors = step_mod._score_chunk(_ctx(""), items, completions)
    plain = torch.cat([g.rewards for g in builtin])
    assert plain.tolist() == [1.0, 0.0, 1.0, 1.0] and builtin_errors == 0


def test_score_chunk_fast_adds_format_and_length_terms(module_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "all_gather_cat", lambda t: t)  # world size 1
    ctx = _ctx(f"{module_file}:good", algorithm="fast_grpo")
    items, completions = _chunk(ctx.tokenizer)
    user = torch.cat([g.rewards for g in step_mod._score_chunk(ctx, items, completions)[0]])
    builtin_groups, _ = step_mod._score_chunk(_ctx("", algorithm="fast_grpo"), items, completions)
    builtin = torch.cat([g.rewards for g in builtin_groups])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # the user's reward replaces the correctness term; FAST's format and length terms are the same
    torch.testing.assert_close(user - torch.tensor([1.35, 0.35, 1.35, 0.35]), builtin - correct)


def test_score_chunk_errors(tmp_path: Path) -> None:
    path = tmp_path / "flaky_rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            def flaky(responses, answers, prompts):
                return [None if r == "2" else 1.0 for r in responses]
            """
        )
    )
    spec = f"{path}:flaky"
    ctx = _ctx(spec, on_error="zero")
    items, completions = _chunk(ctx.tokenizer)
    errors = 0
    for _ in range(2):  # counts add up over the step's chunks
        groups, chunk_errors = step_mod._score_chunk(ctx, items, completions)
        errors += chunk_errors
    assert torch.cat([g.rewards for g in groups]).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert errors == 2
    with pytest.raises(R.RewardError, match=re.escape(f"reward function {spec} returned None for sample 1 of 4")):
        step_mod._score_chunk(_ctx(spec), items, completions)


def test_default_config_has_no_user_reward() -> None:
    assert Config().reward.function == "" and Config().reward.on_error == "raise"


@pytest.mark.distributed
@pytest.mark.slow
def test_run_with_a_user_reward(tmp_path: Path) -> None:
    """2-process run with a user function from a file: its reward drives training, its errors are counted."""
    from test_trainer_run import run

    path = tmp_path / "run_rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            import math

            def half_bad(responses, answers, prompts):
                # the answer's digit anywhere scores 1; every other sample of a chunk is NaN (scored 0, counted)
                return [math.nan if i % 2 else float(a in r) for i, (r, a) in enumerate(zip(responses, answers))]
            """
        )
    )
    lines = run(tmp_path / "run", f"reward.function={path}:half_bad", "reward.on_error=zero")
    assert len(lines) == 3
    # 4 prompts x 4 responses per step, across both ranks: half of them NaN
    assert all(line["reward/errors"] == 8.0 for line in lines)
    assert all(0.0 <= line["reward"] <= 0.5 and line["actor/skipped_updates"] == 0 for line in lines)


@pytest.mark.parametrize(("truncated", "expected"), [("wrong", [True, False]), ("score", [True, True])])
def test_score_completions_cut_at_the_limit(truncated: str, expected: list[bool]) -> None:
    """Training and evaluation score through this one function: a completion without its stop token is wrong
    under reward.truncated = "wrong"."""
    tok = build_tokenizer()
    ids = tok("<answer> 3 </answer>")["input_ids"]
    completions = [[*ids, tok.eos_token_id], ids]  # the second was cut at the token limit
    texts, correct, formatted = builtin.score_completions(
        tok, completions, ["3", "3"], task="synthetic", think_opened=[False, False], truncated=truncated
    )
    assert texts == ["<answer>3</answer>"] * 2
    assert correct.tolist() == expected and formatted.tolist() == expected
