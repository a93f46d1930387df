"""The rollout engine interface: sampling parameters and the protocol every engine (hf, vllm) implements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one `generate` call samples: `n` completions per prompt, each at most `max_new_tokens` long.

    `temperature == 0` means greedy decoding (all `n` completions of a prompt are then equal). Sampling is from the
    plain softmax at `temperature`, cut to the `top_p` nucleus: no top-k, no repetition penalty, nothing the
    trainer's log-probs would not see. A completion ends at (and includes) the first token in `stop_token_ids`.
    `seed` fixes the sampling of the call, so a rank's generations repeat exactly for the same seed and weights.
    """

    n: int
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n = {self.n}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature = {self.temperature}: must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p = {self.top_p}: must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens = {self.max_new_tokens}: must be >= 1")

    @property
    def greedy(self) -> bool:
        """Decode with argmax instead of sampling."""
        return self.temperature == 0


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from an inference engine: generate from token ids, and take new weights."""

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> list[list[list[int]]]:
        """Completions for each prompt: `out[i][j]` is the j-th of `sampling.n` completions of `prompt_ids[i]`.

        Each completion is a list of token ids without the prompt and without padding, ending at and including
        the first stop token when one was produced (else exactly `max_new_tokens` long).
        """
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy full (unsharded) tensors into the engine's model, by the HF model's parameter names.

        Called once per bucket of a sync, so several times per sync. Unknown names and wrong shapes are errors.
        """
        ...

    def sleep(self) -> None:
        """Release inference memory (KV cache, weights) while the trainer runs; a no-op where nothing is held."""
        ...

    def wake_up(self) -> None:
        """Take back what `sleep` released, before the next sync or generation."""
        ...

    def close(self) -> None:
        """Free the engine for good."""
        ...
