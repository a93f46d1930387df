"""The worker-extension route for a vLLM without the native weight-transfer API (colocated mode only).

vLLM mixes `WeightLoaderExtension` into its GPU worker when the `LLM` is built with
`worker_extension_cls="trainer.rollout.vllm_worker.WeightLoaderExtension"`; the engine then calls its method with
`llm.collective_rpc("fastslow_load_weights", args=(bucket,))`. With the external launcher the worker lives in the
trainer's own process, so a bucket's tensors are handed over by reference, not serialised. This module imports
nothing from vLLM: the worker supplies `self.model_runner`.
"""

from __future__ import annotations

from typing import Any

import torch


class WeightLoaderExtension:
    """Methods added to vLLM's worker: load full tensors (HF names) into the worker's model."""

    model_runner: Any  # provided by vLLM's worker

    def fastslow_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """`model.load_weights` on one bucket (vLLM's loader maps HF names to its fused q/k/v and gate/up
        parameters); returns how many tensors were given. Synchronises, so the bucket may be freed afterwards."""
        model = self.model_runner.model
        model.load_weights(weights=weights)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return len(weights)
