"""Loads the policy's causal LM and tokenizer: a local Hugging Face folder, or the built-in tiny preset's, seeded.

`load_model_and_tokenizer(cfg.model, device=..., dtype=...)` is the one entry point: with `model.path` set it loads
that folder with `AutoModelForCausalLM` / `AutoTokenizer` (remote code only when `model.trust_remote_code`), else it
builds the `tiny` preset (`trainer.model.tiny`): a Qwen2 with the config's sizes and random weights, seeded so that
every rank builds the same weights, and a tokenizer built in code with one token per word of the synthetic task
(`trainer.tasks.synthetic.VOCAB`). `build_reference` gives the same model frozen, for the KL term. The sharded
construction the trainer uses (`trainer.model.build`) reads its config, checks and initial weights from here.

The model config is read by attribute (duck typing): `path`, `preset`, `hidden_size`, `num_layers`, `num_heads`,
`num_kv_heads`, `intermediate_size`, `trust_remote_code`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from trainer import tasks
from trainer.model.adapter import new_causal_lm
from trainer.model.tiny import TinySpec, build_tokenizer, tiny_config

__all__ = [
    "ModelSpec",
    "PrecisionChoice",
    "build_reference",
    "checked_config",
    "engine_dtype",
    "folder_of",
    "freeze",
    "generation_config",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "mixed_precision",
    "model_config",
    "model_from_config",
    "quiet_transformers",
]

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelSpec(TinySpec, Protocol):
    """What this module reads of the model config, by attribute (the module docstring): `trainer.config.ModelConfig`,
    or a stand-in (the tests' `SimpleNamespace`). `config` (a folder with config.json and tokenizer, no weights) and
    `dtype` are read with `getattr` and a default, so a stand-in may lack them. Read-only properties, so that a
    narrower field type (`ModelConfig.preset`'s `Literal`) still fits."""

    @property
    def path(self) -> str | None: ...
    @property
    def trust_remote_code(self) -> bool: ...


class PrecisionChoice(Protocol):
    """What `mixed_precision` and `engine_dtype` read: `dtype` ("auto", "float32", "bfloat16"; `getattr`, default
    "auto"): `trainer.config.ModelConfig`, or a stand-in."""

    @property
    def dtype(self) -> str: ...


def mixed_precision(model_cfg: PrecisionChoice, device: torch.device) -> bool:
    """Whether the run computes in bf16 (FSDP2 mixed precision, a bf16 engine, a bf16 export): `model.dtype =
    "bfloat16"` on any device, `"auto"` on a GPU. The one place that decides it, for training and evaluation alike."""
    dtype = getattr(model_cfg, "dtype", "auto")
    return dtype == "bfloat16" or (device.type == "cuda" and dtype == "auto")


def engine_dtype(model_cfg: PrecisionChoice, device: torch.device) -> torch.dtype:
    """The rollout engine's (and the weight sync's) dtype: bf16 under `mixed_precision`, else fp32."""
    return torch.bfloat16 if mixed_precision(model_cfg, device) else torch.float32


def folder_of(model_cfg: ModelSpec) -> tuple[str | None, str]:
    """The Hugging Face folder to read (`model.path`, else `model.config`) and the config key it came from."""
    path = getattr(model_cfg, "path", None)
    if path is not None:
        return path, "model.path"
    return getattr(model_cfg, "config", None), "model.config"


def load_tokenizer(model_cfg: ModelSpec, *, task: str = tasks.DEFAULT) -> PreTrainedTokenizerBase:
    """The tokenizer of `model.path` / `model.config` (pad = eos when it has no pad token), or the built-in one of
    the built-in `task` (the tiny preset's)."""
    path, key = folder_of(model_cfg)
    if path is None:
        return build_tokenizer(task)
    folder = _check_folder(path, need_weights=False, key=key)
    try:
        with quiet_transformers():  # it reads config.json too: an odd one warns before any check of ours
            tok = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=bool(model_cfg.trust_remote_code), **_undeclared_specials(folder)
            )
    except Exception as exc:  # transformers raises many types here; say which folder and key failed
        raise ValueError(f"{key}: cannot load a tokenizer from {folder}: {type(exc).__name__}: {exc}") from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"{key}: the tokenizer in {folder} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def _undeclared_specials(folder: Path) -> dict[str, None]:
    """`{"pad_token": None, ...}` for the special tokens `tokenizer_config.json` does not declare.

    A tokenizer class may default a special token the folder never named (Qwen2Tokenizer defaults pad and unk to
    `<|endoftext|>`), and transformers then adds it as a new token when the vocabulary lacks it: one id past the
    model's embedding. Passing None keeps the folder's vocabulary as it is; pad then becomes eos (`load_tokenizer`).
    """
    try:
        declared = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(declared, dict):
        return {}
    return {name: None for name in ("pad_token", "unk_token") if name not in declared}


def model_config(model_cfg: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The Hugging Face config of the model: read from `model_cfg.path` (or `model.config`), or the tiny preset's
    (`trainer.model.tiny.tiny_config`: its sizes from `model_cfg`, its vocabulary from `tokenizer`)."""
    path, key = folder_of(model_cfg)
    if path is not None:
        folder = _check_folder(path, need_weights=key == "model.path", key=key)
        try:
            with quiet_transformers():  # an unknown model_type: transformers' own warning line, then the error
                config = AutoConfig.from_pretrained(folder, trust_remote_code=bool(model_cfg.trust_remote_code))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(f"{key}: cannot read config.json in {folder}: {type(exc).__name__}: {first:.300}") from exc
        if not model_cfg.trust_remote_code and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ValueError(
                f"{key}: {folder} holds a {config.model_type!r} model ({type(config).__name__}), which is not a causal "
                "LM: transformers has no AutoModelForCausalLM for it"
            )
        return config
    return tiny_config(model_cfg, tokenizer)


def checked_config(model_cfg: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """`model_config`, checked against `tokenizer` before any weight exists: a vocabulary smaller than the
    tokenizer's is a `ValueError`; a missing `pad_token_id` is the tokenizer's."""
    config = model_config(model_cfg, tokenizer)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int):
        _check_vocab(vocab, tokenizer, model_cfg)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def generation_config(model_cfg: ModelSpec) -> GenerationConfig | None:
    """The folder's `generation_config.json` (`model.path` / `model.config`), as `from_pretrained` would read it; None
    when there is none or it does not read (transformers then derives a default from the model config)."""
    path, _ = folder_of(model_cfg)
    if path is None or not (Path(path).expanduser() / "generation_config.json").is_file():
        return None
    try:
        return GenerationConfig.from_pretrained(Path(path).expanduser())
    except Exception:  # an unreadable one: the config-derived default, as transformers does
        return None


def model_from_config(config: PretrainedConfig, *, seed: int, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A randomly initialised causal LM for `config`, on the CPU, identical for the same `seed`.

    The global RNG is left as it was (the weights come from a forked RNG seeded with `seed`), so building a model
    does not shift the trainer's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = new_causal_lm(config)
    return model.to(dtype)


def load_model_and_tokenizer(
    model_cfg: ModelSpec,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (train mode, on `device`, weights in `dtype`) and its tokenizer.

    Args:
        model_cfg: the `model` config section (see the module docstring for the attributes read).
        device: where the model goes.
        dtype: the weights' dtype (float32 for FSDP2 mixed precision, which casts for compute itself).
        seed: seeds the tiny preset's random init (ignored for `model.path`, whose weights are loaded).
        tokenizer: reuse this tokenizer instead of building or loading it again.

    Raises:
        FileNotFoundError: `model.path` is missing, not a folder, or lacks config, weight or tokenizer files.
        ValueError: an unknown preset, inconsistent sizes, a folder transformers cannot load, or a model whose
            vocabulary (`config.vocab_size`, embedding rows) is smaller than its tokenizer (`len(tokenizer)`).
    """
    tok = tokenizer if tokenizer is not None else load_tokenizer(model_cfg)
    path = getattr(model_cfg, "path", None)
    if path is None:
        model = model_from_config(model_config(model_cfg, tok), seed=seed, dtype=dtype)
    else:
        folder = _check_folder(path, need_weights=True)
        checked_config(model_cfg, tok)  # fail before reading the weights; the embedding is checked below too
        try:
            with quiet_transformers():  # its progress bar and load report: _check_loaded says what matters
                model, info = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=dtype, trust_remote_code=bool(model_cfg.trust_remote_code), output_loading_info=True
                )
        except Exception as exc:
            raise ValueError(f"model.path: cannot load a causal LM from {folder}: {type(exc).__name__}: {exc}") from exc
        _check_loaded(folder, info)
    _check_vocab(model.get_input_embeddings().weight.shape[0], tok, model_cfg)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.to(device)
    model.train()
    return model, tok


_BENIGN_KEYS = ("rotary_emb.inv_freq",)
"""Non-persistent buffers that older checkpoints carry and transformers recomputes (tied weights are not reported)."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bar and no warnings from transformers inside (they would come from every rank)."""
    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _check_loaded(folder: Path, info: dict[str, Any]) -> None:
    """A folder whose weights do not fill the model (missing, unexpected or mismatched keys) is an error, not a
    partly random model: transformers only logs it and goes on."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = [str(k[0] if isinstance(k, tuple) else k) for k in info.get(kind) or []]
        keys = [k for k in keys if not k.endswith(_BENIGN_KEYS)]
        if keys:
            shown = ", ".join(sorted(keys)[:3]) + (", ..." if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} ({shown})")
    if problems:
        raise ValueError(
            f"model.path: the weights in {folder} do not fit its model: {'; '.join(problems)}; training would start "
            "from random weights for those (a state dict saved with a prefix, or a partial save?)"
        )


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """`model` in eval mode with every parameter's `requires_grad` off (in place; returned for chaining)."""
    model.requires_grad_(False)
    return model.eval()


def build_reference(
    model_cfg: ModelSpec,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """The frozen reference model for the KL term: the same weights as the initial policy, eval mode, no grads."""
    model, _ = load_model_and_tokenizer(model_cfg, device=device, dtype=dtype, seed=seed, tokenizer=tokenizer)
    return freeze(model)


def _check_vocab(model_vocab: int, tokenizer: PreTrainedTokenizerBase, model_cfg: ModelSpec) -> None:
    """A clear error when the tokenizer has ids the model has no embedding row for (an index error mid-step else).

    A larger model vocabulary is fine (Qwen pads its embedding to a multiple of 128 past the tokenizer's ids).
    """
    if model_vocab < len(tokenizer):
        path, key = folder_of(model_cfg)
        where = f"{key}: {Path(path).expanduser()}" if path is not None else "the built-in model"
        raise ValueError(
            f"{where}: the model's vocabulary ({model_vocab} tokens: config.vocab_size / embedding rows) is smaller "
            f"than its tokenizer's ({len(tokenizer)} tokens: len(tokenizer)); token ids >= {model_vocab} have no "
            "embedding. Use the tokenizer saved with the model, or resize the model's embeddings to the tokenizer."
        )


def _check_folder(path: str | Path, *, need_weights: bool, key: str = "model.path") -> Path:
    """`path` as a folder holding a config, tokenizer files and (if asked) weights; a clear error naming `key`."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"{key}: {folder} does not exist (a local Hugging Face model folder is expected)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}: {folder} is not a folder (a local Hugging Face model folder is expected)")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if need_weights and not any((folder / name).is_file() for name in _WEIGHT_FILES):
        missing.append("weights (one of " + ", ".join(_WEIGHT_FILES) + ")")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        missing.append("a tokenizer (one of " + ", ".join(_TOKENIZER_FILES) + ")")
    if missing:
        raise FileNotFoundError(f"{key}: {folder} lacks " + "; ".join(missing))
    return folder
