"""The rollout engines are one registry (`trainer.rollout.REGISTRY`): the config's choices are its names, and a new
engine is one entry, picked by name with no engine-name `if` elsewhere (issue 26)."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch

from trainer import rollout
from trainer.config import RolloutConfig
from trainer.rollout import REGISTRY, EngineSpec, build_engine, engine_spec


def test_config_choices_are_the_registry() -> None:
    hint = typing.get_type_hints(RolloutConfig)["engine"]
    assert set(typing.get_args(hint)) == set(REGISTRY) == set(rollout.ENGINES)
    assert not REGISTRY["hf"].own_model and REGISTRY["vllm"].own_model


def test_unknown_engine_names_the_allowed_ones() -> None:
    allowed = r"rollout.engine = 'sglang': unknown engine; allowed: 'hf', 'hf_process', 'vllm'"
    with pytest.raises(ValueError, match=allowed):
        engine_spec("sglang")


def test_a_registered_engine_is_built_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []

    def build(args):
        built.append(args)
        return "an engine"

    monkeypatch.setitem(REGISTRY, "fake", EngineSpec(build, own_model=True))
    got = build_engine("fake", make_model=lambda: None, pad_token_id=0, device="cpu", dtype=torch.float32, seed=3)
    assert got == "an engine" and built[0].seed == 3 and built[0].dtype == torch.float32


def test_no_engine_name_branches_outside_the_registry() -> None:
    from trainer import trainer
    from trainer.eval import cli as eval_cli

    for module in (trainer, eval_cli):
        source = inspect.getsource(module)
        assert 'engine == "vllm"' not in source and 'engine != "hf"' not in source and 'engine == "hf"' not in source
