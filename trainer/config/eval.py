"""The `[eval]` section: the held-out evaluation (`trainer.eval`), during training and standalone.

Here, not beside `trainer.eval`, because that package imports torch at module level and loading a config must not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from trainer.config.base import ConfigError, _Section
from trainer.config.data import BUILTIN_TEXT
from trainer.data_formats import DATA_SUFFIXES, SUFFIX_TEXT
from trainer.tasks import is_builtin as is_builtin_task

__all__ = ["EVAL_SUFFIXES", "EvalConfig", "eval_source_name"]

EVAL_SUFFIXES = DATA_SUFFIXES
"""File types an `eval.source` entry may name (besides "synthetic"): the same as `data.source`."""


def eval_source_name(entry: str) -> str:
    """How an `eval.source` entry is reported: "synthetic", or the file's stem (`data/math500.jsonl` -> `math500`)."""
    return entry if is_builtin_task(entry) else PurePath(entry.replace("\\", "/")).stem


@dataclass
class EvalConfig(_Section):
    """Held-out evaluation (`trainer.eval`): before training, every `every` steps and at the end, on the rollout
    engine with the weights just synced; also standalone (`python -m trainer.eval MODEL`)."""

    SECTION = "eval"
    enabled: bool = True
    """Evaluate during training (false: never; `python -m trainer.eval` ignores this)."""
    source: str = "synthetic"
    """What to evaluate on: a built-in task ("synthetic", "chain": its held-out split, disjoint from its training
    prompts), or
    .jsonl / .json / .parquet / .pq files, given as a TOML list (`["a.jsonl", "b.parquet"]`) or one string with commas
    (`eval.source=a.jsonl,b.parquet`); each is reported under its file stem (`eval/math500/...`). A relative path
    is taken from the working directory when it is there, else from the repository root (so the presets'
    `../shared/data/math500.jsonl` is found from any folder). Same columns and scorer as the training files."""
    before_train: bool = True
    """Evaluate once before the first step (after the first weight sync); a resumed run does not repeat it."""
    every: int = 10
    """Evaluate every this many steps (0: only before training and at the end); always at the end."""
    synthetic_size: int = 128
    """Prompts of the synthetic held-out split."""
    max_prompts: int = 0
    """Evaluate the first N usable prompts of each source only (0: all of them)."""
    n: int = 4
    """Samples per prompt (avg@n, pass@k for k = 1, 2, 4, ... <= n, maj@n)."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy; the n samples are then the same)."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 0
    """Response length cap in tokens (0: rollout.max_new_tokens)."""
    max_prompt_tokens: int = 0
    """Longer prompts (after the chat template) are skipped and counted (`skipped_prompts`); 0:
    data.max_prompt_tokens."""
    prompt_key: str = ""
    """Column holding the prompt text in the files ("": data.prompt_key)."""
    answer_key: str = ""
    """Column holding the reference answer in the files ("": data.answer_key)."""
    difficulty_key: str = "level"
    """Optional column with a difficulty (MATH-500's `level`, 1-5; the synthetic task's `level`): metrics are also
    reported per value, `eval/<source>/level_<d>/...`. Rows without it are left out of that split; "": none."""
    batch_size: int = 16
    """Prompts per `generate` call. Prompts are cut into blocks of this size, dealt round-robin to the ranks, each
    block sampled with its own seed: the numbers depend on it (and on the seed and step), not on the number of
    ranks. Larger is faster on vLLM."""

    def __post_init__(self) -> None:
        if isinstance(self.source, (list, tuple)):  # a TOML list of paths: kept as one comma-separated string
            if not all(isinstance(s, str) for s in self.source):
                raise ConfigError(f"eval.source = {self.source!r}: expected a string or a list of strings")
            self.source = ",".join(s.strip() for s in self.source)
        super().__post_init__()

    @property
    def sources(self) -> list[str]:
        """The `source` entries: "synthetic" and file paths, in order."""
        return [s.strip() for s in self.source.split(",") if s.strip()]

    def validate(self) -> None:
        sources = self.sources
        self._require(bool(sources), "source", f"must be a built-in task ({BUILTIN_TEXT}) or {SUFFIX_TEXT} paths")
        for s in sources:
            ok = is_builtin_task(s) or s.lower().endswith(EVAL_SUFFIXES)
            self._require(ok, "source", f"{s!r} is neither a built-in task ({BUILTIN_TEXT}) nor a {SUFFIX_TEXT} file")
        names = [eval_source_name(s) for s in sources]
        for name in names:
            self._require(names.count(name) == 1, "source", f"two entries report as {name!r} (stems must differ)")
        self._at_least(0, "every", "max_prompts", "max_new_tokens", "max_prompt_tokens", "temperature")
        self._at_least(1, "synthetic_size", "n", "batch_size")
        self._require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
