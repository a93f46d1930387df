"""Each choice the config offers is defined once (issue 26): the config's `Literal` and its owner's tuple are the same
object's two views, imported one from the other, or, where the owner cannot be imported by the config (the kernels
and the engine registry import torch, which loading a config must not), tied here."""

from __future__ import annotations

import typing

import pytest

from fastslow.choices import FILTER_PRESETS
from fastslow.curriculum import FilterSchedule
from fastslow.dynamic_kl import KL_MODES
from fastslow.kernels.grpo_args import LOSS_AGGS, LossAgg
from trainer.attention import ATTN_IMPLEMENTATIONS
from trainer.config import AlgorithmConfig, DataConfig, ModelConfig, RewardConfig, RolloutConfig, ThinkingConfig
from trainer.policy import KERNELS
from trainer.rewards import LENGTH_UNITS, ON_ERROR
from trainer.rollout import ENGINES, REGISTRY


def _choices(section: type, key: str) -> set[str]:
    return set(typing.get_args(typing.get_type_hints(section)[key]))


@pytest.mark.parametrize(
    ("section", "key", "owner"),
    [
        (AlgorithmConfig, "loss_agg", LOSS_AGGS),
        (AlgorithmConfig, "kl_type", KL_MODES),
        (AlgorithmConfig, "filter", ("none", *FilterSchedule.PRESETS, "custom")),
        (ThinkingConfig, "length_unit", LENGTH_UNITS),
        (RewardConfig, "on_error", ON_ERROR),
        (ModelConfig, "kernels", KERNELS),
        (ModelConfig, "attn_implementation", ATTN_IMPLEMENTATIONS),
        (RolloutConfig, "engine", ENGINES),
        (RolloutConfig, "engine", tuple(REGISTRY)),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", None),
)
def test_config_choices_equal_the_owners(section: type, key: str, owner: tuple[str, ...]) -> None:
    assert _choices(section, key) == set(owner), f"{section.__name__}.{key} and its owner disagree"


def test_shared_choices_are_one_object() -> None:
    """Where the config can import the owner's definition (or the owner the config's), there is one tuple."""
    import fastslow.choices
    import trainer.config.model
    import trainer.config.reward
    import trainer.model
    import trainer.rollout.config

    assert KL_MODES is fastslow.choices.KL_MODES and FilterSchedule.PRESETS is FILTER_PRESETS
    assert KERNELS is trainer.config.model.KERNELS and ATTN_IMPLEMENTATIONS is trainer.config.model.ATTN_IMPLEMENTATIONS
    assert LENGTH_UNITS is trainer.config.reward.LENGTH_UNITS and ON_ERROR is trainer.config.reward.ON_ERROR
    assert ENGINES is trainer.rollout.config.ENGINES
    assert trainer.model.PRESETS is trainer.config.model.PRESETS
    assert _choices(ModelConfig, "preset") == {*trainer.model.PRESETS, "none"}
    assert _choices(RolloutConfig, "is_correction") == {*trainer.rollout.config.IS_MODES, "true", "false"}


def test_the_kernels_loss_agg_type_is_its_tuple() -> None:
    assert set(typing.get_args(LossAgg)) == set(LOSS_AGGS)


def test_data_choices() -> None:
    assert _choices(DataConfig, "on_long_prompt") == {"skip", "error"}  # trainer.data's _too_long takes these
