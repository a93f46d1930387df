"""A model whose logits are transformed after the LM head is refused before any work (`ModelAdapter.check_head`):
the fused kernels take `hidden @ lm_head.weight.T`, so such a model would train on other log-probs than the engine
samples from, silently. One case per refused kind; the plain layouts pass; the adapter names their parts."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from trainer.model.adapter import ModelAdapter
from trainer.model.build import meta_model

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (T.Gemma2Config(**SMALL, num_key_value_heads=1, head_dim=16), "final_logit_softcapping = 30.0"),
        (T.CohereConfig(**SMALL, num_key_value_heads=1), "logit_scale = 0.0625"),
        (T.GraniteConfig(**SMALL, num_key_value_heads=1, logits_scaling=8.0), "logits_scaling = 8.0"),
        (T.FalconH1Config(**SMALL, num_key_value_heads=1, lm_head_multiplier=0.5), "lm_head_multiplier = 0.5"),
    ],
    ids=["gemma2-softcap", "cohere-logit-scale", "granite-logits-scaling", "falcon-h1-head-multiplier"],
)
def test_a_transformed_head_is_refused(config, named: str) -> None:
    with pytest.raises(ValueError, match="transforms its logits after the head") as err:
        meta_model(config)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_head_bias_is_refused() -> None:
    model = meta_model(T.Qwen2Config(**SMALL, num_key_value_heads=1))
    ModelAdapter(model).check_head()  # the plain Qwen2 head passes
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(64))
    with pytest.raises(ValueError, match="has a bias on its LM head") as err:
        ModelAdapter(model).check_head()
    assert "\n" not in str(err.value)


def test_another_layout_is_refused() -> None:
    """GPT-2 keeps its blocks in `transformer.h`: no decoder the adapter can name, refused in one line."""
    with pytest.raises(ValueError, match="has not the decoder-only layout") as err:
        meta_model(T.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert "GPT2LMHeadModel" in str(err.value) and "\n" not in str(err.value)


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
    """They build, and the adapter names their parts: the blocks, the decoder, the head weight `[V, H]`, the tie."""
    model = meta_model(config)
    parts = ModelAdapter(model)
    assert len(parts.blocks) == 1 and parts.blocks[0] is model.model.layers[0] and parts.decoder is model.model
    assert parts.head_weight is model.lm_head.weight and tuple(parts.head_weight.shape) == (64, 32)
    assert parts.tied == (model.lm_head.weight is model.model.embed_tokens.weight)


def test_one_engine_dtype_for_training_and_evaluation() -> None:
    """Before: on a CPU with `model.dtype = "bfloat16"` training sampled from a bf16 engine and `python -m
    trainer.eval` from an fp32 one. Both now ask `trainer.model.load.engine_dtype`."""
    from types import SimpleNamespace

    from trainer.model.load import engine_dtype

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


def test_only_the_adapter_reaches_into_the_model() -> None:
    """The contract holds: outside `trainer/model/adapter.py` no trainer code (comments and strings aside) names the
    layout's parts (`.model.layers`, `.lm_head`, `.embed_tokens`); the policy and FSDP2 ask the adapter."""
    import io
    import re
    import tokenize
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "trainer"
    layout = re.compile(r"\.model\.layers\b|\.lm_head\b|\.embed_tokens\b")
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "model" / "adapter.py":
            continue
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
        text = (tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1))  # f-strings: 3.12+
        code = " ".join(t.string for t in tokens if t.type not in text)
        found += [f"{path.relative_to(root.parent)}: {m}" for m in layout.findall(code.replace(" . ", "."))]
    assert not found, found
