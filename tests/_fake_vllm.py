"""The stand-in `vllm` package of the CPU tests: vLLM 0.33's API as the engines use it, as strict as the real one.

Same signatures (`collective_rpc(method, timeout=None, args=(), kwargs=None)`, keyword-only init-info fields, the
NCCL info's required address, port and world size, `packed=True` by default), unknown keywords of `LLM` and
`SamplingParams` rejected, the senders talking to the client from rank 0 only, the IPC sender sending one update per
packed chunk and refusing a tensor larger than its buffer (vLLM's `packed_tensor.py`), `reset_prefix_cache`
answering a bool, `collective_rpc` calling the worker extension's method itself. `install(monkeypatch)` puts it in
`sys.modules`.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import sys
import types
import typing
from types import SimpleNamespace

import torch

# `vllm.LLM(model, *, ...)`'s own keywords and the `EngineArgs` fields its **kwargs go to (a dataclass: anything
# else is a TypeError), those an RL trainer may pass; vLLM 0.33.
_LLM_KEYWORDS = frozenset((
    "runner", "convert", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code",
    "tensor_parallel_size", "dtype", "quantization", "revision", "seed", "gpu_memory_utilization", "swap_space",
    "cpu_offload_gb", "enforce_eager", "hf_overrides", "compilation_config", "distributed_executor_backend",
    "max_model_len", "enable_sleep_mode", "load_format", "generation_config", "logprobs_mode",
    "enable_prefix_caching", "worker_extension_cls", "weight_transfer_config", "data_parallel_size",
    "pipeline_parallel_size", "max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype",
))  # fmt: skip
# `vllm.SamplingParams` fields (a msgspec struct: an unknown keyword is a TypeError).
_SAMPLING_KEYWORDS = frozenset((
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k", "min_p",
    "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs",
    "flat_logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "truncate_prompt_tokens", "output_kind", "structured_outputs", "logit_bias",
    "allowed_token_ids", "extra_args", "bad_words",
))  # fmt: skip


def _reject_unknown(owner: str, kwargs: dict, allowed: frozenset[str]) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"{owner}() got unexpected keyword arguments {unknown}")


class FakeWorker:
    """vLLM's GPU worker with the engine's worker extension mixed in, its model recording what it loads."""

    def __init__(self, loaded: dict[str, torch.Tensor]) -> None:
        from trainer.rollout.vllm_worker import WeightLoaderExtension

        worker = type("Worker", (WeightLoaderExtension,), {})()
        worker.model_runner = SimpleNamespace(
            model=SimpleNamespace(load_weights=lambda weights: loaded.update((n, t.clone()) for n, t in weights))
        )
        self.extension = worker


class FakeLLM:
    """Records calls; `generate` answers completion [p[-1] + 1, stop] for each prompt."""

    instances: typing.ClassVar[list[FakeLLM]] = []
    reset_answer: typing.ClassVar[bool] = True  # vLLM's reset_prefix_cache() answers whether it could

    def __init__(self, model: str, **kwargs) -> None:
        _reject_unknown("LLM", kwargs, _LLM_KEYWORDS)
        self.kwargs = {"model": model, **kwargs}
        self.calls: list[tuple] = []
        self.loaded: dict[str, torch.Tensor] = {}
        self.worker = FakeWorker(self.loaded) if kwargs.get("worker_extension_cls") else None
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        params = sampling_params
        self.calls.append(("generate", len(prompts)))
        self.prompts = [p["prompt_token_ids"] for p in prompts]
        self.seeds = [sp.kwargs["seed"] for sp in params]
        outs = []
        for p, sp in zip(prompts, params):
            stop = sp.kwargs["stop_token_ids"][0]
            comps = [SimpleNamespace(index=j, token_ids=[p["prompt_token_ids"][-1] + 1, stop], logprobs=None)
                     for j in range(sp.kwargs["n"])]  # fmt: skip
            outs.append(SimpleNamespace(outputs=comps))
        return outs

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None) -> None:
        self.calls.append(("wake_up", tuple(tags or ())))

    def reset_prefix_cache(self, reset_running_requests: bool = False) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return FakeLLM.reset_answer

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        """Calls `method` on the (one) worker, as vLLM does on each: a missing method is an AttributeError there."""
        self.calls.append(("collective_rpc", method))
        if self.worker is None:
            raise AttributeError(f"the worker has no method {method!r} (no worker_extension_cls)")
        return [getattr(self.worker.extension, method)(*args, **(kwargs or {}))]

    # the RL mixin (vLLM 0.33 `RLOfflineMixin`): request dicts
    def init_weight_transfer_engine(self, request) -> None:
        self.calls.append(("init_weight_transfer_engine", request["init_info"]))

    def start_weight_update(self) -> None:
        self.calls.append(("start_weight_update",))

    def update_weights(self, request) -> None:
        self.calls.append(("update_weights",))

    def finish_weight_update(self, weight_version=None) -> None:
        self.calls.append(("finish_weight_update",))


class FakeSamplingParams:
    def __init__(self, **kwargs) -> None:
        _reject_unknown("SamplingParams", kwargs, _SAMPLING_KEYWORDS)
        self.kwargs = kwargs


@dataclasses.dataclass(frozen=True)
class FakeParamMeta:
    name: str
    dtype: torch.dtype
    shape: tuple


class FakeWeightSource:
    """vLLM 0.33's `WeightSource`: `metadata` is a property (0.32 has a method; `StreamSource` serves both)."""

    @property
    def metadata(self):
        raise NotImplementedError


