"""Weight sync from FSDP2 shards into the rollout engine: ours against the routes people take, in GB/s.

The trained side is what the trainer builds: a `trainer.policy.Policy` around a Qwen2, wrapped by
`trainer.dist.parallelize` (`fully_shard` per decoder block, then the root) on the session's process group of one
(world size 1, in this process: gloo on the CPU, nccl on CUDA), float32 weights (bf16 only for compute on a GPU,
as the trainer's mixed precision). The receiving side is an `HFEngine` holding its own copy in the engine dtype
(bf16 on a GPU, fp32 on the CPU). Providers, into the same engine from the same model:
- `ours`: `trainer.weight_sync.sync_weights` as the trainer calls it, with its default bucket
  (`rollout.sync_bucket_mb` = 64 MiB) and the engine's dtype on the wire: full tensors gathered bucket by bucket,
  cast, each copied into the engine, one bucket of extra memory at a time;
- `ours_bucket<size>`: the same with another bucket size (1 GiB on a GPU, 4 MiB on the CPU);
- `dcp_full_state_dict`: the usual route from FSDP2, `torch.distributed.checkpoint.state_dict.get_model_state_dict(
  model, options=StateDictOptions(full_state_dict=True))` (every full tensor at once, on the device), names mapped
  (`trainer.model.names.hf_name`), then `engine.model.load_state_dict(...)`;
- `unsharded_load_state_dict`: no FSDP at all, `engine.model.load_state_dict(plain.state_dict())` from an unsharded
  float32 copy of the model on the same device: the copy-speed reference, what a sync costs without the gathers.

GB/s counts memory traffic, as the suite's copy ceiling does: each parameter read once from the trained model and
written once into the engine, `numel * (4 + engine element size)` bytes (the tied embedding once). That is the least
any sync moves; the gathers' own copies and the tied matrix that `load_state_dict` copies twice are not counted.
`payload_gbps` in the JSON is the same time against the bytes sent alone (`sync_weights`' "bytes": the full
tensors in the engine's dtype).

Models: on a GPU, random-init Qwen2s with the shapes of Qwen2.5-0.5B (494M parameters) and Qwen2.5-1.5B (1.54B);
on the CPU a scaled-down Qwen2 (hidden 256, 4 layers, vocabulary 32768: 13.7M parameters, 55 MB in fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import Qwen2Config, Qwen2ForCausalLM

from bench._harness import GiB, MiB, bench_device, dtype_name, free_memory, run_case
from bench._models import QWEN25_05B, QWEN25_15B, ModelConfig
from trainer.config import RolloutConfig
from trainer.dist import parallelize
from trainer.model.names import hf_name
from trainer.policy import Policy
from trainer.rollout import HFEngine
from trainer.weight_sync import sync_weights

DEFAULT_BUCKET = RolloutConfig().sync_bucket_bytes  # the trainer's default bucket (64 MiB)


QWEN2_MINI = ModelConfig("qwen2-mini", 256, 1536, 4, 8, 2, 32, 32768)

DEVICE = bench_device()
ON_GPU = DEVICE.type == "cuda"
MODELS = [QWEN25_05B, QWEN25_15B] if ON_GPU else [QWEN2_MINI]
ENGINE_DTYPE = torch.bfloat16 if ON_GPU else torch.float32
OTHER_BUCKET = GiB if ON_GPU else 4 * MiB


def _size_name(n_bytes: int) -> str:
    return f"{n_bytes // GiB}gib" if n_bytes >= GiB else f"{n_bytes // MiB}mib"


PROVIDERS = ("ours", f"ours_bucket{_size_name(OTHER_BUCKET)}", "dcp_full_state_dict", "unsharded_load_state_dict")


def build_lm(config: Qwen2Config, device: torch.device, seed: int) -> Qwen2ForCausalLM:
    """A float32 Qwen2 initialised on `device` itself (a 1.5B model's init on the host would take longer than the
    whole benchmark); the values do not matter to a copy, only that they are finite."""
    torch.manual_seed(seed)
    with torch.device(device):
        return Qwen2ForCausalLM(config)


@dataclass
class Pair:
    """The FSDP2-wrapped trained model and the engine it syncs into."""

    model: ModelConfig
    policy: Policy
    engine: HFEngine
    numel: int

    @property
    def payload_bytes(self) -> int:
        """The full tensors in the engine's dtype: what `sync_weights` sends."""
        return self.numel * ENGINE_DTYPE.itemsize

    @property
    def traffic_bytes(self) -> int:
        """Each parameter read once in float32 and written once in the engine's dtype."""
        return self.numel * (4 + ENGINE_DTYPE.itemsize)


