"""Server mode without vLLM's native weight transfer: NCCL broadcast into the `WeightLoaderExtension` workers.

Trainer rank 0 opens an NCCL group with the server's workers (vLLM's `StatelessProcessGroup` and
`PyNcclCommunicator`, the pieces of vLLM's classic RLHF example), then for each bucket of the stream it asks the
workers to receive (`/collective_rpc fastslow_receive`, in a thread, since both sides must be inside the broadcast)
and broadcasts the bucket's tensors one by one. The other ranks only drain the stream (its FSDP2 gathers are
collective). The server must run with `--worker-extension-cls trainer.rollout.vllm_worker.WeightLoaderExtension`
(fastslow installed in its environment) and `VLLM_SERVER_DEV_MODE=1`.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from trainer.rollout.base import WeightStream


class ExtensionSender:
    """Rank 0's NCCL endpoint towards the server's workers (group size 1 + `server_workers`); inert on other ranks."""

    def __init__(self, client: Any, *, rank: int, master_address: str, master_port: int, server_workers: int) -> None:
        self.client, self.rank = client, rank
        self.comm: Any = None
        if rank != 0:
            return
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        world = 1 + server_workers
        spec = json.dumps({"host": master_address, "port": master_port, "world_size": world, "rank_offset": 1})
        with ThreadPoolExecutor(max_workers=1) as pool:  # the workers join while rank 0 waits in the rendezvous
            joined = pool.submit(self.client.collective_rpc, "fastslow_init_nccl", [spec])
            group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=0, world_size=world)
            self.comm = PyNcclCommunicator(group, device=torch.cuda.current_device())
            joined.result()

    def send(self, stream: WeightStream) -> None:
        """Every bucket of `stream` to the workers (all ranks call this; only rank 0 sends)."""
        for bucket in stream.buckets():
            if self.comm is not None:
                self._send_bucket(bucket)
            del bucket

    def _send_bucket(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        tensors = [t.contiguous() for _, t in bucket]
        spec = json.dumps(
            {
                "names": [n for n, _ in bucket],
                "dtypes": [str(t.dtype).removeprefix("torch.") for t in tensors],
                "shapes": [list(t.shape) for t in tensors],
            }
        )
        stream = torch.cuda.current_stream() if torch.cuda.is_available() else None
        with ThreadPoolExecutor(max_workers=1) as pool:
            received = pool.submit(self.client.collective_rpc, "fastslow_receive", [spec])
            for tensor in tensors:
                self.comm.broadcast(tensor, src=0, stream=stream)
            if stream is not None:
                stream.synchronize()
            received.result()

    def shutdown(self) -> None:
        """Drop the communicator (the server's side goes with its workers)."""
        self.comm = None
