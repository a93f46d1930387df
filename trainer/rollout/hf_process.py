"""The `hf_process` rollout engine: the hf engine in a process of its own, so generation can run on other cores while
the trainer trains (`rollout.max_staleness > 0`, trainer/async_rollout.py) and be timed without vLLM.

The child builds the model's architecture from its config (`trainer.model.build.empty_model`), runs an `HFEngine` on it
with one CPU thread (`FASTSLOW_ROLLOUT_THREADS`; `FASTSLOW_ROLLOUT_CPUS=1` pins it to core 1) or its GPU, and
answers requests over a pipe: generate (prompts, sampling) -> completions as plain lists; load (one bucket of
`(hf_name, tensor)`, the tensors in shared memory through torch.multiprocessing's pickler) -> the count loaded;
close. Requests are answered in order, one at a time, so a weight load never lands inside a generation. A child that
dies or does not answer within `timeout_s` is one `RuntimeError` line.
"""

from __future__ import annotations

import multiprocessing.connection
import os
from typing import Any

import torch
import torch.multiprocessing as mp

from trainer.rollout.base import Completion, SamplingParams, WeightStream, check_prompts


def _child(conn: multiprocessing.connection.Connection, config: Any, dtype: torch.dtype, device: str, pad: int) -> None:
    """The rollout process: an HFEngine on `config`'s architecture, serving requests until "close"."""
    torch.set_num_threads(int(os.environ.get("FASTSLOW_ROLLOUT_THREADS", "1")))
    cpus = os.environ.get("FASTSLOW_ROLLOUT_CPUS")  # e.g. "1": keep the rollout process off the trainer's core
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    from trainer.model.build import empty_model
    from trainer.rollout.hf import HFEngine

    engine = HFEngine(lambda: empty_model(config, device=torch.device(device), dtype=dtype), pad_token_id=pad,
                      device=device, dtype=dtype)  # fmt: skip
    conn.send(("ready", None))
    while True:
        kind, payload = conn.recv()
        try:
            if kind == "generate":
                prompts, sampling = payload
                out = engine.generate(prompts, sampling)
                conn.send(("ok", [[(list(c), c.logprobs) for c in group] for group in out]))
            elif kind == "load":
                engine.load_weights(payload)
                conn.send(("ok", len(payload)))
            elif kind == "close":
                conn.send(("ok", None))
                return
        except Exception as exc:  # reported to the trainer, which raises it as one line
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class HFProcessEngine:
    """`RolloutEngine` over a child process running the hf engine; see the module docstring."""

    def __init__(
        self, model_config: Any, *, pad_token_id: int, device: torch.device | str, dtype: torch.dtype,
        timeout_s: float = 600.0,
    ) -> None:  # fmt: skip
        self.timeout_s = timeout_s
        ctx = mp.get_context("spawn")
        self._conn, child_end = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child, args=(child_end, model_config, dtype, str(torch.device(device)), pad_token_id),
            name="fastslow-rollout", daemon=True,
        )  # fmt: skip
        self._proc.start()
        child_end.close()
        self._answer("start")

    def _answer(self, what: str) -> Any:
        if not self._conn.poll(self.timeout_s):
            state = "is stuck" if self._proc.is_alive() else f"died, exit {self._proc.exitcode}"
            raise RuntimeError(
                f"hf_process engine: no answer to {what} within {self.timeout_s:g} s (the rollout process {state})"
            )
        try:
            kind, payload = self._conn.recv()
        except EOFError as exc:
            raise RuntimeError(
                f"hf_process engine: the rollout process died during {what} (exit {self._proc.exitcode})"
            ) from exc
        if kind == "error":
            raise RuntimeError(f"hf_process engine: {what} failed in the rollout process: {payload}")
        return payload

    def _send(self, message: tuple[str, Any], what: str) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            raise RuntimeError(
                f"hf_process engine: the rollout process died before {what} (exit {self._proc.exitcode})"
            ) from exc

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """`out[i][j]`: the j-th completion of `prompt_ids[i]` (see `RolloutEngine.generate`)."""
        check_prompts(prompt_ids, "hf_process engine")
        self._send(("generate", ([list(p) for p in prompt_ids], sampling)), "generate")
        groups = self._answer("generate")
        return [[Completion(ids, logp) for ids, logp in group] for group in groups]

    def update_weights(self, stream: WeightStream) -> None:
        """Each bucket to the child in turn (shared-memory tensors); it copies them into its model."""
        for bucket in stream.buckets():
            self._send(("load", [(name, t.detach().cpu().contiguous()) for name, t in bucket]), "a weight load")
            self._answer("a weight load")
            del bucket

    def sleep(self) -> None:
        """No-op: the child keeps its weights."""

    def wake_up(self) -> None:
        """No-op (see `sleep`)."""

    def close(self) -> None:
        """Stop the child (asked first, then terminated)."""
        if self._proc.is_alive():
            try:
                self._conn.send(("close", None))
                self._conn.poll(10)
            except (OSError, EOFError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=10)
