"""The `hf` rollout engine: transformers `generate` on an unsharded inference copy of the policy."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from transformers import GenerationConfig, PreTrainedModel

from trainer.rollout.base import Completion, SamplingParams, WeightStream, check_prompts, cut_at_stop, fill_prompt


class HFEngine:
    """Generates with its own unsharded copy of the model; the trainer streams new weights in with `load_weights`.

    The copy is built once by `make_model()` (same architecture as the trained model, any initial weights), moved
    to `device` and `dtype`, and kept in eval mode. It shares no storage with the trained model: a sync copies.
    Its `generation_config` is replaced by an empty one, so a checkpoint's sampling defaults (top-k, repetition
    penalty, ...) never leak into rollouts: only `SamplingParams` decide how tokens are drawn.
    """

    def __init__(
        self,
        make_model: Callable[[], PreTrainedModel],
        *,
        pad_token_id: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.device = torch.device(device)
        self.pad_token_id = pad_token_id
        # Building may seed or draw from the global RNG (random init): keep the trainer's RNG stream untouched.
        with torch.random.fork_rng(devices=[]):
            model = make_model()
        model = model.to(device=self.device, dtype=dtype).eval()
        model.requires_grad_(False)
        model.generation_config = GenerationConfig()
        self.model: PreTrainedModel | None = model
        # All names, tied duplicates included ("lm_head.weight" when it is "model.embed_tokens.weight"): loading
        # either updates the one shared tensor.
        self._params = dict(model.named_parameters(remove_duplicate=False))

    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still keeps version counters): the same tokens
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """`out[i][j]`: the j-th of `sampling.n` completions of `prompt_ids[i]` (token ids, no prompt, no padding).

        All prompts go through one `model.generate` call, left-padded to the longest, with
        `num_return_sequences = n` (greedy: one decode per prompt, repeated n times); each completion is cut
        after its first stop token. The global RNG (CPU and this engine's device) is seeded with `sampling.seed`
        for the call and restored afterwards, so the trainer's own RNG stream does not depend on rollouts.
        With `sampling.logprobs`, each token's log-prob is the log-softmax at the sampling temperature of the raw
        logits `generate` produced for it (before the top-p cut).
        """
        model = self._model()
        if not prompt_ids:
            return []
        check_prompts(prompt_ids, "HFEngine.generate")
        input_ids_BP, attention_mask_BP = self._left_pad(prompt_ids)
        config = self._generation_config(sampling)
        with _seeded_rng(self.device, sampling.seed):
            out = model.generate(
                input_ids=input_ids_BP, attention_mask=attention_mask_BP, generation_config=config
            )  # sequences [B * n, P + new]: rows are prompt-major (the n completions of prompt 0 first)
        new_NS = out.sequences[:, input_ids_BP.shape[1] :]
        logp: list[list[float]] | None = None
        if sampling.logprobs:
            temperature = sampling.temperature if not sampling.greedy else 1.0
            logits_NSV = torch.stack(out.logits, dim=1).float() / temperature  # [B * n, new, V]
            logp = torch.log_softmax(logits_NSV, dim=-1).gather(-1, new_NS.unsqueeze(-1)).squeeze(-1).tolist()
        completions = [
            cut_at_stop(row, None if logp is None else logp[r], sampling.stop_token_ids)
            for r, row in enumerate(new_NS.tolist())
        ]
        # greedy: one decode per prompt (transformers refuses greedy with n > 1), which fill_prompt copies n times
        per_prompt = 1 if sampling.greedy else sampling.n
        return [
            fill_prompt(completions[i * per_prompt : (i + 1) * per_prompt], sampling) for i in range(len(prompt_ids))
        ]

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy full tensors into the model by HF parameter name (cast to the engine's dtype and device).

        Strict: an unknown name raises KeyError naming it, a shape mismatch raises ValueError. Tied weights are one
        tensor here, so loading "model.embed_tokens.weight" updates "lm_head.weight" too.
        """
        self._model()
        for name, tensor in named_tensors:
            param = self._params.get(name)
            if param is None:
                raise KeyError(
                    f"HFEngine.load_weights: unknown parameter {name!r}; the engine's model has "
                    f"{len(self._params)} parameters, e.g. {next(iter(self._params))!r}"
                )
            if tensor.shape != param.shape:
                raise ValueError(
                    f"HFEngine.load_weights: {name!r} has shape {tuple(tensor.shape)}, the engine's parameter "
                    f"has {tuple(param.shape)}"
                )
            param.copy_(tensor)

    def update_weights(self, stream: WeightStream) -> None:
        """`load_weights` for each bucket of the stream, in order (see `WeightStream`)."""
        for bucket in stream.buckets():
            self.load_weights(bucket)
            del bucket  # the stream gathers the next bucket only once this one is freed

    def sleep(self) -> None:
        """No-op: the hf engine keeps its weights and allocates its KV cache per call."""

    def wake_up(self) -> None:
        """No-op (see `sleep`)."""

    def close(self) -> None:
        """Drop the model copy; the engine cannot be used afterwards."""
        self.model = None
        self._params = {}

    def _model(self) -> PreTrainedModel:
        if self.model is None:
            raise RuntimeError("HFEngine: used after close()")
        return self.model

    def _left_pad(self, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts as one left-padded batch: input ids [B, P] and attention mask [B, P] (1 on real tokens)."""
        longest = max(len(p) for p in prompt_ids)
        ids = [[self.pad_token_id] * (longest - len(p)) + list(p) for p in prompt_ids]
        mask = [[0] * (longest - len(p)) + [1] * len(p) for p in prompt_ids]
        return (
            torch.tensor(ids, dtype=torch.long, device=self.device),
            torch.tensor(mask, dtype=torch.long, device=self.device),
        )

    def _generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        """Every knob that changes the sampled distribution is set explicitly (top_k=0: transformers' default
        is 50, which would make rollouts off-policy)."""
        common = {
            "max_new_tokens": sampling.max_new_tokens,
            "num_return_sequences": 1 if sampling.greedy else sampling.n,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": list(sampling.stop_token_ids) or None,
            "use_cache": True,
            "return_dict_in_generate": True,
            "output_logits": sampling.logprobs,
        }
        if sampling.greedy:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, **common
        )


@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seeds the CPU RNG and `device`'s RNG for the block, then restores both (transformers' sampling draws from
    the global generators: `generate` takes no `torch.Generator`)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"), torch.cuda.device(index):
            torch.random.default_generator.manual_seed(seed)
            torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
