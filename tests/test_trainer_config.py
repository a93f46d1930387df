"""trainer.config: defaults vs default.toml, override parsing, nested tables, errors that name the key, presets, TOML
round trip, `--config` / `--resume`. Former keys: tests/test_config_aliases.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import typing
from pathlib import Path

import pytest

from trainer.config import Config, ConfigError, configs_dir, from_dict, load_config, save_toml, to_toml
from trainer.config.aliases import FAST_DEFAULTS
from trainer.config.base import leaf_keys
from trainer.config.io import tomllib
from trainer.config.tree import flatten, section_paths

PRESETS = ("fast_grpo_r1_distill_1p5b", "sfpo_qwen2p5_math_1p5b")
PATHS = ("model.path=/models/some model", "data.source=/data/train.parquet")
TABLES = (
    "model", "warm_start", "data", "rollout", "rollout.vllm", "reward", "reward.thinking", "algorithm",
    "algorithm.sfpo", "optim", "checkpoint", "logging", "eval", "parallel",
)  # fmt: skip
"""Every table of a written config, in order."""


def _optional_keys() -> set[str]:
    """The dotted key of every field typed `X | None`."""
    return {k for k, hint in leaf_keys(Config).items() if type(None) in typing.get_args(hint)}


def _get(cfg: Config, dotted: str) -> object:
    return functools.reduce(getattr, dotted.split("."), cfg)


def test_defaults_equal_default_toml() -> None:
    default = configs_dir() / "default.toml"
    assert load_config([]) == Config()
    assert load_config(["--config", str(default)]) == Config()
    assert load_config(["--config", "default"]) == load_config(["--config=default.toml"]) == Config()
    # The file sets every key except the ones left unset on purpose: optional (None) values, which TOML cannot write,
    # and the three keys the former algorithm.name = fast_* fills in when nothing sets them.
    in_file = dict(flatten(tomllib.loads(default.read_text())))
    expected = dict(flatten(Config().to_dict()))
    unset = set(FAST_DEFAULTS) | _optional_keys()
    assert set(in_file) == set(expected) - unset
    for dotted, value in in_file.items():
        assert value == expected[dotted], dotted


def test_default_toml_documents_every_key() -> None:
    """Each key is in default.toml, in its own table: set, or (the unset ones) as a commented-out `# key = ...`."""
    table, seen = "", set()
    for line in (configs_dir() / "default.toml").read_text().splitlines():
        if header := re.fullmatch(r"\[([\w.]+)\]", line.strip()):
            table = header.group(1)
        elif key := re.match(r"#? ?(\w+) = ", line):
            seen.add(f"{table}.{key.group(1)}" if table else key.group(1))
    assert set(leaf_keys(Config)) <= seen, set(leaf_keys(Config)) - seen
    assert [t for t in section_paths()] == list(TABLES)


def test_optional_fields_default_to_none() -> None:
    """to_toml leaves None out; that round-trips only because every optional field's default is None."""
    cfg = Config()
    for dotted in _optional_keys():
        assert _get(cfg, dotted) is None, dotted


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("rollout.group_size=4", "rollout.group_size", 4),
        ("seed=7", "seed", 7),
        ("optim.lr=1e-6", "optim.lr", 1e-6),
        ("optim.lr=2", "optim.lr", 2.0),  # an int widens to a float field
        ("optim.lr=.5", "optim.lr", 0.5),  # not TOML, but a float
        ("rollout.temperature = 0.7", "rollout.temperature", 0.7),
        ("model.activation_checkpointing=true", "model.activation_checkpointing", True),
        ("logging.tensorboard=False", "logging.tensorboard", False),
        ("algorithm.update=sfpo", "algorithm.update", "sfpo"),
        ("algorithm.reward_shaping='thinking'", "algorithm.reward_shaping", "thinking"),
        ("rollout.vllm.mode=server", "rollout.vllm.mode", "server"),
        ("rollout.vllm.nccl_port=1234", "rollout.vllm.nccl_port", 1234),
        ("reward.thinking.length_unit=chars", "reward.thinking.length_unit", "chars"),
        ("model.path=/models/Qwen2.5-Math-1.5B", "model.path", "/models/Qwen2.5-Math-1.5B"),
        ('model.path="/models/a b"', "model.path", "/models/a b"),
        ("logging.run_dir=2024", "logging.run_dir", "2024"),  # a string field keeps the text, not the int
        ("data.source=synthetic", "data.source", "synthetic"),
        ("optim.betas=[0.9, 0.95]", "optim.betas", (0.9, 0.95)),
        ("optim.betas=[0, 0.5]", "optim.betas", (0.0, 0.5)),
        ("model.path=none", "model.path", None),
        ("algorithm.dual_clip=3", "algorithm.dual_clip", 3.0),
        ("algorithm.dual_clip=null", "algorithm.dual_clip", None),
        ("algorithm.sfpo.stop_step=100", "algorithm.sfpo.stop_step", 100),
        ("algorithm.sfpo.stop_step=None", "algorithm.sfpo.stop_step", None),
        ("checkpoint.resume=none", "checkpoint.resume", "none"),  # not optional: "none" is the value itself
        ("reward.on_error=zero", "reward.on_error", "zero"),
        ("reward.function=", "reward.function", ""),
        ("reward.function=os.path:join", "reward.function", "os.path:join"),  # any callable taking 3 args
        ("optim.max_bad_steps=1", "optim.max_bad_steps", 1),
        ("model.path=", "model.path", None),  # "" means unset
    ],
)
def test_override_values(override: str, key: str, expected: object) -> None:
    value = _get(load_config([override]), key)
    assert value == expected and type(value) is type(expected)


