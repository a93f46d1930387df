"""The rollout engine interface: sampling parameters, completions, the weight stream, and the engine protocol.

Every engine (hf, vllm colocated, vllm server) implements `RolloutEngine`; the trainer never asks which one runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
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
    logprobs: bool = False
    """Also return the engine's log-prob of each sampled token (`Completion.logprobs`), for an importance-sampling
    correction: the log-softmax at `temperature` (1 when greedy), the quantity the trainer computes. The vllm engine
    takes vLLM's `processed_logprobs`, which with `top_p < 1` are renormalised over the nucleus; the hf engine's
    are not."""

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


class Completion(list):
    """One completion: its token ids, as a plain `list[int]`, and optionally the engine's log-probs of them.

    A `list` subclass so that code (and tests) that treat completions as token lists keep working; `logprobs` is
    None unless `SamplingParams.logprobs` was set, else a list of floats as long as the token list.
    """

    __slots__ = ("logprobs",)

    def __init__(self, token_ids: Iterable[int] = (), logprobs: list[float] | None = None) -> None:
        super().__init__(token_ids)
        if logprobs is not None and len(logprobs) != len(self):
            raise ValueError(f"Completion: {len(logprobs)} log-probs for {len(self)} tokens")
        self.logprobs = logprobs


def check_prompts(prompt_ids: Sequence[Sequence[int]], who: str) -> None:
    """Every engine's input check: each prompt has at least one token."""
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError(f"{who}: empty prompt (every prompt needs at least one token)")


def cut_at_stop(tokens: Sequence[int], logprobs: Sequence[float] | None, stops: Iterable[int]) -> Completion:
    """`tokens` up to and including the first stop token (what follows is padding or overrun), with the matching
    log-probs."""
    stop_set = set(stops)
    end = next((i + 1 for i, token in enumerate(tokens) if token in stop_set), len(tokens))
    return Completion(tokens[:end], None if logprobs is None else [float(x) for x in logprobs[:end]])


def fill_prompt(completions: list[Completion], sampling: SamplingParams) -> list[Completion]:
    """One prompt's `sampling.n` completions: a greedy decode (one completion) copied `n` times, else checked."""
    if sampling.greedy and len(completions) == 1:
        return [Completion(completions[0], completions[0].logprobs) for _ in range(sampling.n)]
    if len(completions) != sampling.n:
        raise RuntimeError(f"engine: asked for {sampling.n} completions of a prompt, got {len(completions)}")
    return completions


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of the stream as the engine receives it: HF name, dtype on the wire, full shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the full tensor on the wire."""
        return math.prod(self.shape) * self.dtype.itemsize


@runtime_checkable
class WeightStream(Protocol):
    """The trained weights as an engine consumes them: metadata without gathering, then buckets on demand.

    `metadata()` lists every parameter once (HF names, wire dtype, full shape), identical on every rank and
    computed without communication. `buckets()` starts a fresh pass that yields lists of `(name, full tensor)` in
    metadata order; gathering FSDP2 shards is a collective, so every rank must drain it in step, and a consumer
    must drop a bucket before asking for the next (one bucket of extra memory at a time).
    """

    def metadata(self) -> list[ParamInfo]: ...

    def buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]: ...


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from an inference engine: generate from token ids, and take new weights."""

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """Completions for each prompt: `out[i][j]` is the j-th of `sampling.n` completions of `prompt_ids[i]`.

        Each completion is a `Completion` (a list of token ids) without the prompt and without padding, ending at
        and including the first stop token when one was produced (else exactly `max_new_tokens` long), with its
        log-probs when `sampling.logprobs` is set.
        """
        ...

    def update_weights(self, stream: WeightStream) -> None:
        """Replace the engine's weights with the stream's, every parameter, by the HF model's names.

        Called on every rank at the same time (the stream gathers shards collectively). Unknown names and wrong
        shapes are errors. An engine that sleeps wakes its weights (not its KV cache) for this.
        """
        ...

    def sleep(self) -> None:
        """Release inference memory (KV cache, weights) while the trainer runs; a no-op where nothing is held."""
        ...

    def wake_up(self) -> None:
        """Take back everything `sleep` released (weights, then KV cache), before the next generation."""
        ...

    def close(self) -> None:
        """Free the engine for good."""
        ...
