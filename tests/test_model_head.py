"""A model whose logits are transformed after the LM head is refused before any work (issue 26's `check_head`):
the fused kernels take `hidden @ lm_head.weight.T`, so such a model would train on other log-probs than the engine
samples from, silently. One case per refused kind; the plain layouts pass."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from trainer.build import check_layout, meta_model

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (T.Gemma2Config(**SMALL, num_key_value_heads=1, head_dim=16), "final_logit_softcapping = 30.0"),
        (T.CohereConfig(**SMALL, num_key_value_heads=1), "logit_scale = 0.0625"),
        (T.GraniteConfig(**SMALL, num_key_value_heads=1, logits_scaling=8.0), "logits_scaling = 8.0"),
    ],
    ids=["gemma2-softcap", "cohere-logit-scale", "granite-logits-scaling"],
)
def test_a_transformed_head_is_refused(config, named: str) -> None:
    with pytest.raises(ValueError, match="transforms its logits after the head") as err:
        meta_model(config)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_head_bias_is_refused() -> None:
    model = meta_model(T.Qwen2Config(**SMALL, num_key_value_heads=1))
    check_layout(model)  # the plain Qwen2 head passes
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(64))
    with pytest.raises(ValueError, match="has a bias on its LM head"):
        check_layout(model)


@pytest.mark.parametrize(
    "config",
    [
        T.Qwen2Config(**SMALL, num_key_value_heads=1),
        T.LlamaConfig(**SMALL, num_key_value_heads=1),
        T.Gemma2Config(**SMALL, num_key_value_heads=1, head_dim=16, final_logit_softcapping=None),
        T.GraniteConfig(**SMALL, num_key_value_heads=1, logits_scaling=1.0),
    ],
    ids=["qwen2", "llama", "gemma2-no-softcap", "granite-unscaled"],
)
def test_plain_heads_pass(config) -> None:
    meta_model(config)


def test_one_engine_dtype_for_training_and_evaluation() -> None:
    """Before: on a CPU with `model.dtype = "bfloat16"` training sampled from a bf16 engine and `python -m
    trainer.eval` from an fp32 one. Both now ask `trainer.model.engine_dtype`."""
    from types import SimpleNamespace

    from trainer.model import engine_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    bf16, fp32 = torch.bfloat16, torch.float32
    cases = {("bfloat16", cpu): bf16, ("auto", cpu): fp32, ("float32", cpu): fp32,
             ("bfloat16", gpu): bf16, ("auto", gpu): bf16, ("float32", gpu): fp32}  # fmt: skip
    for (dtype, device), want in cases.items():
        assert engine_dtype(SimpleNamespace(dtype=dtype), device) == want, (dtype, device)
    import inspect

    from trainer import trainer
    from trainer.eval import cli as eval_cli

    for module in (eval_cli, trainer):
        source = inspect.getsource(module)
        assert "engine_dtype(" in source and "cfg.model.dtype ==" not in source and "cfg.model.dtype in" not in source