def test_later_override_wins_and_file_then_overrides() -> None:
    cfg = load_config(["rollout.group_size=4", "rollout.group_size=6"])
    assert cfg.rollout.group_size == 6
    cfg = load_config(["--config", PRESETS[1], *PATHS, "rollout.group_size=4"])
    assert cfg.rollout.group_size == 4 and cfg.rollout.prompts_per_step == 256


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("modle.path=x", "unknown section 'modle'; did you mean 'model'?"),
        ("model.pth=x", "unknown key 'model.pth'; did you mean 'model.path'?"),
        ("algorithm.clip_lwo=0.1", "did you mean 'algorithm.clip_low'?"),
        ("rollout.grad_clip=0.1", "unknown key 'rollout.grad_clip'; did you mean 'optim.grad_clip'?"),
        ("sed=1", "unknown key 'sed'; did you mean 'seed'?"),
        ("model=1", "'model' is a section"),
        ("model.path.x=1", "unknown key 'model.path.x'"),
        ("rollout.vllm.mod=server", "unknown key 'rollout.vllm.mod'; did you mean 'rollout.vllm.mode'?"),
        ("rollout.vllm=server", "'rollout.vllm' is a section; set its keys as rollout.vllm.KEY=VALUE"),
        ("algorithm.sfpo.alhpa=0.5", "did you mean 'algorithm.sfpo.alpha'?"),
        ("algorithm.updat=sfpo", "did you mean 'algorithm.update'?"),
        ("algorithm.name=fast-grpo", "algorithm.name = 'fast-grpo': expected one of 'grpo', 'fast_grpo'"),
    ],
)
def test_unknown_names_suggest_the_closest(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config([override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.group_size=abc", "rollout.group_size = 'abc': expected an integer"),
        ("rollout.group_size=2.5", "rollout.group_size = 2.5: expected an integer"),
        ("rollout.group_size=true", "rollout.group_size = True: expected an integer"),
        ("algorithm.clip_low=true", "algorithm.clip_low = True: expected a finite number"),
        ("algorithm.clip_low=nan", "algorithm.clip_low = nan: expected a finite number"),
        ("algorithm.std_normalize=1", "algorithm.std_normalize = 1: expected true or false"),
        ("model.preset=big", "model.preset = 'big': expected one of 'tiny', 'none'"),
        ("optim.betas=[0.9]", "optim.betas = [0.9]: expected a list of 2 numbers"),
        ("optim.betas=0.9", "optim.betas = 0.9: expected a list of 2 numbers"),
        ('optim.betas=[0.9, "x"]', "optim.betas = 'x': expected a finite number"),
        ("algorithm.dual_clip=big", "algorithm.dual_clip = 'big': expected a finite number (or none)"),
        ("algorithm.kl_coef=none", "algorithm.kl_coef = 'none': expected a finite number"),
    ],
)
def test_wrong_types(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config([override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.clip_low=0"], "algorithm.clip_low = 0.0: must be in (0, 1)"),
        (["algorithm.clip_low=1"], "algorithm.clip_low = 1.0: must be in (0, 1)"),
        (["algorithm.clip_high=0"], "algorithm.clip_high = 0.0: must be > 0"),
        (["algorithm.dual_clip=1"], "algorithm.dual_clip = 1.0: must be > 1"),
        (["algorithm.sfpo.alpha=1.5"], "algorithm.sfpo.alpha = 1.5: must be in [0, 1]"),
        (["algorithm.sfpo.alpha=-0.1"], "algorithm.sfpo.alpha = -0.1: must be in [0, 1]"),
        (["algorithm.sfpo_alpha=1.5"], "algorithm.sfpo.alpha = 1.5: must be in [0, 1]"),  # a former key: the new name
        (["rollout.group_size=1"], "rollout.group_size = 1: must be >= 2"),
        (["algorithm.kl_min=0.1", "algorithm.kl_max=0.01"], "algorithm.kl_min = 0.1: must be <= algorithm.kl_max"),
        (["reward.thinking.percentile=100.5"], "reward.thinking.percentile = 100.5: must be in [0, 100]"),
        (["reward.thinking.percentile=-1"], "reward.thinking.percentile = -1.0: must be in [0, 100]"),
        (["reward.thinking.brevity_cap=-1"], "reward.thinking.brevity_cap = -1.0: must be >= 0"),
        (["algorithm.update=fast"], "algorithm.update = 'fast': expected one of 'grpo', 'sfpo'"),
        (["algorithm.reward_shaping=fast"], "algorithm.reward_shaping = 'fast': expected one of 'none', 'thinking'"),
        (["rollout.vllm.nccl_port=0"], "rollout.vllm.nccl_port = 0: must be a TCP port"),
        (["rollout.vllm.gpu_memory_utilization=1"], "rollout.vllm.gpu_memory_utilization = 1.0: must be in (0, 1)"),
        (["algorithm.filter=slow"], "algorithm.filter = 'slow': expected one of 'none', 'slow2fast', 'dapo'"),
        (["algorithm.loss_agg=mean"], "algorithm.loss_agg = 'mean': expected one of 'token-mean'"),
        (["algorithm.kl_type=adaptive"], "algorithm.kl_type = 'adaptive': expected one of 'fixed'"),
        (["algorithm.sfpo.entropy_window=1"], "algorithm.sfpo.entropy_window = 1: must be >= 2"),
        (["algorithm.sfpo.stop_step=-1"], "algorithm.sfpo.stop_step = -1: must be >= 0"),
        (["rollout.top_p=0"], "rollout.top_p = 0.0: must be in (0, 1]"),
        (["rollout.temperature=-1"], "rollout.temperature = -1.0: must be >= 0"),
        (["optim.lr=0"], "optim.lr = 0.0: must be > 0"),
        (["optim.betas=[0.9, 1.0]"], "optim.betas = (0.9, 1.0): each must be in [0, 1)"),
        (["checkpoint.keep=0"], "checkpoint.keep = 0: must be >= 1"),
        (["checkpoint.resume="], "checkpoint.resume = '': must be 'none', 'auto' or a checkpoint folder"),
        (["data.source=prompts.txt"], "data.source = 'prompts.txt': must be a built-in task ('synthetic', 'chain')"),
        (["model.hidden_size=66"], "model.hidden_size = 66: must be a multiple of num_heads"),
        (["model.hidden_size=12", "model.num_heads=4"], "hidden_size / num_heads (3) must be even"),
        (["model.num_kv_heads=3"], "model.num_heads = 4: must be a multiple of num_kv_heads"),
        (["model.preset=none"], "model.path is not set, and model.preset = 'none'"),
        (["seed=-1"], "seed = -1: must be in"),
        (["optim.max_bad_steps=0"], "optim.max_bad_steps = 0: must be >= 1"),
        (["reward.on_error=skip"], "reward.on_error = 'skip': expected one of 'raise', 'zero'"),
    ],
)
def test_out_of_range_values_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides)


def test_tiny_sizes_unchecked_with_a_model_path() -> None:
    cfg = load_config(["model.path=/models/x", "model.hidden_size=66"])
    assert cfg.model.path == "/models/x"


def test_presets_load_with_paths() -> None:
    fast = load_config(["--config", PRESETS[0], *PATHS])
    assert fast.model.path == "/models/some model" and fast.data.source == "/data/train.parquet"
    assert fast.algorithm.label == "fast_grpo" and fast.algorithm.filter == "slow2fast"
    assert fast.reward.thinking == load_config([]).reward.thinking  # the paper's values are the defaults
    assert (fast.algorithm.kl_type, fast.algorithm.kl_min, fast.algorithm.kl_max) == ("group_accuracy", 0.001, 0.01)
    assert (fast.rollout.group_size, fast.optim.lr, fast.model.activation_checkpointing) == (8, 1e-6, True)
    sfpo = load_config(["--config", str(configs_dir() / f"{PRESETS[1]}.toml"), *PATHS])
    a, s = sfpo.algorithm, sfpo.algorithm.sfpo
    assert (a.update, a.reward_shaping, s.inner_steps, s.alpha, s.entropy_window, s.entropy_threshold) == (
        "sfpo",
        "none",
        3,
        0.8,
        30,
        1.0,
    )
    assert (a.kl_coef, a.filter, sfpo.rollout.prompts_per_step, sfpo.optim.total_steps) == (0.0, "none", 256, 400)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_need_their_paths(preset: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("model.path is not set")):
        load_config(["--config", preset])
    with pytest.raises(ConfigError, match=re.escape("data.source = ''")):
        load_config(["--config", preset, PATHS[0]])


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--config", PRESETS[0], *PATHS],
        ["--config", PRESETS[1], *PATHS, "algorithm.sfpo.stop_step=50", "algorithm.dual_clip=3.5"],
        ["--config", "fast_sfpo", "rollout.vllm.mode=server", "reward.thinking.length_unit=chars"],
        ['model.path=/odd "quoted" \\ path ü\t', "logging.run_dir=runs/x y", "optim.betas=[0.5, 0.25]"],
        ["algorithm.update=sfpo", "algorithm.filter=none", "seed=12345678901", "optim.lr=3e-7"],
        ["model.path=line\nbreak \x01\x7f\r", "optim.lr=0.30000000000000004", "optim.betas=[0.1, 1e-300]"],
    ],
)
def test_save_toml_round_trip(tmp_path: Path, argv: list[str]) -> None:
    cfg = load_config(argv)
    path = tmp_path / "config.toml"
    save_toml(cfg, path)
    assert path.read_text() == to_toml(cfg)
    again = load_config(["--config", str(path)])
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert not list(tmp_path.glob(".*.tmp"))
    text = path.read_text()  # readable: a comment, the top-level keys, then one [table] per section, one key a line
    assert text.startswith("# fastslow trainer config") and "\nseed = " in text and "{" not in text
    assert [line for line in text.splitlines() if line.startswith("[")] == [f"[{t}]" for t in TABLES]
    json.dumps(cfg.to_dict())  # plain data


