"""The policy as FSDP2 sees it: a Hugging Face causal LM whose log-probs and loss come from `kernels`.

Wrapping the LM (as `self.lm`) gives FSDP's root a forward of its own: the root's parameters (embeddings, final
norm, LM head) are gathered around `Policy.forward`, so the head's weight is a plain tensor when it reaches
`kernels.token_logprobs` / `kernels.linear_grpo_loss`, and the `[tokens, vocab]` logits are never formed.

Packed rows (`packed=`, built by `trainer.packing`): `input_ids` `[1, N]` holds several sequences back to back, and
the decoder gets the position ids and attention arguments `trainer.attention` makes for `attn_implementation`, so no
token attends across a sequence boundary; the hidden state at every position is kept (the last token of each
sequence simply has no target).

`kernels="reference"` (`model.kernels` in the config) swaps those two for their plain-torch references
(`kernels.token_logprobs_ref`, `kernels.linear_grpo_loss_ref(eager=True)`): full `[tokens, vocab]` logits, a float32
log-softmax, autograd. Slower and memory-hungry, it answers "does the fused path change my run?".
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn

from kernels import linear_grpo_loss, linear_grpo_loss_ref, token_logprobs, token_logprobs_ref
from trainer import attention

Kernels = Literal["fused", "reference"]
KERNELS: tuple[str, ...] = get_args(Kernels)


class Policy(nn.Module):
    """Hidden states from `lm.model`, then the log-prob or loss kernels with `lm.lm_head.weight`."""

    def __init__(self, lm: nn.Module, *, kernels: Kernels = "fused", attn_implementation: str = "auto") -> None:
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(f"Policy: kernels = {kernels!r}; allowed: {', '.join(map(repr, KERNELS))}")
        self.lm = lm
        self.kernels = kernels
        self.attn = attention.configure(lm, attn_implementation)
        """The transformers attention implementation in use (`trainer.attention.resolve`)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        targets: torch.Tensor,
        *,
        temperature: float = 1.0,
        loss_kwargs: dict[str, Any] | None = None,
        packed: dict[str, Any] | None = None,
    ) -> Any:
        """Log-probs and entropies of `targets` (no `loss_kwargs`), or the GRPO loss and its metrics.

        Args:
            input_ids: `[B, L]` prompt + response tokens, right-padded; packed: `[1, N]`.
            attention_mask: `[B, L]` 1 on real tokens; unused when packed (None).
            targets: `[B, L - 1]` the next token at each position, -100 where nothing is scored; packed `[1, N]`.
            loss_kwargs: `kernels.linear_grpo_loss` arguments after `targets` (old_logp, advantages, mask, ...).
            packed: a packed row's `trainer.attention.packed_model_kwargs` (position ids, attention arguments).

        Returns:
            `(logp, entropy)` float32 shaped like `targets`, or `(loss, metrics)` as `linear_grpo_loss` gives them.
        """
        if packed is not None:
            hidden = self.lm.model(input_ids=input_ids, **packed).last_hidden_state
        else:
            hidden = self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        weight = self.lm.lm_head.weight
        if self.kernels == "reference":
            if loss_kwargs is None:
                return token_logprobs_ref(hidden, weight, targets, temperature=temperature)
            return linear_grpo_loss_ref(hidden, weight, targets, temperature=temperature, eager=True, **loss_kwargs)
        if loss_kwargs is None:
            return token_logprobs(hidden, weight, targets, temperature=temperature, with_entropy=True)
        return linear_grpo_loss(hidden, weight, targets, temperature=temperature, **loss_kwargs)
