"""How a response is scored: the built-in scorer, the user reward, FAST's format and length terms, over all ranks.

`score_chunk` takes one generation chunk (this rank's prompts and their `n` responses each) to scored `Group`s:
correctness and format from the built-in scorer (`trainer.reward.builtin`), the length in
`reward.thinking.length_unit`, and the reward. With a user reward function (`reward.function`, `trainer.reward.user`),
its value is the reward: it replaces the correctness term, alone for GRPO, and with the thinking reward's format and
length terms added (`algorithm.reward_shaping = "thinking"`). `correct` (accuracy, filters, group KL, FAST's
difficulty) stays the built-in scorer's. The FAST thinking reward takes its statistics over all ranks' chunk (one
all-gather of `[N, 3]` floats), and each rank keeps its own slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fastslow import thinking_reward
from trainer.batch import Group
from trainer.dist import all_gather_cat
from trainer.reward import builtin
from trainer.reward.user import call_reward_fn, load_reward_fn

if TYPE_CHECKING:
    from trainer.config import Config


def score_chunk(
    cfg: Config,
    tokenizer: Any,
    items: list[dict],
    completions: list[list[list[int]]],
    *,
    task: str,
    rank: int,
    device: torch.device,
) -> tuple[list[Group], int]:
    """The chunk's groups, scored, and how many samples `reward.on_error = "zero"` scored 0 (0 without a user
    reward function). `items[i]` is a prompt record ("prompt", "prompt_ids", "answer"), `completions[i]` its `n`
    responses. Every rank calls it together when `algorithm.reward_shaping = "thinking"` (the all-gather)."""
    n = cfg.rollout.group_size
    flat = [c for comps in completions for c in comps]
    answers = [it["answer"] for it in items for _ in range(n)]
    opened = builtin.think_opened_flags(cfg.reward.think_opened, tokenizer, items, n)
    texts, correct, formatted = builtin.score_completions(
        tokenizer, flat, answers, task=task, think_opened=opened, truncated=cfg.reward.truncated
    )
    thinking = cfg.reward.thinking
    lengths = builtin.lengths([len(c) for c in flat], texts, thinking.length_unit)
    user, errors = cfg.reward.function, 0
    if user:  # resolved (and cached) when the config loaded
        prompts = [it["prompt"] for it in items for _ in range(n)]
        fn = load_reward_fn(user)
        user_rewards, errors = call_reward_fn(
            fn, texts, answers, prompts, name=user, on_error=cfg.reward.on_error, timeout_s=cfg.reward.timeout_s
        )
    if cfg.algorithm.reward_shaping == "thinking":
        local = len(flat)
        stats = torch.stack([lengths.float(), correct.float(), formatted.float()]).to(device)
        every = all_gather_cat(stats.t().contiguous()).cpu()  # [world * local, 3], rank by rank
        # The chunk's order, which FAST's brevity budget (brevity_cap) follows: rank 0's responses first, each
        # rank's in prompt order, then sample order.
        fast = thinking_reward(
            every[:, 0], every[:, 1] > 0.5, every[:, 2] > 0.5, n, percentile=thinking.percentile,
            length_weight=thinking.length_weight, format_weight=thinking.format_weight,
            brevity_cap=thinking.brevity_cap,
        )  # fmt: skip
        rewards = fast.rewards[rank * local : (rank + 1) * local]
        if user:
            length_score = fast.length_score[rank * local : (rank + 1) * local]
            rewards = user_rewards + thinking.format_weight * formatted.float() + thinking.length_weight * length_score
    else:
        rewards = user_rewards if user else correct.float()
    groups = [
        Group(it["prompt_ids"], completions[i], rewards[i * n : (i + 1) * n], correct[i * n : (i + 1) * n],
              lengths[i * n : (i + 1) * n])
        for i, it in enumerate(items)
    ]  # fmt: skip
    return groups, errors
