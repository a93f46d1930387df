"""Each choice the config offers is the set its owner accepts (issue 26): an enum written at the owner and again in
the config's `Literal` drifts unnoticed; this ties every such pair."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from fastslow.dynamic_kl import KL_MODES
from fastslow.kernels.kl import KL_ESTIMATORS
from fastslow.kernels.loss_settings import LOSS_AGGS, LossAgg, LossSettings
from trainer.config import DataConfig, ModelConfig, RewardConfig, RolloutConfig
from trainer.config_algorithm import AlgorithmConfig
from trainer.model.attention import ATTN_IMPLEMENTATIONS
from trainer.objective import loss_settings
from trainer.policy import KERNELS
from trainer.reward.builtin import LENGTH_UNITS
from trainer.reward.user import ON_ERROR
from trainer.rollout import ENGINES


def _choices(section: type, key: str) -> set[str]:
    return set(typing.get_args(typing.get_type_hints(section)[key]))


@pytest.mark.parametrize(
    ("section", "key", "owner"),
    [
        (AlgorithmConfig, "loss_agg", LOSS_AGGS),
        (AlgorithmConfig, "kl_type", KL_MODES),
        (AlgorithmConfig, "kl_estimator", KL_ESTIMATORS),
        (AlgorithmConfig, "length_unit", LENGTH_UNITS),
        (RewardConfig, "on_error", ON_ERROR),
        (ModelConfig, "kernels", KERNELS),
        (ModelConfig, "attn_implementation", ATTN_IMPLEMENTATIONS),
        (RolloutConfig, "engine", ENGINES),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", None),
)
def test_config_choices_equal_the_owners(section: type, key: str, owner: tuple[str, ...]) -> None:
    assert _choices(section, key) == set(owner), f"{section.__name__}.{key} and its owner disagree"


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
