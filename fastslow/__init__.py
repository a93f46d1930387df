"""fastslow: FAST-GRPO (arXiv 2504.18458) and SFPO (arXiv 2510.04072) as plain tensor code.

    from fastslow import group_advantages, thinking_reward, KLController, OnlineFilter, sfpo_update, EntropySwitch

No distributed code here: the trainer (or any other) calls these on its local tensors.
"""

from fastslow.advantages import group_advantages
from fastslow.curriculum import DAPO, SLOW2FAST, FilterExhausted, FilterSchedule, OnlineFilter
from fastslow.dynamic_kl import KL_MODES, KLController, group_kl_coef
from fastslow.math_reward import (
    MathScore,
    check_answer,
    extract_answer,
    extract_boxed,
    format_ok,
    math_reward,
    score_batch,
)
from fastslow.sfpo import EntropySwitch, sfpo_update
from fastslow.thinking_reward import ThinkingReward, thinking_reward

__all__ = [
    "DAPO",
    "KL_MODES",
    "SLOW2FAST",
    "EntropySwitch",
    "FilterExhausted",
    "FilterSchedule",
    "KLController",
    "MathScore",
    "OnlineFilter",
    "ThinkingReward",
    "check_answer",
    "extract_answer",
    "extract_boxed",
    "format_ok",
    "group_advantages",
    "group_kl_coef",
    "math_reward",
    "score_batch",
    "sfpo_update",
    "thinking_reward",
]
