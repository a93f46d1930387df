"""The hf rollout engine: completion shapes, stop tokens, seeded determinism, greedy decoding, strict weight loading."""

from __future__ import annotations

import importlib.util
import re

import _tiny
import pytest
import torch
import transformers

from trainer.rollout import ENGINES, HFEngine, RolloutEngine, SamplingParams, VLLMUnavailable, build_engine

PAD, STOPS = 0, [1, 2, 3, 4, 5]  # five stop tokens of 40: most completions stop, some run to max_new_tokens
PROMPTS = [[7, 8, 9], [10, 11, 12, 13, 14, 15], [16]]  # different lengths: left padding matters


def tiny_lm(seed: int = 0) -> transformers.PreTrainedModel:
    """The shared tiny Qwen2, in eval mode (the engine generates with it)."""
    return _tiny.tiny_lm(seed).eval()


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine(tiny_lm, pad_token_id=PAD, device="cpu", dtype=torch.float32)


def sampling(**kw) -> SamplingParams:
    return SamplingParams(**{"n": 8, "max_new_tokens": 12, "stop_token_ids": STOPS, "seed": 3, **kw})


def test_engine_satisfies_the_protocol(engine: HFEngine) -> None:
    assert isinstance(engine, RolloutEngine)


def test_generate_gives_n_completions_per_prompt_cut_at_the_first_stop(engine: HFEngine) -> None:
    sp = sampling()
    out = engine.generate(PROMPTS, sp)
    assert len(out) == len(PROMPTS)
    assert all(len(group) == sp.n for group in out)
    stopped = 0
    for completion in (c for group in out for c in group):
        assert 1 <= len(completion) <= sp.max_new_tokens
        assert all(isinstance(t, int) and 0 <= t < 40 for t in completion)
        assert not set(completion[:-1]) & set(STOPS), "a stop token inside a completion: not cut"
        if completion[-1] in STOPS:
            stopped += 1
        else:  # no stop produced: it ran to the limit, and nothing (no padding) follows or precedes it
            assert len(completion) == sp.max_new_tokens
    assert 0 < stopped < len(PROMPTS) * sp.n, "the seed should give both stopped and unfinished completions"


def test_empty_prompt_list_and_empty_prompt(engine: HFEngine) -> None:
    assert engine.generate([], sampling()) == []
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([[3], []], sampling())


def test_same_seed_same_completions_and_trainer_rng_untouched(engine: HFEngine) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = engine.generate(PROMPTS, sampling(seed=11))
    assert torch.equal(torch.get_rng_state(), state), "generate disturbed the global RNG stream"
    torch.rand(5)  # a different global RNG state must not matter either
    assert engine.generate(PROMPTS, sampling(seed=11)) == first
    fresh = HFEngine(tiny_lm, pad_token_id=PAD, device="cpu", dtype=torch.float32)
    assert fresh.generate(PROMPTS, sampling(seed=11)) == first


def test_different_seeds_give_different_completions(engine: HFEngine) -> None:
    assert engine.generate(PROMPTS, sampling(seed=1)) != engine.generate(PROMPTS, sampling(seed=2))


def test_building_the_engine_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    HFEngine(tiny_lm, pad_token_id=PAD, device="cpu", dtype=torch.float32)  # tiny_lm calls manual_seed
    assert torch.equal(torch.get_rng_state(), state)


def _greedy_reference(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Argmax decoding one token at a time on the unpadded prompt, no cache: what greedy generation must give."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        if ids[-1] in STOPS:
            break
    return ids[len(prompt) :]


def test_greedy_equals_argmax_decoding_of_each_unpadded_prompt(engine: HFEngine) -> None:
    sp = sampling(temperature=0.0, n=3)
    out = engine.generate(PROMPTS, sp)
    reference = tiny_lm()
    for prompt, group in zip(PROMPTS, out):
        expected = _greedy_reference(reference, prompt, sp.max_new_tokens)
        assert group == [expected] * sp.n


def test_checkpoint_sampling_defaults_do_not_leak_into_rollouts() -> None:
    """A checkpoint's generation_config.json (here top_k=1: greedy in effect) must not change the sampling."""

    def make_model() -> transformers.PreTrainedModel:
        model = tiny_lm()
        model.generation_config = transformers.GenerationConfig(do_sample=True, top_k=1, repetition_penalty=3.0)
        return model

    engine = HFEngine(make_model, pad_token_id=PAD, device="cpu", dtype=torch.float32)
    (group,) = engine.generate([[7, 8, 9]], sampling(stop_token_ids=[]))
    assert len({tuple(c) for c in group}) > 1, "all samples equal: top_k=1 leaked in"


def test_load_weights_is_strict_and_keeps_tied_weights_tied(engine: HFEngine) -> None:
    model = HFEngine(tiny_lm, pad_token_id=PAD, device="cpu", dtype=torch.bfloat16).model
    eng = HFEngine(tiny_lm, pad_token_id=PAD, device="cpu", dtype=torch.bfloat16)
    with pytest.raises(KeyError, match=re.escape("'model.layers.9.mlp.up_proj.weight'")):
        eng.load_weights([("model.layers.9.mlp.up_proj.weight", torch.zeros(128, 64))])
    with pytest.raises(ValueError, match=re.escape("model.norm.weight")):
        eng.load_weights([("model.norm.weight", torch.zeros(63))])
    new_embed = torch.randn(40, 64)  # float32 in, cast to the engine's bfloat16
    eng.load_weights([("model.embed_tokens.weight", new_embed)])
    assert torch.equal(eng.model.model.embed_tokens.weight, new_embed.bfloat16())
    assert torch.equal(eng.model.lm_head.weight, new_embed.bfloat16()), "lm_head not tied in the engine"
    assert not torch.equal(model.model.embed_tokens.weight, eng.model.model.embed_tokens.weight)


def test_sampling_params_validation() -> None:
    for bad in ({"n": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**{"n": 2, **bad})


def test_build_engine_by_name() -> None:
    kw = {"make_model": tiny_lm, "pad_token_id": PAD, "device": "cpu", "dtype": torch.float32}
    assert "hf" in ENGINES
    assert isinstance(build_engine("hf", **kw), HFEngine)
    if importlib.util.find_spec("vllm") is None:  # CI: the error says how to get it
        with pytest.raises(VLLMUnavailable, match=re.escape("pip install .[vllm]")):
            build_engine("vllm", **kw)
    with pytest.raises(ValueError, match=r"rollout\.engine = 'sglang'.*'hf'"):
        build_engine("sglang", **kw)


def test_closed_engine_refuses_work() -> None:
    eng = HFEngine(tiny_lm, pad_token_id=PAD, device="cpu", dtype=torch.float32)
    eng.sleep()
    eng.wake_up()
    eng.close()
    with pytest.raises(RuntimeError, match="after close"):
        eng.generate(PROMPTS, sampling())


def test_logprobs_are_the_models_own_at_the_sampling_temperature(engine: HFEngine) -> None:
    """With `logprobs=True`, each token's value is log_softmax(logits / T) of a forward over prompt + completion."""
    s = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=6, stop_token_ids=STOPS, seed=3, logprobs=True)
    out = engine.generate(PROMPTS, s)
    model = engine.model
    for prompt, comps in zip(PROMPTS, out):
        for c in comps:
            assert c.logprobs is not None and len(c.logprobs) == len(c) > 0
            ids = torch.tensor([prompt + list(c)])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / 0.7
            expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=1e-4)
    plain = engine.generate(PROMPTS, SamplingParams(n=3, temperature=0.7, max_new_tokens=6, seed=3))
    assert all(c.logprobs is None for comps in plain for c in comps)
