"""The tiny Qwen2 the trainer tests build when they need a model of their own (not the trainer's preset)."""

from __future__ import annotations

import torch
import transformers


def tiny_lm(seed: int = 0) -> transformers.PreTrainedModel:
    """A 2-layer Qwen2 with tied embeddings and a 40-token vocabulary, identical for the same `seed`.

    Built in train mode, like `from_pretrained`'s models after `.train()`; call `.eval()` where that matters.
    """
    config = transformers.Qwen2Config(
        vocab_size=40,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(config)
