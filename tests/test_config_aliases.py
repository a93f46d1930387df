"""Former config keys (`trainer.config.aliases`): each still loads, from a file or the command line, to the config its
new key gives, with exactly one warning line naming the new key; `algorithm.name` is its switches (and FAST's
defaults where nothing sets them), the same as the presets; a run saved under the old names resumes with no change
reported."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from trainer.checkpoint.resume import compare
from trainer.config import Config, ConfigError, from_dict, load_config
from trainer.config.aliases import FAST_DEFAULTS, NAMES, RENAMED, recipe_overrides, rename_saved
from trainer.config.base import leaf_keys
from trainer.config.io import tomllib
from trainer.config.tree import flatten

OLD_RUN = Path(__file__).resolve().parent / "assets" / "config" / "old_names.toml"
"""A config.toml written by the trainer before the nested tables (its header says how)."""

VALUES = {
    "rollout.vllm_mode": "server", "rollout.vllm_tensor_parallel_size": "2",
    "rollout.vllm_gpu_memory_utilization": "0.5", "rollout.vllm_max_model_len": "512",
    "rollout.vllm_sleep_level": "1", "rollout.vllm_enforce_eager": "true", "rollout.vllm_weight_transfer": "extension",
    "rollout.vllm_server_url": "http://10.0.0.1:8000", "rollout.vllm_server_workers": "2",
    "rollout.vllm_nccl_address": "10.0.0.2", "rollout.vllm_nccl_port": "1234", "rollout.vllm_timeout_s": "30",
    "algorithm.sfpo_inner_steps": "2", "algorithm.sfpo_alpha": "0.5", "algorithm.sfpo_entropy_window": "10",
    "algorithm.sfpo_entropy_threshold": "2.0", "algorithm.sfpo_stop_step": "7", "algorithm.length_weight": "0.25",
    "algorithm.format_weight": "0.75", "algorithm.percentile": "50", "algorithm.length_unit": "chars",
    "algorithm.brevity_cap": "1.0",
}  # fmt: skip
"""A value other than the default for every renamed key."""


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "is deprecated" in line]


def test_every_renamed_key_is_tested_and_new() -> None:
    assert set(VALUES) == set(RENAMED)
    assert set(RENAMED.values()) <= set(leaf_keys(Config)) and not set(RENAMED) & set(leaf_keys(Config))


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_a_former_key_on_the_command_line(old: str, capsys: pytest.CaptureFixture[str]) -> None:
    new = RENAMED[old]
    got = load_config([f"{old}={VALUES[old]}"])
    assert _warnings(capsys.readouterr().err) == [f"warning: config key {old!r} is deprecated; use {new!r}"]
    assert got == load_config([f"{new}={VALUES[old]}"]) != Config()
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_a_former_key_in_a_file(old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    section, _, key = old.rpartition(".")
    value = load_config([f"{RENAMED[old]}={VALUES[old]}"])
    capsys.readouterr()
    expected = dict(flatten(value.to_dict()))[RENAMED[old]]
    path = tmp_path / "old.toml"
    path.write_text(f"[{section}]\n{key} = {_toml(expected)}\n")
    got = load_config(["--config", str(path)])
    assert len(_warnings(capsys.readouterr().err)) == 1
    assert got == value


def _toml(value: object) -> str:
    return repr(value).replace("'", '"').replace("True", "true").replace("False", "false")


def test_one_line_per_key_however_often_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.toml"
    path.write_text('[rollout]\nvllm_mode = "server"\n')
    cfg = load_config(["--config", str(path), "rollout.vllm_mode=colocated", "rollout.vllm_mode=server"])
    assert cfg.rollout.vllm.mode == "server"
    assert _warnings(capsys.readouterr().err) == [
        "warning: config key 'rollout.vllm_mode' is deprecated; use 'rollout.vllm.mode'"
    ]


def test_old_and_new_keys_apply_in_order() -> None:
    assert load_config(["rollout.vllm_mode=server", "rollout.vllm.mode=colocated"]).rollout.vllm.mode == "colocated"
    assert load_config(["rollout.vllm.mode=colocated", "rollout.vllm_mode=server"]).rollout.vllm.mode == "server"


def test_warnings_from_rank_0_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANK", "1")
    load_config(["algorithm.sfpo_alpha=0.5", "algorithm.name=sfpo"])
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.parametrize("name", sorted(NAMES))
def test_algorithm_name_is_its_preset(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`algorithm.name=X` loads the config `--config X` does (grpo: the defaults), and what bench sets for X."""
    old = load_config([f"algorithm.name={name}"])
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith("warning: config key 'algorithm.name' is deprecated; use 'algorithm.update' and ")
    preset = Config() if name == "grpo" else load_config(["--config", name])
    assert old == preset == load_config(recipe_overrides(name))
    assert old.algorithm.label == name
    fast = name.startswith("fast_")
    assert (old.algorithm.update, old.algorithm.reward_shaping) == (name[-4:], "thinking" if fast else "none")
    given = dict(flatten(old.to_dict()))
    assert all((given[k] == v) == fast for k, v in FAST_DEFAULTS.items())