def test_resume_flag() -> None:
    assert load_config(["--resume", "auto"]).checkpoint.resume == "auto"
    cfg = load_config(["--resume=auto", "logging.run_dir=runs/a"])
    assert cfg.checkpoint.resume == "auto"
    assert load_config(["--resume", "runs/a/checkpoints/step_00000010"]).checkpoint.resume.endswith("0010")
    assert load_config(["--resume", "auto", "checkpoint.resume=none"]).checkpoint.resume == "none"  # later wins
    with pytest.raises(ConfigError, match=re.escape("--resume needs a value")):
        load_config(["--resume"])


def test_command_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("--config given twice")):
        load_config(["--config", "default", "--config", "default"])
    with pytest.raises(ConfigError, match=re.escape("no such file or preset; did you mean 'sfpo_qwen2p5_math_1p5b'")):
        load_config(["--config", "sfpo_qwen2p5"])
    with pytest.raises(ConfigError, match=re.escape("no such file or preset")):
        load_config(["--config", str(tmp_path / "missing.toml")])
    for bad in (["group_size"], ["--group_size=4"], ["-x"]):
        with pytest.raises(ConfigError, match=re.escape("expected section.key=value")):
            load_config(bad)


def test_help_prints_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "algorithm.sfpo.alpha: a finite number = 0.8" in out and "--resume" in out
    assert "rollout.vllm.mode: one of 'colocated', 'server' = 'colocated'" in out
    assert all(p in out for p in (*PRESETS, "fast_grpo", "fast_sfpo", "sfpo"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model\npath = 1", "cannot read the config"),
        ("[modle]\npath = 'x'", "unknown section 'modle'; did you mean 'model'"),
        ("[model]\npth = 'x'", "bad.toml: unknown key 'model.pth'; did you mean 'model.path'"),
        ("[model.extra]\nx = 1", "unknown table [model.extra]; [model] holds no tables"),
        ("[rollout.vlm]\nmode = 'server'", "unknown table [rollout.vlm]; [rollout] holds [rollout.vllm]"),
        ("[rollout]\nvllm = 1", "'rollout.vllm' is a section"),
        ("[rollout.vllm]\nmod = 'server'", "unknown key 'rollout.vllm.mod'; did you mean 'rollout.vllm.mode'"),
        ("model = 3", "'model' is a section"),
        ("seed = 'x'", "seed = 'x': expected an integer"),
        ("[rollout]\ngroup_size = 1", "rollout.group_size = 1: must be >= 2"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(["--config", str(path)])


def test_from_dict_and_dataclass_validation() -> None:
    cfg = from_dict({"rollout": {"group_size": 4}, "seed": 3})
    assert cfg.rollout.group_size == 4 and cfg.seed == 3
    nested = from_dict({"rollout": {"vllm": {"mode": "server"}}, "algorithm": {"sfpo": {"alpha": 0.5}}})
    assert nested.rollout.vllm.mode == "server" and nested.algorithm.sfpo.alpha == 0.5
    with pytest.raises(ConfigError, match=re.escape("did you mean 'rollout.group_size'")):
        from_dict({"rollout": {"group_sise": 4}})
    with pytest.raises(ConfigError, match=re.escape("algorithm.sfpo.alpha = 2.0")):
        dataclasses.replace(Config().algorithm.sfpo, alpha=2.0)
    with pytest.raises(ConfigError, match=re.escape("did you mean 'rollout.vllm.mode'")):
        from_dict({"rollout": {"vllm": {"mod": "server"}}})
    assert isinstance(ConfigError("x"), ValueError)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz': ModuleNotFoundError: No module named"),
        ("json:dumpz", "json has no attribute 'dumpz'; did you mean 'dump'?"),
        ("json", "expected 'package.module:function' or 'path/to/file.py:function'"),
        ("json:", "expected 'package.module:function'"),
        ("missing/rewards.py:fn", "no such file: missing/rewards.py"),
        ("math:pi", "pi in math is not a function (its type is float)"),
        ("json:JSONDecoder.nope", "JSONDecoder has no attribute 'nope'"),
        ("math:sqrt", "must take (responses, answers, prompts)"),
    ],
)
def test_reward_function_is_resolved_when_the_config_loads(spec: str, message: str) -> None:
    """A bad `reward.function` stops at config load, naming the key and the import error, before any work."""
    with pytest.raises(ConfigError, match=re.escape(f"reward.function = {spec!r}: ")) as info:
        load_config([f"reward.function={spec}"])
    assert message in str(info.value)


def test_reward_function_file_errors_at_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken_reward.py"
    broken.write_text("import not_a_real_module_abc\n")
    with pytest.raises(ConfigError, match=r"reward\.function = .*ModuleNotFoundError: No module named"):
        load_config([f"reward.function={broken}:fn"])
    good = tmp_path / "good_reward.py"
    good.write_text("def fn(responses, answers, prompts):\n    return [1.0] * len(responses)\n")
    cfg = load_config([f"reward.function={good}:fn", "reward.on_error=zero"])
    assert cfg.reward.function == f"{good}:fn" and cfg.reward.on_error == "zero"
    path = tmp_path / "config.toml"
    save_toml(cfg, path)
    assert load_config(["--config", str(path)]) == cfg
    with pytest.raises(ConfigError, match=re.escape("reward.function = 3: expected a string")):
        from_dict({"reward": {"function": 3}})


def test_custom_filter_schedule():
    cfg = load_config(["algorithm.filter=custom", 'algorithm.filter_schedule="0.5:0.3:0.99,1.0:0.01:0.7"'])
    assert cfg.algorithm.schedule_entries() == [(0.5, 0.3, 0.99), (1.0, 0.01, 0.7)]
    for bad, why in (
        ("0.5:0.99:0.3", "filter_schedule"),  # low >= high
        ("1.0:0.3:0.99,0.5:0.01:0.7", "filter_schedule"),  # ratios not increasing
        ("0.5:0.3", "filter_schedule"),  # not three numbers
        ("", "filter_schedule"),  # custom without entries
    ):
        with pytest.raises(ConfigError, match=why):
            load_config(["algorithm.filter=custom", f'algorithm.filter_schedule="{bad}"'])
    with pytest.raises(ConfigError, match="filter_schedule"):
        load_config(['algorithm.filter_schedule="1.0:0.01:0.99"'])  # a schedule without filter = "custom"
