"""The `[reward]` section and its `[reward.thinking]` table: what scores a response, and FAST-GRPO's thinking reward.

Light (no torch: the config loader imports it); the reward code imports its choices from here (`LENGTH_UNITS` in
`trainer.reward.builtin`, `ON_ERROR` in `trainer.reward.user`), and the check of `reward.function` loads
`trainer.reward.user` only when a function is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from trainer.config.base import ConfigError, _Section

__all__ = ["LENGTH_UNITS", "ON_ERROR", "LengthUnit", "OnError", "RewardConfig", "ThinkingConfig"]

LengthUnit = Literal["tokens", "chars"]
"""How a response's length is counted: tokens, or characters as the seed's code counts them."""
LENGTH_UNITS: tuple[str, ...] = get_args(LengthUnit)
OnError = Literal["raise", "zero"]
"""What a failed user reward call does: stop the run, or score the bad samples 0."""
ON_ERROR: tuple[str, ...] = get_args(OnError)


@dataclass
class ThinkingConfig(_Section):
    """FAST-GRPO's thinking reward (`algorithm.reward_shaping = "thinking"`): `accuracy + format_weight * format +
    length_weight * length score`, the length score difficulty-aware (`fastslow.thinking_reward`)."""

    SECTION = "reward.thinking"
    length_weight: float = 0.5
    """Weight of the length score."""
    format_weight: float = 0.5
    """Weight of the format score."""
    percentile: float = 80.0
    """Difficulty percentile above which a group is hard, in [0, 100]."""
    length_unit: LengthUnit = "tokens"
    """Response length in tokens, or characters as the seed's code counts them (after removing the whitespace around
    `<`, `>` and `/`)."""
    brevity_cap: float = 0.8
    """The seed's `punish_count`. Of the easy-and-correct responses of a generation chunk (all ranks' responses,
    rank 0's first, each rank's in prompt then sample order), only those met while `brevity_cap * N - (those already
    scored) > 0` get the brevity score `1 - len / L`; later ones get 0. 1.0 (or more) scores all of them (no cap);
    0 none."""

    def validate(self) -> None:
        self._at_least(0, "length_weight", "format_weight")
        self._require(self.brevity_cap >= 0, "brevity_cap", "must be >= 0 (1.0: no cap)")
        self._require(0 <= self.percentile <= 100, "percentile", "must be in [0, 100]")


@dataclass
class RewardConfig(_Section):
    """The reward of a response: the data's built-in scorer, or a user function plugged in by import path.

    A user function is called once per generation chunk (see `trainer.reward.user` for its contract and an example):

        def my_reward(responses: list[str], answers: list[str], prompts: list[str]) -> list[float] | Tensor

    Its values are the reward GRPO's advantages use. Correctness (the `accuracy` metric, the online filters, the
    accuracy-based KL and FAST's difficulty) still comes from the built-in scorer; with the thinking reward on, the
    user's value replaces its correctness term and its format and length terms are added to it.
    """

    SECTION = "reward"
    function: str = ""
    """"": the built-in reward of the data (the synthetic task's rule, or the math verifier for a prompt file).
    Else a user function, "package.module:function" (importable from the working directory or the installed
    packages) or "path/to/file.py:function"; imported when the config loads, so a bad path stops the run before
    any work."""
    think_opened: Literal["auto", "true", "false"] = "auto"
    """Whether the generation prompt already opens the `<think>` block (R1-distilled chat templates end with it), so
    that the format check expects a response that closes it without opening it. "auto": read from each rendered
    prompt (`trainer.reward.builtin.prompt_opens_think`); "true" / "false" (or TOML booleans) force it."""
    truncated: Literal["wrong", "score"] = "wrong"
    """A response cut at `rollout.max_new_tokens` (no stop token): "wrong" counts it as incorrect and unformatted,
    whatever it holds (it never finished its answer; without this, a correctness-only reward lets text after the
    answer grow until every response runs to the limit); "score": scored like any other (the seeds' code)."""
    on_error: OnError = "raise"
    """When the user function raises, times out or returns something other than one finite number per response:
    "raise" stops the run with an error naming the function and the first bad sample; "zero" scores the bad samples
    0 (the whole chunk when the call raised, timed out or returned the wrong count) and counts them in the metric
    `reward/errors`."""
    timeout_s: float = 120.0
    """Time limit of one call of the user function (one generation chunk), in seconds: the call runs in a forked
    child process, killed past the limit (a failure under `on_error`); Ctrl-C stops the run even while it hangs.
    0: no limit, called in the trainer's own process (no fork; Ctrl-C then waits for the call to return)."""
    thinking: ThinkingConfig = field(default_factory=ThinkingConfig)
    """FAST-GRPO's thinking reward (`[reward.thinking]`), on with `algorithm.reward_shaping = "thinking"`."""

    def validate(self) -> None:
        self.function = self.function.strip()
        self._require(math.isfinite(self.timeout_s) and self.timeout_s >= 0, "timeout_s", "must be a number >= 0")
        if self.function:
            from trainer.reward.user import RewardError, load_reward_fn  # torch: only when needed

            try:
                load_reward_fn(self.function)
            except RewardError as exc:
                raise ConfigError(f"reward.function = {self.function!r}: {exc}") from exc