def packed_chunks(tensors, buffer_bytes: int):
    """vLLM's packed producer: consecutive tensors up to `buffer_bytes` per chunk; a larger tensor is a ValueError."""
    chunk, size = [], 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > buffer_bytes:
            raise ValueError(f"tensor {name} of {nbytes} bytes is larger than the packed buffer ({buffer_bytes})")
        if chunk and size + nbytes > buffer_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, tensor.clone()))
        size += nbytes
    if chunk:
        yield chunk


class FakeFactory:
    built: typing.ClassVar[list[tuple]] = []

    @classmethod
    def trainer_init(cls, info, *, client, source):
        sender = SimpleNamespace(info=info, client=client, source=source, sends=[], updates=0, shutdown=lambda: None)
        ipc = isinstance(info, FakeIPCTrainerInitInfo)
        talks = info.rank == 0  # vLLM's senders call the client from rank 0 only

        def send_weights() -> None:  # start, one update per packed chunk (IPC) or one for all (NCCL), finish
            if talks:
                client.start_weight_update()
            sent = []
            chunks = packed_chunks(source.iter_full(), info.packed_buffer_size_bytes) if info.packed else None
            for chunk in chunks if chunks is not None else [[(n, t.clone()) for n, t in source.iter_full()]]:
                sent += chunk
                if talks and ipc:
                    client.update_weights({"names": [n for n, _ in chunk]})
                    sender.updates += 1
            if talks and not ipc:
                client.update_weights({"names": [n for n, _ in sent]})
                sender.updates += 1
            sender.sends.append(sent)
            if talks:
                client.finish_weight_update()

        sender.send_weights = send_weights
        if talks:
            client.init_weight_transfer_engine({"packed": info.packed})
        cls.built.append((info, sender))
        return sender


class FakeHTTPSync:
    """vLLM's HTTP weight-sync client: the four control-plane calls, recorded."""

    def __init__(self, base_url: str) -> None:
        self.base_url, self.calls = base_url, []

    def init_weight_transfer_engine(self, init_info) -> None:
        self.calls.append("init")

    def start_weight_update(self) -> None:
        self.calls.append("start")

    def update_weights(self, update_info) -> None:
        self.calls.append("update")

    def finish_weight_update(self, weight_version=None) -> None:
        self.calls.append("finish")


@dataclasses.dataclass(kw_only=True)
class FakeIPCTrainerInitInfo:
    rank: int
    packed: bool = True
    packed_buffer_size_bytes: int = 1 << 30


@dataclasses.dataclass(kw_only=True)
class FakeNCCLTrainerInitInfo:
    rank: int
    master_address: str
    master_port: int
    world_size: int
    packed: bool = True
    packed_buffer_size_bytes: int = 1 << 30


def install(monkeypatch: typing.Any) -> dict[str, types.ModuleType]:
    """A `vllm` package with the names the engines import, native weight transfer included."""
    FakeLLM.instances, FakeFactory.built, FakeLLM.reset_answer = [], [], True
    mods = {}
    for name in (
        "vllm", "vllm.distributed", "vllm.distributed.weight_transfer", "vllm.distributed.weight_transfer.clients",
        "vllm.distributed.weight_transfer.ipc_engine", "vllm.distributed.weight_transfer.nccl_engine",
    ):  # fmt: skip
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mods[name] = mod
        monkeypatch.setitem(sys.modules, name, mod)
    mods["vllm"].LLM, mods["vllm"].SamplingParams = FakeLLM, FakeSamplingParams
    wt = mods["vllm.distributed.weight_transfer"]
    wt.ParamMeta, wt.WeightSource, wt.WeightTransferTrainerFactory = FakeParamMeta, FakeWeightSource, FakeFactory
    wt.TrainerWeightTransferEngine = object
    mods["vllm.distributed.weight_transfer.clients"].HTTPVLLMWeightSyncClient = FakeHTTPSync
    mods["vllm.distributed.weight_transfer.ipc_engine"].IPCTrainerInitInfo = FakeIPCTrainerInitInfo
    mods["vllm.distributed.weight_transfer.nccl_engine"].NCCLTrainerInitInfo = FakeNCCLTrainerInitInfo
    monkeypatch.delitem(sys.modules, "trainer.rollout.vllm_transfer", raising=False)
    return mods
