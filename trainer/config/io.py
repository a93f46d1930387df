"""Run configuration in and out: the command-line loader, override values, presets, and TOML writing (tomli-w).

`load_config(argv)` is the one loader: `[--config FILE|PRESET] [--resume auto|none|PATH] [section.key=value ...]`.
Values apply in order (the dataclass defaults, the file, then the overrides left to right; later wins). Every key is
checked against the tree (unknown -> `ConfigError` suggesting the closest name) and every value against its field's
type and range (`ConfigError` naming `section.key`, the value and what is allowed) before any work starts.

A key is dotted down the tree: `rollout.group_size`, `rollout.vllm.mode` (the `[rollout.vllm]` table). Override
values are TOML literals when they parse as one (`4`, `1e-6`, `true`, `[0.9, 0.95]`, `"quoted"`), else plain text
(`algorithm.update=sfpo`, `model.path=/models/x`); string fields take the text as written unless it is quoted;
`none` / `null` clear an optional field. `--resume X` is `checkpoint.resume=X`. `--config` takes a file or the name
of a preset in `configs_dir()` (`--config sfpo`, `--config sfpo_qwen2p5_math_1p5b`). Former keys (`rollout.vllm_mode`,
`algorithm.name`) still work, in a file or on the command line, each with one warning line naming its new key
(`trainer.config.aliases`).

The tree, its validation and `from_dict` are in `trainer.config.tree`; this module imports it, never the other way
round.
"""

from __future__ import annotations

import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import tomli_w

from trainer.config.aliases import NAME, RENAMED, AlgorithmName, is_former, normalize
from trainer.config.base import ConfigError, _describe, _suggest, _unwrap, leaf_keys
from trainer.config.tree import Config, flatten, from_pairs, lookup, section_paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError as err:
        raise ImportError("trainer.config needs tomli on Python 3.10: pip install tomli") from err

__all__ = ["configs_dir", "find_config", "load_config", "save_toml", "to_toml", "usage"]


def _parse_value(text: str, hint: Any) -> Any:
    """An override's text as a value for a field of type `hint` (see the module docstring)."""
    base, optional = _unwrap(hint)
    text = text.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    if (base is str or typing.get_origin(base) is Literal) and text[:1] not in ("'", '"'):
        return text
    if base is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        parsed = {}
    if set(parsed) == {"v"}:
        return parsed["v"]
    if base is float:
        try:
            return float(text)
        except ValueError:
            pass
    return text


def configs_dir() -> Path:
    """The folder of the preset TOML files (`default.toml` and the paper presets)."""
    return Path(__file__).resolve().parent.parent / "configs"


def find_config(name: str) -> Path:
    """The config file `name` names: a path to a TOML file, or a preset name in `configs_dir()`."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    preset = configs_dir() / (name if name.endswith(".toml") else f"{name}.toml")
    if os.sep not in name and preset.is_file():
        return preset
    presets = sorted(p.stem for p in configs_dir().glob("*.toml"))
    raise ConfigError(
        f"--config {name!r}: no such file or preset{_suggest(Path(name).stem, presets)} "
        f"(presets in {configs_dir()}: {', '.join(presets)})"
    )


def _read_toml(path: Path) -> list[tuple[str, Any]]:
    """The file's `(dotted key, value)` pairs, each key checked against the tree (a former key passes)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config: {err}") from err
    sections = section_paths()
    for table in _tables(data):
        if table not in sections:
            if "." not in table:
                lookup(f"{table}.KEY", str(path))  # raises: an unknown section, suggesting the closest
            parent = table.rpartition(".")[0]
            inside = [f"[{s}]" for s in sections if s.rpartition(".")[0] == parent and "." in s]
            known = f"; [{parent}] holds {', '.join(inside)}" if inside else f"; [{parent}] holds no tables"
            raise ConfigError(f"{path}: unknown table [{table}]{known}")
    pairs = flatten(data)
    for dotted, _ in pairs:
        if not is_former(dotted):
            lookup(dotted, str(path))
    return pairs


def _tables(data: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the tables in `data` (nested ones after their parent)."""
    out: list[str] = []
    for name, value in data.items():
        if isinstance(value, dict):
            out += [prefix + name, *_tables(value, f"{prefix}{name}.")]
    return out


def load_config(argv: Sequence[str] | None = None) -> Config:
    """The resolved `Config` of a command line (see the module docstring); `-h` prints `usage()` and exits."""
    args = list(sys.argv[1:] if argv is None else argv)
    file: Path | None = None
    assignments: list[tuple[str, str, str]] = []  # (where, dotted key, text)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            print(usage())
            raise SystemExit(0)
        if flag in ("--config", "--resume"):
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"{flag} needs a value")
                i, value = i + 1, args[i + 1]
            if flag == "--resume":
                assignments.append((f"--resume {value}", "checkpoint.resume", value))
            elif file is not None:
                raise ConfigError(f"--config given twice ({file} and {value!r}); pass one file, then overrides")
            else:
                file = find_config(value)
        elif eq and not arg.startswith("-"):
            assignments.append((f"override {arg!r}", flag.strip(), value))
        else:
            raise ConfigError(f"{arg!r}: expected section.key=value, --config FILE|PRESET or --resume auto|none|PATH")
        i += 1
    pairs = _read_toml(file) if file is not None else []
    for where, dotted, text in assignments:
        hint = AlgorithmName if dotted == NAME else lookup(RENAMED.get(dotted, dotted), where)
        pairs.append((dotted, _parse_value(text, hint)))
    return from_pairs(normalize(pairs))


def to_toml(cfg: Config) -> str:
    """`cfg` as TOML text that `--config` loads back to an equal `Config` (None values are left out; tomli-w writes
    it: top-level keys, then one table per section, floats as `repr`, so every value reads back exactly)."""
    header = "# fastslow trainer config, resolved (trainer.config.io.to_toml). Load with --config THIS_FILE.\n\n"
    return header + tomli_w.dumps(_without_none(cfg.to_dict()))


def _without_none(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in tree.items() if v is not None}


def save_toml(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write `to_toml(cfg)` to `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_toml(cfg), encoding="utf-8")
    os.replace(tmp, path)


def usage() -> str:
    """Command-line help: the syntax, then every key with its type and default."""
    lines = [
        "usage: torchrun --nproc_per_node=N -m trainer.main [--config FILE|PRESET] [--resume auto|none|PATH] "
        "[section.key=value ...]",
        f"presets ({configs_dir()}): " + ", ".join(sorted(p.stem for p in configs_dir().glob("*.toml"))),
        "keys (type, default); documented in configs/default.toml:",
    ]
    default = dict(flatten(Config().to_dict()))
    lines += [f"  {k}: {_describe(t)} = {default[k]!r}" for k, t in leaf_keys(Config).items()]
    lines.append(
        "former keys (still read, with a warning): rollout.vllm_* -> rollout.vllm.*, algorithm.sfpo_* -> "
        "algorithm.sfpo.*, algorithm.{length_weight,format_weight,percentile,length_unit,brevity_cap} -> "
        "reward.thinking.*, algorithm.name -> algorithm.update + algorithm.reward_shaping"
    )
    return "\n".join(lines)
