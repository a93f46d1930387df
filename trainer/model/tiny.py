"""The built-in `tiny` preset: a small Qwen2 config from the `model` section's sizes, and a tokenizer built in code.

The weights are random and seeded (`trainer.model.load.model_from_config`), or the warm start's
(`trainer.model.warm_start`); the tokenizer has one token per word of a built-in task (`trainer.tasks`).
"""

from __future__ import annotations

from typing import Protocol

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2Tokenizer

from trainer import tasks
from trainer.model.config import PRESETS

__all__ = ["MAX_POSITIONS", "PAD", "PRESETS", "SPECIALS", "TinySpec", "build_tokenizer", "tiny_config"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
"""Ids 0..3 of the built-in tokenizer, in this order; the task's words follow."""
MAX_POSITIONS = 1024
"""Positions of the tiny preset: prompt + response stay far below this (64 + 16 tokens by default)."""


class TinySpec(Protocol):
    """What the preset reads of the model config, by attribute: `trainer.config.ModelConfig`, or a stand-in (the
    tests' `SimpleNamespace`). `preset` is read with `getattr` and a default ("tiny"). Read-only properties, so that
    a narrower field type (`ModelConfig.preset`'s `Literal`) still fits."""

    @property
    def preset(self) -> str: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def num_kv_heads(self) -> int: ...
    @property
    def intermediate_size(self) -> int: ...


def build_tokenizer(task: str = tasks.DEFAULT) -> PreTrainedTokenizerFast:
    """The built-in tokenizer of a built-in task (`trainer.tasks`): one token per word of its `VOCAB`, as a
    `Qwen2Tokenizer`. The default task's is described below; the "chain" task's has 164 tokens.

    Ids: `<pad>` 0, `<bos>` 1, `<eos>` 2, `<unk>` 3, then `VOCAB` in order (27 words, 31 tokens in all). Each word is
    an added token that swallows the white space around it, so `"1 + 2 ="` and `"1+2="` both encode to the same four
    ids; nothing is added when encoding (no BOS/EOS); decoding concatenates the words without spaces
    (`"<think>so</think><answer>3</answer>"`), and re-encoding a decoded text gives the same ids back. Text outside
    the vocabulary is dropped (the byte-level model below has no unknown token).

    Why a Qwen2Tokenizer and not a plain word-level one: from transformers 5, `AutoTokenizer.from_pretrained` on a
    folder whose config says `model_type = "qwen2"` always builds a `Qwen2Tokenizer` from the saved vocabulary,
    whatever class `tokenizer_config.json` names; a word-level tokenizer saved next to the tiny Qwen2 would come back
    as a byte-level one that silently drops most words. Built as a Qwen2Tokenizer it round-trips exactly through
    `save_pretrained` / `AutoTokenizer.from_pretrained`, checkpoints and HF exports included.
    """
    words_of_task = tuple(tasks.get(task).VOCAB)
    vocab = {w: i for i, w in enumerate(SPECIALS + words_of_task)}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    words = [AddedToken(w, lstrip=True, rstrip=True, normalized=False, special=False) for w in words_of_task]
    tok.add_tokens(words)
    return tok


def tiny_config(model_cfg: TinySpec, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """The preset's Qwen2Config: its sizes from `model_cfg` (`hidden_size`, `num_layers`, `num_heads`,
    `num_kv_heads`, `intermediate_size`), its vocabulary size and special ids from `tokenizer`; input and output
    embeddings tied.

    Raises:
        ValueError: an unknown preset, or sizes that do not divide (heads into the width, KV heads into the heads).
    """
    preset = getattr(model_cfg, "preset", "tiny")
    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    if model_cfg.hidden_size % model_cfg.num_heads != 0:
        raise ValueError(
            f"model.hidden_size ({model_cfg.hidden_size}) must be a multiple of model.num_heads ({model_cfg.num_heads})"
        )
    if model_cfg.num_heads % model_cfg.num_kv_heads != 0:
        raise ValueError(
            f"model.num_heads ({model_cfg.num_heads}) must be a multiple of "
            f"model.num_kv_heads ({model_cfg.num_kv_heads})"
        )
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
