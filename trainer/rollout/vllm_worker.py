"""The worker-extension route, for a vLLM without the native weight-transfer API.

vLLM mixes `WeightLoaderExtension` into its GPU worker when built with
`worker_extension_cls="trainer.rollout.vllm_worker.WeightLoaderExtension"` (`--worker-extension-cls` for a server):
- colocated: the engine calls `llm.collective_rpc("fastslow_load_weights", args=(bucket,))`; with the external
  launcher the worker lives in the trainer's own process, so a bucket's tensors are handed over by reference;
- server: trainer rank 0 calls `fastslow_init_nccl` once over the server's `/collective_rpc` route (arguments are
  JSON strings there), then `fastslow_receive` per bucket while it broadcasts the bucket's tensors over that NCCL
  group (trainer = rank 0, the server's workers after it).
This module imports vLLM only inside `fastslow_init_nccl`: the worker supplies `model_runner`, `rank`, `device`.
"""

from __future__ import annotations

import json
from typing import Any

import torch


class WeightLoaderExtension:
    """Methods added to vLLM's worker: load full tensors (HF names) into the worker's model."""

    model_runner: Any  # provided by vLLM's worker
    rank: int
    device: torch.device
    vllm_config: Any

    def fastslow_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """`model.load_weights` on one bucket (vLLM's loader maps HF names to its fused q/k/v and gate/up
        parameters); returns how many tensors were given. Synchronises, so the bucket may be freed afterwards."""
        model = self.model_runner.model
        model.load_weights(weights=weights)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return len(weights)

    def fastslow_init_nccl(self, spec: str) -> None:
        """Join the trainer's NCCL group. `spec`: JSON `{"host", "port", "world_size", "rank_offset"}`; this
        worker's group rank is its global vLLM rank (data-parallel replicas included) + `rank_offset`."""
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        s = json.loads(spec)
        parallel = getattr(getattr(self, "vllm_config", None), "parallel_config", None)
        # the replica's index, as vLLM's own NCCL weight-transfer engine takes it (`data_parallel_index`)
        replica = getattr(parallel, "data_parallel_index", 0) or 0
        per_replica = getattr(parallel, "world_size", 1) or 1
        rank = replica * per_replica + self.rank + int(s["rank_offset"])
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
        self.model_runner.model.load_weights(weights=weights)
        return len(weights)
