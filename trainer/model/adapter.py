"""The model contract: the parts of a causal LM that the policy, FSDP2 and construction use, and what is refused.

`ModelAdapter(lm)` names the parts of a Hugging Face decoder-only causal LM that the trainer touches: the decoder
(input ids to last hidden states), its blocks (FSDP2's units), the input embedding and the head weight (the fused
kernels' `[V, H]` matrix, tied or not). A model without that layout is refused when the adapter is made; one whose
logits are transformed after the head is refused by `check_head`. Both are one-line `ValueError`s raised before any
weight is loaded (construction builds on the meta device first: `trainer.model.build.meta_model`).

`new_causal_lm` is the one place that names a model family: the trainer's only Qwen2 special case.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

__all__ = ["HEAD_TRANSFORMS", "ModelAdapter", "new_causal_lm"]

HEAD_TRANSFORMS: tuple[tuple[str, object], ...] = (
    ("final_logit_softcapping", None),  # Gemma-2: logits = cap * tanh(logits / cap)
    ("logit_scale", 1.0),  # Cohere, Cohere2: logits * scale
    ("logits_scaling", 1.0),  # Granite: logits / scaling
    ("lm_head_multiplier", 1.0),  # Falcon-H1: logits * multiplier
)
"""Config keys of models that transform the LM head's output, with the value that means "no transform"."""


def new_causal_lm(config: PretrainedConfig, *, trust_remote_code: bool | None = None) -> PreTrainedModel:
    """A new causal LM of `config`, its weights initialised by the class from the global RNG (the caller seeds it, or
    builds on meta).

    The Qwen2 case (the tiny preset's class) calls the class itself: it initialises in float32, where
    `AutoModelForCausalLM.from_config` initialises in `config.dtype` (bfloat16 in most Hugging Face folders), which
    would give other random weights for the same seed. Every other family goes through `from_config`.
    `trust_remote_code` is passed on to it as given (None: transformers' default).
    """
    if isinstance(config, Qwen2Config):
        return Qwen2ForCausalLM(config)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


class ModelAdapter:
    """The parts of a decoder-only causal LM the trainer uses, read from the live module (FSDP2 may rewrap them).

    The layout: `lm.model` (the decoder) holding `lm.model.layers` (the blocks) and an output embedding (the head),
    as Llama, Qwen2, Mistral and their kin have; anything else (GPT-2's `transformer.h`, BERT's `bert.encoder`) is a
    `ValueError` naming the class. Not an `nn.Module`: holding one adds no parameter names.
    """

    def __init__(self, lm: nn.Module) -> None:
        head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        if not isinstance(getattr(getattr(lm, "model", None), "layers", None), nn.ModuleList) or head is None:
            raise ValueError(
                f"{_what(lm)} has not the decoder-only layout the trainer needs "
                "(`model.layers` blocks and an `lm_head`, as Llama, Qwen2 or Mistral)"
            )
        self.lm = lm

    @property
    def decoder(self) -> nn.Module:
        """The backbone: `decoder(input_ids=[B, L], ...).last_hidden_state` is `[B, L, H]`, before the head."""
        return self.lm.model

    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder's transformer blocks, in order: FSDP2's units (`trainer.dist.parallelize`)."""
        return self.lm.model.layers

    @property
    def embedding(self) -> nn.Module:
        """The input embedding (weight `[V, H]`)."""
        return self.lm.get_input_embeddings()

    @property
    def head_weight(self) -> torch.Tensor:
        """The LM head's weight `[V, H]`: logits are `hidden @ head_weight.T` (`check_head` holds it to that)."""
        return self.lm.get_output_embeddings().weight

    @property
    def tied(self) -> bool:
        """Whether the head weight is the input embedding's tensor."""
        return self.embedding.weight is self.head_weight

    def check_head(self) -> None:
        """Refuse a head whose logits are not `hidden @ head_weight.T`: a `ValueError` in one line naming the key.

        The fused kernels compute log-probs from exactly that, so a model whose logits are transformed after the head
        (Gemma-2's final-logit softcapping, Cohere's and Granite's logit scaling, Falcon-H1's head multiplier, a head
        bias) would train on other log-probs than the engine samples from, silently; it is refused until the kernels
        take the transform.
        """
        config = getattr(self.lm, "config", None)
        for key, neutral in HEAD_TRANSFORMS:
            value = getattr(config, key, neutral)
            if value is not None and value != neutral:
                raise ValueError(
                    f"{_what(self.lm)} transforms its logits after the head ({key} = {value!r}); the fused log-prob "
                    "kernels take the head's raw output, so the trainer's log-probs would not be the engine's: not "
                    "supported yet"
                )
        if getattr(self.lm.get_output_embeddings(), "bias", None) is not None:
            raise ValueError(
                f"{_what(self.lm)} has a bias on its LM head; the fused log-prob kernels take `hidden @ weight.T` "
                "only, so the trainer's log-probs would not be the engine's: not supported yet"
            )


def _what(lm: nn.Module) -> str:
    """How an error names the model: the config key, the class and the model type."""
    kind = getattr(getattr(lm, "config", None), "model_type", "?")
    return f"model.path: a {type(lm).__name__} (model_type {kind!r})"