@pytest.mark.parametrize("name", ["fast_grpo", "fast_sfpo"])
def test_fast_defaults_apply_only_where_unset(name: str, tmp_path: Path) -> None:
    cfg = load_config([f"algorithm.name={name}", "algorithm.filter=none", "algorithm.kl_coef=0.0"])
    assert (cfg.algorithm.kl_type, cfg.algorithm.filter, cfg.algorithm.kl_coef) == ("group_accuracy", "none", 0.0)
    cfg = load_config([f"algorithm.name={name}", "algorithm.kl_type=fixed"])
    assert (cfg.algorithm.kl_type, cfg.algorithm.filter) == ("fixed", "slow2fast")
    path = tmp_path / "run.toml"  # a key set in the file counts as set, before or after the name
    path.write_text(f'[algorithm]\nfilter = "dapo"\nname = "{name}"\n')
    cfg = load_config(["--config", str(path)])
    assert (cfg.algorithm.filter, cfg.algorithm.kl_type, cfg.algorithm.reward_shaping) == (
        "dapo",
        "group_accuracy",
        "thinking",
    )
    # default.toml leaves the three keys unset, so starting from it still gets the FAST defaults
    cfg = load_config(["--config", "default", f"algorithm.name={name}"])
    assert (cfg.algorithm.filter, cfg.algorithm.kl_type) == ("slow2fast", "group_accuracy")
    # the last name decides: a plain name after a FAST one brings no FAST defaults
    cfg = load_config([f"algorithm.name={name}", "algorithm.name=grpo"])
    assert cfg == Config()


def test_algorithm_name_values_are_checked() -> None:
    message = "algorithm.name = 'fast-grpo': expected one of 'grpo', 'fast_grpo', 'sfpo', 'fast_sfpo'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(["algorithm.name=fast-grpo"])


def test_from_dict_reads_former_keys(capsys: pytest.CaptureFixture[str]) -> None:
    old = {"algorithm": {"name": "fast_grpo", "filter": "none", "brevity_cap": 1}, "rollout": {"vllm_mode": "server"}}
    cfg = from_dict(old)
    assert (cfg.algorithm.reward_shaping, cfg.algorithm.filter, cfg.algorithm.kl_type) == (
        "thinking",
        "none",
        "group_accuracy",
    )
    assert cfg.reward.thinking.brevity_cap == 1.0 and cfg.rollout.vllm.mode == "server"
    assert len(_warnings(capsys.readouterr().err)) == 3


def test_a_run_saved_with_the_old_names_loads_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The old config.toml loads (one warning per former key in it) to the config the same command line gives under
    the new names; resuming with that config reports no change, and a real change is still reported by its new
    name; a change of a frozen switch is refused."""
    old = load_config(["--config", str(OLD_RUN)])
    lines = _warnings(capsys.readouterr().err)
    in_file = {k for k, _ in flatten(tomllib.loads(OLD_RUN.read_text()))}
    assert len(lines) == len(in_file & ({"algorithm.name"} | set(RENAMED))) == 23
    now = [
        "--config", "fast_sfpo", "rollout.vllm.mode=server", "rollout.vllm.nccl_port=4321", "algorithm.sfpo.alpha=0.6",
        "algorithm.sfpo.stop_step=40", "reward.thinking.length_unit=chars", "reward.thinking.brevity_cap=1.0",
        "optim.lr=0.0003", "logging.run_dir=runs/old",
    ]  # fmt: skip
    cfg = load_config(now)
    assert old == cfg
    saved = tmp_path / "config.toml"
    shutil.copy(OLD_RUN, saved)
    assert compare(cfg, saved) == []
    assert compare(load_config([*now, "algorithm.sfpo.alpha=0.7"]), saved) == ["algorithm.sfpo.alpha 0.6 -> 0.7"]
    with pytest.raises(ConfigError, match=re.escape("algorithm.update = 'sfpo' -> 'grpo'")):
        compare(load_config([*now, "algorithm.update=grpo"]), saved)
    assert _warnings(capsys.readouterr().err) == []  # the comparison reads the saved names silently


def test_rename_saved_leaves_new_names_alone() -> None:
    flat = dict(flatten(Config().to_dict()))
    assert rename_saved(flat) == flat
    assert rename_saved({"algorithm.name": "sfpo", "rollout.vllm_mode": "server"}) == {
        "algorithm.update": "sfpo",
        "algorithm.reward_shaping": "none",
        "rollout.vllm.mode": "server",
    }
