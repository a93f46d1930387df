"""The `hf_process` engine (trainer/rollout/hf_process.py): the hf engine in a process of its own gives the
in-process engine's completions and log-probs for the same weights and seeds, takes weight updates between requests,
and reports a dead or stuck child in one line."""

from __future__ import annotations

import _tiny
import pytest
import torch

from trainer.rollout import HFEngine, SamplingParams
from trainer.rollout.hf_process import HFProcessEngine
from trainer.weight_sync import ModelWeightStream

pytestmark = pytest.mark.slow


def _sampling(seed: int) -> SamplingParams:
    return SamplingParams(n=3, temperature=1.0, max_new_tokens=6, stop_token_ids=[2], seed=seed, logprobs=True)


def test_same_completions_as_the_in_process_engine_and_updates_land() -> None:
    torch.set_num_threads(1)  # the child's thread count: the same float summation order
    trained = _tiny.tiny_lm(0).eval()
    local = HFEngine(lambda: _tiny.tiny_lm(5), pad_token_id=0, device="cpu", dtype=torch.float32)
    child = HFProcessEngine(trained.config, pad_token_id=0, device="cpu", dtype=torch.float32, timeout_s=120)
    try:
        prompts = [[5, 6, 7], [9]]
        for seed in (1, 2):
            for engine in (local, child):
                engine.update_weights(ModelWeightStream(trained, bucket_bytes=4096))
            a, b = local.generate(prompts, _sampling(seed)), child.generate(prompts, _sampling(seed))
            assert [[list(c) for c in g] for g in a] == [[list(c) for c in g] for g in b]
            for ga, gb in zip(a, b):
                for ca, cb in zip(ga, gb):
                    assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-6)
            with torch.no_grad():  # an optimizer step's worth of change for the next round
                for p in trained.parameters():
                    p.add_(0.05 * torch.randn_like(p))
    finally:
        child.close()
    assert not child._proc.is_alive()


def test_a_dead_child_is_one_line() -> None:
    child = HFProcessEngine(_tiny.tiny_lm(0).config, pad_token_id=0, device="cpu", dtype=torch.float32, timeout_s=30)
    child._proc.kill()
    child._proc.join(10)
    with pytest.raises(RuntimeError, match=r"hf_process engine: .*(died|no answer)"):
        child.generate([[5]], _sampling(0))
    child.close()
