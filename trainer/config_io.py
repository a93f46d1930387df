"""Run configuration in and out: the command-line loader, override values, presets, and TOML writing (tomli-w).

`load_config(argv)` is the one loader: `[--config FILE|PRESET] [--resume auto|none|PATH] [section.key=value ...]`.
Values apply in order (the dataclass defaults, the file, then the overrides left to right; later wins). Every key is
checked against the tree (unknown -> `ConfigError` suggesting the closest name) and every value against its field's
type and range (`ConfigError` naming `section.key`, the value and what is allowed) before any work starts.

Override values are TOML literals when they parse as one (`4`, `1e-6`, `true`, `[0.9, 0.95]`, `"quoted"`), else
plain text (`algorithm.name=sfpo`, `model.path=/models/x`); string fields take the text as written unless it is
quoted; `none` / `null` clear an optional field. `--resume X` is `checkpoint.resume=X`. `--config` takes a file or
the name of a preset in `configs_dir()` (`--config sfpo_qwen2p5_math_1p5b`).

The tree, its validation and `from_dict` are in `trainer.config`; this module imports it, never the other way round.
"""

from __future__ import annotations

import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import tomli_w

from trainer.config import Config, _lookup, _sections, _top_keys, from_dict
from trainer.config_base import ConfigError, _describe, _hints, _suggest, _unwrap

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
    return Path(__file__).resolve().parent / "configs"


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
    """The file's `(dotted key, value)` pairs, each key checked against the tree."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config: {err}") from err
    pairs = []
    for name, value in data.items():
        if isinstance(value, dict) != (name in _sections()):
            _lookup(f"{name}.KEY" if isinstance(value, dict) else name, str(path))  # raises: names what is wrong
        for key, item in value.items() if name in _sections() else [(None, value)]:
            if isinstance(item, dict):
                raise ConfigError(f"{path}: unknown table [{name}.{key}]: tables nest one level only")
            dotted = name if key is None else f"{name}.{key}"
            _lookup(dotted, str(path))
            pairs.append((dotted, item))
    return pairs


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
    tree: dict[str, Any] = {}
    explicit: set[str] = set()
    for dotted, value in _read_toml(file) if file is not None else []:
        _put(tree, dotted, value)
        explicit.add(dotted)
    for where, dotted, text in assignments:
        _put(tree, dotted, _parse_value(text, _lookup(dotted, where)))
        explicit.add(dotted)
    return from_dict(tree, explicit=frozenset(explicit)).resolved()


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.rpartition(".")
    (tree.setdefault(section, {}) if section else tree)[key] = value


def to_toml(cfg: Config) -> str:
    """`cfg` as TOML text that `--config` loads back to an equal `Config` (None values are left out; tomli-w writes
    it: top-level keys, then one table per section, floats as `repr`, so every value reads back exactly)."""
    data = cfg.to_dict()
    tree = {k: v for k, v in data.items() if k not in _sections() and v is not None}
    tree |= {name: {k: v for k, v in data[name].items() if v is not None} for name in _sections()}
    header = "# fastslow trainer config, resolved (trainer.config_io.to_toml). Load with --config THIS_FILE.\n\n"
    return header + tomli_w.dumps(tree)


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
    default = Config().to_dict()
    lines += [f"  {k}: {_describe(t)} = {default[k]!r}" for k, t in _top_keys().items()]
    for name, cls in _sections().items():
        lines += [f"  {name}.{k}: {_describe(t)} = {default[name][k]!r}" for k, t in _hints(cls).items()]
    return "\n".join(lines)
