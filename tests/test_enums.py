"""Each choice the config offers is defined once (issue 26): the config's `Literal` and its owner's tuple are the same
object's two views, imported one from the other, or, where the owner cannot be imported by the config (the kernels
and the engine registry import torch, which loading a config must not), tied here."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from fastslow.choices import FILTER_PRESETS
from fastslow.curriculum import FilterSchedule
from fastslow.dynamic_kl import KL_MODES
from fastslow.kernels.kl import KL_ESTIMATORS
from fastslow.kernels.loss_settings import LOSS_AGGS, LossAgg, LossSettings
from trainer.config import AlgorithmConfig, DataConfig, ModelConfig, RewardConfig, RolloutConfig, ThinkingConfig
from trainer.model.attention import ATTN_IMPLEMENTATIONS
from trainer.objective import loss_settings
from trainer.policy import KERNELS
from trainer.reward.builtin import LENGTH_UNITS
from trainer.reward.user import ON_ERROR
from trainer.rollout import ENGINES, REGISTRY


def _choices(section: type, key: str) -> set[str]:
    return set(typing.get_args(typing.get_type_hints(section)[key]))


@pytest.mark.parametrize(
    ("section", "key", "owner"),
    [
        (AlgorithmConfig, "loss_agg", LOSS_AGGS),
        (AlgorithmConfig, "kl_type", KL_MODES),
        (AlgorithmConfig, "kl_estimator", KL_ESTIMATORS),
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
    import trainer.model.config
    import trainer.model.tiny
    import trainer.reward.config
    import trainer.rollout.config

    assert KL_MODES is fastslow.choices.KL_MODES and FilterSchedule.PRESETS is FILTER_PRESETS
    assert KERNELS is trainer.model.config.KERNELS and ATTN_IMPLEMENTATIONS is trainer.model.config.ATTN_IMPLEMENTATIONS
    assert LENGTH_UNITS is trainer.reward.config.LENGTH_UNITS and ON_ERROR is trainer.reward.config.ON_ERROR
    assert ENGINES is trainer.rollout.config.ENGINES
    assert trainer.model.tiny.PRESETS is trainer.model.config.PRESETS
    assert _choices(ModelConfig, "preset") == {*trainer.model.tiny.PRESETS, "none"}
    assert _choices(RolloutConfig, "is_correction") == {*trainer.rollout.config.IS_MODES, "true", "false"}


def test_the_kernels_loss_agg_type_is_its_tuple() -> None:
    assert set(typing.get_args(LossAgg)) == set(LOSS_AGGS)


def test_every_loss_setting_is_an_algorithm_key() -> None:
    """`trainer.objective.loss_settings` reads each `LossSettings` field from the `[algorithm]` key of its name."""
    section = AlgorithmConfig(clip_high=0.3, dual_clip=3.0, loss_agg="seq-mean-token-mean", entropy_coef=0.01)
    settings = loss_settings(section)
    for field in dataclasses.fields(LossSettings):
        assert hasattr(section, field.name), f"LossSettings.{field.name} has no algorithm.{field.name}"
        assert getattr(settings, field.name) == getattr(section, field.name), field.name


def test_data_choices() -> None:
    assert _choices(DataConfig, "on_long_prompt") == {"skip", "error"}  # trainer.data's _too_long takes these
