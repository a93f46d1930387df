"""The trainer against the seeds' own rules, with the seeds' numbers: FAST's character count, its brevity budget
through the step's chunk, the curriculum's progress, SFPO's stop step and entropy-switch timing, and the format term
when the chat template opens the think block."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastslow import SLOW2FAST, OnlineFilter
from trainer import data
from trainer import step as step_mod
from trainer.config import ConfigError, from_dict
from trainer.model.tiny import build_tokenizer
from trainer.reward import builtin as R
from trainer.reward import scoring

# --------------------------------------------------------------------------------------------- character lengths


@pytest.mark.parametrize(
    ("text", "seed_length"),
    [
        ("<think> 3 / 4 </think> The answer is \\boxed{42}", 42),  # 47 characters as written
        ("<think>\n  a < b  \n</think>\n<answer> 7 </answer>", 36),  # "<think>a<b</think><answer>7</answer>"
        ("no tags at all", 14),  # whitespace elsewhere counts
        ("a  /  b", 3),
        ("", 0),
    ],
)
def test_char_length_is_the_seeds(text: str, seed_length: int) -> None:
    assert R.char_length(text) == seed_length
    assert R.lengths([1], [text], "chars").tolist() == [float(seed_length)]


def test_token_lengths_unchanged() -> None:
    assert R.lengths([3, 5], ["<think> a </think>", "b"], "tokens").tolist() == [3.0, 5.0]


# ------------------------------------------------------------------------------------ step wiring (no model)


def _ctx(algorithm: dict | None = None, reward: dict | None = None, total_steps: int = 10, task: str = "synthetic"):
    cfg = from_dict(
        {
            "rollout": {"group_size": 8, "prompts_per_step": 1},
            "algorithm": {"reward_shaping": "thinking", "filter": "none", **(algorithm or {})},
            "reward": reward or {},
            "optim": {"total_steps": total_steps},
        }
    )
    info = SimpleNamespace(rank=0, world=1, device=torch.device("cpu"))
    return step_mod.StepContext(
        cfg=cfg, info=info, policy=None, ref=None, optimizer=None, scheduler=None, engine=None,
        tokenizer=build_tokenizer(), prompts=[], sampler=None, kl=None, schedule=None, switch=None, task=task,
    )  # fmt: skip


def test_score_chunk_applies_the_brevity_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """One group of 8 correct, formatted answers of growing length: the seed's budget 6.4 leaves the 8th unscored."""
    monkeypatch.setattr(scoring, "all_gather_cat", lambda t: t)  # world size 1
    tok = build_tokenizer()
    items = [{"prompt": "1 + 2 =", "prompt_ids": tok("1 + 2 =")["input_ids"], "answer": "3"}]
    texts = ["<think> " + "so " * k + "</think> <answer> 3 </answer>" for k in range(8)]
    completions = [[tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]]
    lengths = torch.tensor([float(len(c)) for c in completions[0]])  # tokens: 7 + k
    mean = lengths.mean()

    capped = step_mod._score_chunk(_ctx(), items, completions)[0][0].rewards
    expected = 1.5 + 0.5 * (1 - lengths / mean)
    expected[7] = 1.5
    torch.testing.assert_close(capped, expected)
    uncapped = step_mod._score_chunk(_ctx(reward={"thinking": {"brevity_cap": 1.0}}), items, completions)[0][0].rewards
    torch.testing.assert_close(uncapped, 1.5 + 0.5 * (1 - lengths / mean))


def test_brevity_cap_config() -> None:
    assert from_dict({}).reward.thinking.brevity_cap == 0.8
    assert from_dict({"reward": {"thinking": {"brevity_cap": 1}}}).reward.thinking.brevity_cap == 1.0
    with pytest.raises(ConfigError, match=r"reward\.thinking\.brevity_cap"):
        from_dict({"reward": {"thinking": {"brevity_cap": -0.5}}})


class _Engine:
    """Answers every prompt with `n` copies of one response; records nothing else."""

    def __init__(self, tok, text: str) -> None:
        self.ids = tok(text)["input_ids"] + [tok.eos_token_id]

    def generate(self, prompts, sampling):
        return [[list(self.ids) for _ in range(sampling.n)] for _ in prompts]


class _Sampler:
    def next_chunk(self) -> list[int]:
        return [0]


@pytest.mark.parametrize(
    ("step", "total", "bounds"),
    [
        (0, 10, (0.3, 0.99)),  # the seed's step 1: progress 0.1
        (4, 10, (0.3, 0.99)),  # step 5: progress 0.5, still the first phase (r <= 0.5)
        (5, 10, (0.01, 0.7)),  # step 6: progress 0.6 (one step late it was 0.5: (0.3, 0.99))
        (9, 10, (0.01, 0.7)),
    ],
)
def test_curriculum_progress_is_the_seeds(
    step: int, total: int, bounds, monkeypatch: pytest.MonkeyPatch, group_of_one: None
) -> None:
    seen: list[float] = []
    start = OnlineFilter.start

    def spy(self, progress):
        seen.append(progress)
        return start(self, progress)

    monkeypatch.setattr(OnlineFilter, "start", spy)
    monkeypatch.setattr(scoring, "all_gather_cat", lambda t: t)
    ctx = _ctx({"reward_shaping": "none"}, total_steps=total)
    ctx.schedule = SLOW2FAST
    ctx.prompts = [{"prompt": "1 + 2 =", "prompt_ids": ctx.tokenizer("1 + 2 =")["input_ids"], "answer": "3"}]
    ctx.sampler = _Sampler()
    # Half right: accuracy 0.5 is kept by both phases, so the step finishes after one chunk.
    ctx.engine = _Engine(ctx.tokenizer, "<answer> 3 </answer>")
    monkeypatch.setattr(
        R, "score", lambda texts, answers, **kw: (torch.arange(len(texts)) % 2 == 0, torch.ones(len(texts)).bool())
    )
    step_mod.collect(ctx, step)
    assert seen == [pytest.approx((step + 1) / total)]
    assert SLOW2FAST.bounds(seen[0]) == bounds


