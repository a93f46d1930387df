"""Run under torchrun (one process) by tests/test_vllm_gpu.py: the vllm engines for real.

    python tests/_vllm_gpu_check.py --model-dir DIR            # write the model folder (config + tokenizer)
    python -m torch.distributed.run --standalone --nproc_per_node=1 tests/_vllm_gpu_check.py OUT_DIR MODE [URL]

MODE is "native" or "extension" (colocated engine, that weight route) or "server-native" / "server-extension" (a
`vllm serve` at URL, started by the test on another GPU, and that weight route). Builds a small random Qwen2
sharded with FSDP2, streams it into the engine, generates with log-probs and compares them with the trained model's
own, then sleeps, changes the weights, syncs, wakes and compares again. Writes OUT_DIR/result.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch.distributed.fsdp import fully_shard

from trainer.model.tiny import build_tokenizer
from trainer.rollout import SamplingParams
from trainer.rollout.vllm_engine import VLLMColocatedEngine, VLLMServerEngine
from trainer.weight_sync import sync_weights

STOP = 1
# Smaller than the model's largest tensors (the 512 x 256 bf16 embedding and the MLP weights are 256 KiB): vLLM's
# packed IPC / NCCL producer refuses a tensor larger than its buffer, as a real model's embedding would be.
BUCKET = 128 << 10


def trainer_logprobs(model: torch.nn.Module, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log_softmax of the trained model (bf16 forward, float32 softmax) at the completion's tokens, temperature 1."""
    ids = torch.tensor([prompt + completion], device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion, device="cuda")[:, None]).squeeze(-1)


def compare(model: torch.nn.Module, prompts: list[list[int]], out) -> dict[str, float]:
    diffs = []
    for prompt, comps in zip(prompts, out):
        for c in comps:
            diffs.append((trainer_logprobs(model, prompt, list(c)).cpu() - torch.tensor(c.logprobs)).abs())
    every = torch.cat(diffs)
    return {"mean_abs": every.mean().item(), "max_abs": every.max().item(), "tokens": every.numel()}


def write_model_dir(folder: Path) -> None:
    """A Qwen2 config (head size 64, which every vLLM attention backend takes) and the built-in tokenizer."""
    config = transformers.Qwen2Config(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=512, torch_dtype="bfloat16",
    )  # fmt: skip
    config.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)


def main(out_dir: Path, mode: str, url: str | None) -> None:
    dist.init_process_group("nccl")
    torch.cuda.set_device(0)
    if not (out_dir / "model" / "config.json").exists():
        write_model_dir(out_dir / "model")
    config = transformers.AutoConfig.from_pretrained(out_dir / "model")
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).float().cuda()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    if mode.startswith("server-"):
        engine = VLLMServerEngine(
            base_url=str(url), rank=0, nccl_address="127.0.0.1", nccl_port=free_port(), server_workers=1,
            bucket_bytes=BUCKET, timeout_s=120, weight_transfer=mode.removeprefix("server-"),
        )  # fmt: skip
        result: dict = {"route": f"server-{engine.route}"}
    else:
        engine = VLLMColocatedEngine(
            model_dir=str(out_dir / "model"), dtype=torch.bfloat16, seed=0, rank=0, world=1,
            gpu_memory_utilization=0.2, max_model_len=256, sleep_level=2, enforce_eager=True, weight_transfer=mode,
            bucket_bytes=BUCKET,
        )  # fmt: skip
        result = {"route": engine.route}
    sync = sync_weights(model, engine, bucket_bytes=BUCKET, dtype=torch.bfloat16)
    result["sync"] = sync
    result["bucket_bytes"] = BUCKET
    result["largest_tensor_bytes"] = max(p.numel() * 2 for p in model.parameters())  # bf16 on the wire
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, stop_token_ids=[STOP], seed=1, logprobs=True)
    first = engine.generate(prompts, sampling)
    result["first"] = compare(model, prompts, first)

    free_awake = torch.cuda.mem_get_info()[0]
    engine.sleep()
    result["freed_by_sleep_bytes"] = torch.cuda.mem_get_info()[0] - free_awake
    with torch.no_grad():  # new weights: the engine must generate from these after the sync
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sync_weights(model, engine, bucket_bytes=BUCKET, dtype=torch.bfloat16)
    engine.wake_up()
    second = engine.generate(prompts, sampling)
    result["second"] = compare(model, prompts, second)
    result["tokens_differ"] = [list(c) for cs in first for c in cs] != [list(c) for cs in second for c in cs]
    engine.close()
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    if sys.argv[1] == "--model-dir":
        write_model_dir(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
