"""Server mode through the worker extension: trainer rank 0 broadcasts each bucket into the server's workers.

Trainer rank 0 opens a group with the server's workers and, per weight update, asks them over `/collective_rpc`
to open the update (`fastslow_begin_update`), to receive each bucket (`fastslow_receive`, in a thread, since both
sides must be inside the broadcast) while it broadcasts the bucket's tensors one by one, and to close the update
(`fastslow_finish_update`, which answers how many tensors each worker loaded). The other ranks only drain the
stream (its FSDP2 gathers are collective). The server must run with
`--worker-extension-cls trainer.rollout.vllm_worker.WeightLoaderExtension` (fastslow installed in its
environment) and `VLLM_SERVER_DEV_MODE=1`.

The group: on a GPU, vLLM's `StatelessProcessGroup` with a `PyNcclCommunicator` (the pieces of vLLM's classic RLHF
example). On a CPU, where every vLLM weight-transfer backend needs CUDA, a gloo group from vLLM's
`stateless_init_torch_distributed_process_group`, whose store the trainer hosts from a socket it has bound first:
under torchrun a rendezvous by address would join torchrun's own agent store instead, and the group never forms.
"""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from trainer.rollout.base import WeightStream
from trainer.rollout.vllm_worker import GlooBroadcaster


def open_group(client: Any, *, host: str, port: int, server_workers: int, cpu: bool) -> Any:
    """Rank 0's end of the weight group (size 1 + `server_workers`): the workers join over `/collective_rpc` while
    this process waits in the rendezvous. Returns an object with `broadcast(tensor, src, stream)`."""
    world = 1 + server_workers
    spec = json.dumps({"host": host, "port": port, "world_size": world, "rank_offset": 1})
    listen = None
    if cpu:  # bound before the workers are asked to connect, so they cannot race the store's start
        listen = socket.create_server((host, port), reuse_port=False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        joined = pool.submit(client.collective_rpc, "fastslow_init_group", [spec])
        try:
            if cpu:
                from vllm.distributed.utils import stateless_init_torch_distributed_process_group

                group = stateless_init_torch_distributed_process_group(
                    host, port, 0, world, "gloo", listen_socket=listen
                )
                comm: Any = GlooBroadcaster(group)
            else:
                from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
                from vllm.distributed.utils import StatelessProcessGroup

                nccl = StatelessProcessGroup.create(host=host, port=port, rank=0, world_size=world)
                comm = PyNcclCommunicator(nccl, device=torch.cuda.current_device())
        finally:
            if listen is not None and listen.fileno() != -1:  # not handed over to the store
                listen.close()
        joined.result()
    return comm


class ExtensionSender:
    """Rank 0's endpoint towards the server's workers (group size 1 + `server_workers`); inert on other ranks."""

    def __init__(
        self, client: Any, *, rank: int, master_address: str, master_port: int, server_workers: int, cpu: bool
    ) -> None:
        self.client, self.rank, self.server_workers = client, rank, server_workers
        self.comm: Any = None
        if rank == 0:
            self.comm = open_group(
                client, host=master_address, port=master_port, server_workers=server_workers, cpu=cpu
            )

    def send(self, stream: WeightStream) -> None:
        """Every bucket of `stream` to the workers (all ranks call this; only rank 0 sends). Raises when a worker
        loaded another number of tensors than the stream holds."""
        if self.comm is not None:
            self.client.collective_rpc("fastslow_begin_update", [])
        sent = 0
        for bucket in stream.buckets():
            if self.comm is not None:
                self._send_bucket(bucket)
            sent += len(bucket)
            del bucket
        if self.comm is not None:
            loaded = [int(n) for n in self.client.collective_rpc("fastslow_finish_update", []) or []]
            if len(loaded) != self.server_workers or any(n != sent for n in loaded):
                raise RuntimeError(
                    f"vllm server: the weight update sent {sent} tensors, the {self.server_workers} worker(s) "
                    f"loaded {loaded}; check rollout.vllm.server_workers against the server's workers"
                )

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
