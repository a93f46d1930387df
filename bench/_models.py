"""The model shapes the benchmarks use: a Qwen2-style decoder's sizes, its parameter shapes, its HF config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """A Qwen2-style decoder (attention with q/k/v biases, SwiGLU MLP, RMSNorm) under a short name."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = True

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes in FSDP2's order (module registration order): embedding, layers, final norm, [lm_head]."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        layer = [
            (q, h), (q,), (kv, h), (kv,), (kv, h), (kv,), (h, q),  # q, k, v (with biases), o
            (i, h), (i, h), (h, i),  # gate, up, down
            (h,), (h,),  # input and post-attention RMSNorm
        ]  # fmt: skip
        shapes = [(self.vocab, h), *(layer * self.layers), (h,)]
        if not self.tied:
            shapes.append((self.vocab, h))
        return shapes

    def hf_kwargs(self, **extra: Any) -> dict[str, Any]:
        """`transformers.Qwen2Config` keyword arguments (Qwen2.5's rope theta and norm epsilon), `extra` on top."""
        if self.hidden != self.heads * self.head_dim:
            raise ValueError(f"{self.name}: Qwen2Config derives head_dim = hidden / heads, not {self.head_dim}")
        return {
            "vocab_size": self.vocab, "hidden_size": self.hidden, "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "tie_word_embeddings": self.tied, "max_position_embeddings": 32768, "rope_theta": 1_000_000.0,
            "rms_norm_eps": 1e-6, **extra,
        }  # fmt: skip

    def hf_config(self, **extra: Any) -> Any:
        """The `transformers.Qwen2Config` of `hf_kwargs`."""
        from transformers import Qwen2Config

        return Qwen2Config(**self.hf_kwargs(**extra))


QWEN25_05B = ModelConfig("qwen2.5-0.5b", 896, 4864, 24, 14, 2, 64, 151936)
QWEN25_15B = ModelConfig("qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 128, 151936)