# ------------------------------------------------------------------------------------- think block in the prompt

R1_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}<think>\n"
PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _tok(template: str):
    tok = build_tokenizer()
    tok.chat_template = template
    return tok


def test_prompt_opens_think_from_the_rendered_template() -> None:
    r1, plain = _tok(R1_TEMPLATE), _tok(PLAIN_TEMPLATE)
    assert R.prompt_opens_think(r1, data.encode_prompt(r1, "1 + 2 =", chat_template=True))
    assert not R.prompt_opens_think(plain, data.encode_prompt(plain, "1 + 2 =", chat_template=True))
    assert not R.prompt_opens_think(r1, data.encode_prompt(r1, "1 + 2 =", chat_template=False))
    assert not R.prompt_opens_think(r1, r1("<think> so </think>")["input_ids"])  # a closed block is not open


@pytest.mark.parametrize(("mode", "template", "opened"), [
    ("auto", R1_TEMPLATE, True), ("auto", PLAIN_TEMPLATE, False), ("true", PLAIN_TEMPLATE, True),
    ("false", R1_TEMPLATE, False),
])  # fmt: skip
def test_score_chunk_passes_think_opened(mode: str, template: str, opened: bool) -> None:
    """A math-task chunk under an R1-style template: the response closes the block the prompt opened."""
    ctx = _ctx({"reward_shaping": "none"}, reward={"think_opened": mode}, task="math")
    ctx.tokenizer = tok = _tok(template)
    items = [{"prompt": "1 + 2 =", "prompt_ids": data.encode_prompt(tok, "1 + 2 =", chat_template=True), "answer": "3"}]
    inside = tok("so </think> <answer> 3 </answer>")["input_ids"] + [tok.eos_token_id]  # continues the open block
    opens = tok("<think> so </think> <answer> 3 </answer>")["input_ids"] + [tok.eos_token_id]
    ctx.cfg.rollout.group_size = 2
    group = step_mod._score_chunk(ctx, items, [[inside, opens]])[0][0]
    assert group.correct.tolist() == [True, True]
    # FAST's format term: the response that re-opens an already open block is malformed, and vice versa.
    formatted = R.score(["so</think><answer>3</answer>", "<think>so</think><answer>3</answer>"], ["3", "3"],
                        task="math", think_opened=opened)[1]  # fmt: skip
    assert formatted.tolist() == ([True, False] if opened else [False, True])
    assert R.think_opened_flags(ctx.cfg.reward.think_opened, ctx.tokenizer, items, 2) == [opened, opened]


def test_think_opened_config() -> None:
    assert from_dict({}).reward.think_opened == "auto"
    assert from_dict({"reward": {"think_opened": True}}).reward.think_opened == "true"  # a TOML boolean
    with pytest.raises(ConfigError, match=r"reward\.think_opened"):
        from_dict({"reward": {"think_opened": "maybe"}})


def test_score_think_opened_per_response() -> None:
    texts = ["so</think><answer>3</answer>"] * 2
    correct, formatted = R.score(texts, ["3", "3"], task="math", think_opened=[True, False])
    assert correct.tolist() == [True, True] and formatted.tolist() == [True, False]
    with pytest.raises(ValueError, match="think_opened"):
        R.score(texts, ["3", "3"], task="math", think_opened=[True])


# ------------------------------------------------------------------------ SFPO's stop step and switch, end to end


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "sfpo"),
    [
        # The seed: `stop_sfpo_step >= global_steps` (from 1): stop 2 runs SFPO on exactly steps 1 and 2.
        (["algorithm.sfpo.stop_step=2"], [1.0, 1.0, 0.0, 0.0]),
        # W = 3 and a threshold every z passes: the switch fires on step 3's entropy (the first with 3 values);
        # as in the seed, the step after it is the first plain-GRPO step.
        (["algorithm.sfpo.entropy_window=3", "algorithm.sfpo.entropy_threshold=-1e9"], [1.0, 1.0, 1.0, 0.0]),
    ],
)
def test_sfpo_steps_through_the_trainer(tmp_path: Path, args: list[str], sfpo: list[float]) -> None:
    from test_trainer_run import run

    lines = run(tmp_path, "algorithm.update=sfpo", "optim.total_steps=4", *args, nproc=1)
    assert [line["sfpo"] for line in lines] == sfpo