@pytest.fixture(scope="module", params=[pytest.param(m, id=m.name) for m in MODELS])
def pair(request: pytest.FixtureRequest, dist_info: Any, device: torch.device) -> Iterator[Pair]:
    model: ModelConfig = request.param
    config = model.hf_config()
    policy = Policy(build_lm(config, device, seed=0))
    parallelize(policy, dist_info, mixed_precision=ON_GPU, activation_checkpointing=False)
    engine = HFEngine(
        lambda: build_lm(config, device, seed=1), pad_token_id=0, device=device, dtype=ENGINE_DTYPE
    )  # the engine's own, different weights until the first sync
    numel = sum(p.numel() for p in policy.parameters())  # DTensors report the full shape; the tied matrix once
    made = Pair(model, policy, engine, numel)
    del policy, engine
    yield made
    made.engine.close()
    del made.policy, made.engine  # the last references: pytest keeps `made` until teardown ends
    free_memory(device)


def _dcp_sync(policy: Policy, engine: HFEngine) -> None:
    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True))
    engine.model.load_state_dict({hf_name(k, "lm."): v for k, v in state.items()})
    del state


@torch.no_grad()
def _engine_checksum(engine: HFEngine) -> float:
    """Sum of the engine's weights in float64: equal for every provider when each delivered the same values."""
    return float(sum(p.double().sum() for p in engine.model.parameters()))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_weight_sync(benchmark: Any, device: torch.device, ceil: dict, pair: Pair, provider: str) -> None:
    """Every parameter of the trained model into the engine, full tensors, by the HF names."""
    policy, engine = pair.policy, pair.engine
    extra: dict[str, Any] = {
        "model": pair.model.name,
        "numel": pair.numel,
        "payload_bytes": pair.payload_bytes,
        "trainer_dtype": "fp32",
        "engine_dtype": dtype_name(ENGINE_DTYPE),
        "world": 1,
    }
    stats: dict[str, float] = {}

    if provider.startswith("ours"):
        bucket = DEFAULT_BUCKET if provider == "ours" else OTHER_BUCKET

        def sync() -> None:
            stats.update(sync_weights(policy, engine, bucket_bytes=bucket, prefix="lm.", dtype=ENGINE_DTYPE))

        extra["bucket_bytes"] = bucket
    elif provider == "dcp_full_state_dict":
        sync = lambda: _dcp_sync(policy, engine)
    else:
        source = build_lm(pair.model.hf_config(), device, seed=0).state_dict()  # the policy's initial values
        sync = lambda: engine.model.load_state_dict(source)

    with torch.no_grad():  # another provider's sync left the right values: make this one deliver them again
        for p in engine.model.parameters():
            p.normal_()
    check: Callable[[], float] = lambda: _engine_checksum(engine)
    info = run_case(
        benchmark, sync, group="weight_sync", provider=provider, shape=pair.model.name,
        dtype=f"fp32->{dtype_name(ENGINE_DTYPE)}", mode="full-sync",
        device=device, bytes_moved=pair.traffic_bytes, check=check, extra=extra,
    )  # fmt: skip
    benchmark.extra_info["payload_gbps"] = pair.payload_bytes / (info["median_ms"] * 1e-3) / 1e9
    if stats:
        assert stats["bytes"] == pair.payload_bytes, "sync_weights did not send every parameter once"
        benchmark.extra_info["buckets"] = stats["buckets"]
