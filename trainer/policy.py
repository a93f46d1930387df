"""The policy as FSDP2 sees it: a Hugging Face causal LM whose log-probs and loss come from `fastslow.kernels`.

Wrapping the LM (as `self.lm`) gives FSDP's root a forward of its own: the root's parameters (embeddings, final
norm, LM head) are gathered around `Policy.forward`, so the head's weight is a plain tensor when it reaches
`fastslow.kernels.token_logprobs` / `fastslow.kernels.linear_grpo_loss`, and the `[tokens, vocab]` logits are never
formed.

Packed rows (`packed=`, built by `trainer.packing`): `input_ids` `[1, N]` holds several sequences back to back, and
the decoder gets the position ids and attention arguments `trainer.model.attention` makes for `attn_implementation`,
so no token attends across a sequence boundary; the hidden state at every position is kept (the last token of each
sequence simply has no target).

`kernels="reference"` (`model.kernels` in the config) swaps those two for their plain-torch references
(`fastslow.kernels.token_logprobs_ref`, `fastslow.kernels.linear_grpo_loss_ref(eager=True)`): full `[tokens, vocab]`
logits, a float32 log-softmax, autograd. Slower and memory-hungry, it answers "does the fused path change my run?".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastslow.kernels import linear_grpo_loss, linear_grpo_loss_ref, token_logprobs, token_logprobs_ref
from trainer.model import attention
from trainer.model.adapter import ModelAdapter
from trainer.model.config import KERNELS, Kernels
from trainer.objective import LossArgs


class Policy(nn.Module):
    """Hidden states from the LM's decoder, then the log-prob (`forward`) or loss (`loss`) kernels with its head weight.

    The LM's parts come from its `ModelAdapter` (`self.adapter`, which refuses a layout it does not know); the LM
    itself is the one submodule (`lm.`), so parameter names are the HF model's with that prefix.
    """

    FSDP_FORWARD_METHODS = ("loss",)
    """Methods besides `forward` that run the model: `trainer.dist.parallelize` registers them with FSDP2."""

    def __init__(self, lm: nn.Module, *, kernels: Kernels = "fused", attn_implementation: str = "auto") -> None:
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(f"Policy: kernels = {kernels!r}; allowed: {', '.join(map(repr, KERNELS))}")
        self.lm = lm
        self.adapter = ModelAdapter(lm)
        """The decoder, blocks and head weight of `lm` (`trainer.model.adapter`): what this and FSDP2 use."""
        self.kernels = kernels
        self.attn = attention.configure(lm, attn_implementation)
        """The transformers attention implementation in use (`trainer.model.attention.resolve`)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        targets: torch.Tensor,
        *,
        temperature: float = 1.0,
        packed: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-prob pass: `(logp, entropy)` of `targets`, float32, shaped like `targets`.

        Args:
            input_ids: `[B, L]` prompt + response tokens, right-padded; packed: `[1, N]`.
            attention_mask: `[B, L]` 1 on real tokens; unused when packed (None).
            targets: `[B, L - 1]` the next token at each position, -100 where nothing is scored; packed `[1, N]`.
            packed: a packed row's `trainer.model.attention.packed_model_kwargs` (position ids, attention arguments).
        """
        hidden, weight = self._hidden(input_ids, attention_mask, packed), self.adapter.head_weight
        return self._logprobs(hidden, weight, targets, temperature)

    def loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        targets: torch.Tensor,
        args: LossArgs,
        *,
        temperature: float = 1.0,
        packed: dict[str, Any] | None = None,
        advantages_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss pass: `(loss, metrics)` as `fastslow.kernels.linear_grpo_loss` gives them, for `args`; the inputs
        as in `forward`. A second FSDP2 forward method (`FSDP_FORWARD_METHODS`): the root's parameters are gathered
        around it as around `forward`.

        `advantages_of`: the off-policy correction with the proximal log-probs taken here (`trainer.offpolicy.
        ForwardCorrection`): it gets the micro-batch's own log-probs (no gradient, shaped like `targets`) and gives
        the advantages that replace `args.advantages`."""
        hidden, weight = self._hidden(input_ids, attention_mask, packed), self.adapter.head_weight
        if advantages_of is not None:
            with torch.no_grad():
                logp = self._logprobs(hidden.detach(), weight.detach(), targets, temperature, with_entropy=False)[0]
            args = dataclasses.replace(args, advantages=advantages_of(logp))
        kwargs = args.as_kwargs()
        if self.kernels == "reference":
            return linear_grpo_loss_ref(hidden, weight, targets, temperature=temperature, eager=True, **kwargs)
        return linear_grpo_loss(hidden, weight, targets, temperature=temperature, **kwargs)

    def _logprobs(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        *,
        with_entropy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(logp, entropy)` of `targets` from `hidden` and the head `weight` with the kernels in use (the
        reference always gives the entropy)."""
        if self.kernels == "reference":
            return token_logprobs_ref(hidden, weight, targets, temperature=temperature)
        return token_logprobs(hidden, weight, targets, temperature=temperature, with_entropy=with_entropy)

    def _hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, packed: dict[str, Any] | None
    ) -> torch.Tensor:
        """The decoder's last hidden states at the positions that predict `targets`: `[B, L - 1, H]` or `[1, N, H]`."""
        decoder = self.adapter.decoder
        if packed is not None:
            return decoder(input_ids=input_ids, **packed).last_hidden_state
        return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
