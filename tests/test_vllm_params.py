"""The vllm engine without vLLM: sampling mapping, request bodies, answer parsing, routes, LLM arguments, errors."""

from __future__ import annotations

import importlib.util
import json
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from trainer.config import ConfigError, load_config
from trainer.rollout import Completion, SamplingParams
from trainer.rollout.vllm_http import CompletionsClient, ServerError
from trainer.rollout.vllm_params import (
    VLLM_VERSION,
    VLLMUnavailable,
    choose_route,
    completion_request,
    completions_from_outputs,
    completions_from_response,
    cut_at_stop,
    llm_kwargs,
    require_vllm,
    sampling_kwargs,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None
SAMPLING = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=12, stop_token_ids=[2, 5], seed=11)


def test_sampling_maps_one_to_one_and_pins_the_distribution() -> None:
    kw = sampling_kwargs(SAMPLING, prompt_index=4)
    assert (kw["n"], kw["temperature"], kw["top_p"], kw["max_tokens"], kw["stop_token_ids"]) == (
        3,
        0.7,
        0.9,
        12,
        [2, 5],
    )
    # nothing else may reshape the distribution the trainer's log-probs assume
    assert (kw["top_k"], kw["min_p"], kw["repetition_penalty"]) == (0, 0.0, 1.0)
    assert (kw["presence_penalty"], kw["frequency_penalty"]) == (0.0, 0.0)
    assert kw["ignore_eos"] is True and kw["detokenize"] is False and kw["logprobs"] is None
    # one seed per prompt, derived from the call's seed: distinct prompts, distinct seeds, same call -> same seeds
    assert kw["seed"] == sampling_kwargs(SAMPLING, prompt_index=4)["seed"] != sampling_kwargs(SAMPLING, 5)["seed"]
    assert 0 <= kw["seed"] < 2**63
    with_lp = SamplingParams(n=2, logprobs=True)
    assert sampling_kwargs(with_lp)["logprobs"] == 0  # the sampled token's log-prob only


def test_greedy_asks_for_one_completion_and_repeats_it() -> None:
    greedy = SamplingParams(n=4, temperature=0.0, max_new_tokens=5, stop_token_ids=[9])
    kw = sampling_kwargs(greedy)
    assert (kw["n"], kw["temperature"], kw["top_p"]) == (1, 0.0, 1.0)
    out = completions_from_outputs([_request_output([[3, 9, 0]])], greedy)
    assert out == [[[3, 9]] * 4]
    assert all(isinstance(c, Completion) for c in out[0])
    assert len({id(c) for c in out[0]}) == 4  # copies, not one list aliased n times


def test_completion_request_body() -> None:
    body = completion_request("qwen", [5, 6, 7], SamplingParams(n=2, logprobs=True, stop_token_ids=[1]), 0)
    assert body["model"] == "qwen" and body["prompt"] == [5, 6, 7]
    assert body["return_token_ids"] is True and body["logprobs"] == 0 and body["ignore_eos"] is True
    assert body["stop_token_ids"] == [1] and body["n"] == 2 and body["top_k"] == 0
    assert "logprobs" not in completion_request("qwen", [5], SamplingParams(n=2), 0)
    json.dumps(body)  # plain JSON


def test_cut_at_stop_keeps_the_stop_token_and_its_logprob() -> None:
    c = cut_at_stop([4, 5, 2, 7], [-0.1, -0.2, -0.3, -0.4], stops=[2])
    assert c == [4, 5, 2] and c.logprobs == [-0.1, -0.2, -0.3]
    assert cut_at_stop([4, 5], None, stops=[2]) == [4, 5]
    with pytest.raises(ValueError, match="log-probs"):
        Completion([1, 2], [0.0])


def _request_output(token_lists: list[list[int]], logprobs: list[list[float]] | None = None) -> SimpleNamespace:
    """A stand-in for vLLM's RequestOutput: `outputs` of CompletionOutput-like objects (in scrambled order)."""
    outs = []
    for i, tokens in enumerate(token_lists):
        lp = None
        if logprobs is not None:  # vLLM: one {token_id: Logprob} dict per position
            lp = [{t: SimpleNamespace(logprob=v, rank=1)} for t, v in zip(tokens, logprobs[i])]
        outs.append(SimpleNamespace(index=i, token_ids=tokens, logprobs=lp))
    return SimpleNamespace(outputs=outs[::-1])


def test_completions_from_outputs_orders_and_extracts_logprobs() -> None:
    s = SamplingParams(n=2, stop_token_ids=[2], logprobs=True)
    outputs = [
        _request_output([[4, 2], [6, 7, 8]], [[-1.0, -2.0], [-0.5, -0.25, -0.125]]),
        _request_output([[9], [2, 9]], [[-3.0], [-4.0, -5.0]]),
    ]
    out = completions_from_outputs(outputs, s)
    assert out == [[[4, 2], [6, 7, 8]], [[9], [2]]]
    assert out[0][1].logprobs == [-0.5, -0.25, -0.125] and out[1][1].logprobs == [-4.0]
    with pytest.raises(RuntimeError, match="asked for 3"):
        completions_from_outputs(outputs[:1], SamplingParams(n=3))


def test_completions_from_response() -> None:
    s = SamplingParams(n=2, stop_token_ids=[2], logprobs=True)
    response = {
        "choices": [
            {"index": 1, "token_ids": [8, 2, 3], "logprobs": {"token_logprobs": [-0.1, -0.2, -0.3]}},
            {"index": 0, "token_ids": [7], "logprobs": {"token_logprobs": [-0.4]}},
        ]
    }
    out = completions_from_response(response, s)
    assert out == [[7], [8, 2]] and out[1].logprobs == [-0.1, -0.2]
    with pytest.raises(RuntimeError, match="token_ids"):
        completions_from_response({"choices": [{"index": 0, "text": "hi"}, {"index": 1}]}, s)
    with pytest.raises(RuntimeError, match="log-probs"):
        completions_from_response({"choices": [{"index": 0, "token_ids": [1]}, {"index": 1, "token_ids": [1]}]}, s)


def test_route_choice() -> None:
    # colocated: in-process by reference (collective_rpc) even when vLLM has its IPC engine, which is made for
    # separate processes; "native" still forces IPC
    assert choose_route("auto", "colocated", native=True) == "extension"
    assert choose_route("auto", "colocated", native=False) == "extension"
    assert choose_route("native", "colocated", native=True) == "native"
    assert choose_route("auto", "server", native=True) == "native"
    assert choose_route("extension", "colocated", native=True) == "extension"
    assert choose_route("native", "server", native=True) == "native"
    assert choose_route("auto", "server", native=False) == "extension"
    with pytest.raises(VLLMUnavailable, match=r"weight_transfer = 'native' \(server\)"):
        choose_route("native", "server", native=False)
    # without CUDA every backend of vLLM's weight-transfer API is out: "auto" never picks NCCL or IPC
    assert choose_route("auto", "server", native=True, cuda=False) == "extension"
    assert choose_route("auto", "colocated", native=True, cuda=False) == "extension"
    with pytest.raises(VLLMUnavailable, match="need CUDA"):
        choose_route("native", "server", native=True, cuda=False)


def test_sleep_level_falls_to_zero_without_sleep_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.rollout.vllm_params import sleep_level_here

    assert sleep_level_here(2, True) == 2 and sleep_level_here(0, False) == 0
    assert capsys.readouterr().err == ""
    assert sleep_level_here(1, False) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: rollout.vllm.sleep_level = 1")


def test_llm_kwargs() -> None:
    common = dict(
        model_dir="/m", dtype="bfloat16", seed=3, tensor_parallel_size=1, gpu_memory_utilization=0.4,
        max_model_len=2048, sleep_level=2, enforce_eager=False,
    )  # fmt: skip
    kw = llm_kwargs(world=1, route="native", **common)
    assert kw["distributed_executor_backend"] == "external_launcher" and "data_parallel_size" not in kw
    assert kw["weight_transfer_config"] == {"backend": "ipc"} and kw["enable_sleep_mode"] is True
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] is True
    assert kw["logprobs_mode"] == "processed_logprobs" and kw["generation_config"] == "vllm"
    kw = llm_kwargs(world=4, route="extension", **{**common, "tensor_parallel_size": 2, "sleep_level": 0})
    assert "data_parallel_size" not in kw and kw["enable_sleep_mode"] is False  # replicas: vLLM's external DP
    assert kw["worker_extension_cls"] == "trainer.rollout.vllm_worker.WeightLoaderExtension"
    assert "weight_transfer_config" not in kw
    with pytest.raises(ValueError, match="divide"):
        llm_kwargs(world=3, route="native", **{**common, "tensor_parallel_size": 2})


def test_worker_extension_loads_by_hf_name() -> None:
    from trainer.rollout.vllm_worker import WeightLoaderExtension

    seen = []
    worker = WeightLoaderExtension()
    worker.model_runner = SimpleNamespace(model=SimpleNamespace(load_weights=lambda weights: seen.extend(weights)))
    assert worker.fastslow_load_weights([("model.norm.weight", 1), ("lm_head.weight", 2)]) == 2
    assert [n for n, _ in seen] == ["model.norm.weight", "lm_head.weight"]


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed: the missing-vllm errors cannot happen here")
def test_missing_vllm_is_a_clear_error() -> None:
    with pytest.raises(VLLMUnavailable, match=r"pip install \.\[vllm\]"):
        require_vllm()
    with pytest.raises(ConfigError, match=rf"rollout\.engine.*pip install \.\[vllm\].*{VLLM_VERSION}"):
        load_config(["rollout.engine=vllm"])


def test_vllm_config_keys_are_validated() -> None:
    for bad, key in (
        ("rollout.vllm.sleep_level=3", "rollout.vllm.sleep_level"),
        ("rollout.vllm.gpu_memory_utilization=1.5", "rollout.vllm.gpu_memory_utilization"),
        ("rollout.vllm.mode=remote", "rollout.vllm.mode"),
        ("rollout.is_cap=0.5", "is_cap"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config([bad])


def test_vllm_temperature_range_is_checked_at_config_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.rollout import vllm_params

    # vLLM rejects T > 2 and raises 0 < T < 0.01 to 0.01 (log-probs of another distribution): both stop the load
    with pytest.raises(ConfigError, match=r"rollout\.temperature = 2\.5: .*<= 2"):
        load_config(["rollout.engine=vllm", "rollout.temperature=2.5"])
    with pytest.raises(ConfigError, match=r"rollout\.temperature = 0\.005: must be 0 \(greedy\) or >= 0\.01"):
        load_config(["rollout.engine=vllm", "rollout.temperature=0.005"])  # the floor is every engine's now
    assert load_config(["rollout.temperature=2.5"]).rollout.temperature == 2.5  # the hf engine has no such range
    monkeypatch.setattr(vllm_params, "vllm_missing", lambda: None)  # as if vllm were installed
    for ok in (0.0, 0.01, 1.0, 2.0):
        assert load_config(["rollout.engine=vllm", f"rollout.temperature={ok}"]).rollout.temperature == ok
    with pytest.raises(ConfigError, match=r"eval\.temperature = 3\.0 \(rollout\.engine = 'vllm'\)"):
        load_config(["rollout.engine=vllm", "eval.enabled=true", "eval.temperature=3.0"])
    assert load_config(["rollout.engine=vllm", "eval.enabled=false", "eval.temperature=3.0"])


# ------------------------------------------------------------------------------------ the server's HTTP side


class _FakeVLLM(BaseHTTPRequestHandler):
    """Answers like `vllm serve` with return_token_ids: completion j of a prompt is prompt[-1] + j, then stop."""

    requests: typing.ClassVar[list[dict]] = []
    reset_succeeds: typing.ClassVar[bool] = True  # vLLM answers {"success": bool}

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def _send(self, code: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self._send(200, {"data": [{"id": "served-model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"{}")
        if self.path == "/reset_prefix_cache":
            type(self).requests.append({"path": self.path})
            self._send(200, {"success": type(self).reset_succeeds})
            return
        type(self).requests.append(body)
        if body["prompt"] == [666]:
            self._send(400, {"error": "bad prompt"})
            return
        stop = body["stop_token_ids"][0]
        choices = []
        for j in range(body["n"]):
            tokens = [body["prompt"][-1] + j, stop, 99]  # the stop token, then one token past it
            choice = {"index": j, "token_ids": tokens}
            if body.get("logprobs") == 0:
                choice["logprobs"] = {"token_logprobs": [-1.0 - j, -2.0, -3.0]}
            choices.append(choice)
        self._send(200, {"choices": choices})


@pytest.fixture
def fake_server():
    _FakeVLLM.requests, _FakeVLLM.reset_succeeds = [], True
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_client_generates_token_in_token_out(fake_server: str) -> None:
    client = CompletionsClient(fake_server)
    assert client.model == "served-model"
    s = SamplingParams(n=2, temperature=1.0, max_new_tokens=3, stop_token_ids=[1], seed=5, logprobs=True)
    out = client.generate([[10, 11], [20], [30, 31, 32]], s)
    assert out == [[[11, 1], [12, 1]], [[20, 1], [21, 1]], [[32, 1], [33, 1]]]
    assert out[0][1].logprobs == [-2.0, -2.0]
    bodies = sorted(_FakeVLLM.requests, key=lambda b: b["prompt"])
    assert [b["prompt"] for b in bodies] == [[10, 11], [20], [30, 31, 32]]
    assert all(b["model"] == "served-model" and b["return_token_ids"] for b in bodies)
    assert len({b["seed"] for b in bodies}) == 3
    client.reset_prefix_cache()
    assert _FakeVLLM.requests[-1] == {"path": "/reset_prefix_cache"}
    _FakeVLLM.reset_succeeds = False  # e.g. requests still running: the old weights' KV would be reused
    with pytest.raises(ServerError, match="refused to reset its prefix cache"):
        client.reset_prefix_cache()


def test_server_errors_name_the_route(fake_server: str) -> None:
    client = CompletionsClient(fake_server, model="m")
    with pytest.raises(ServerError, match=r"/v1/completions: HTTP 400.*bad prompt"):
        client.generate([[666]], SamplingParams(n=2, stop_token_ids=[1]))
    with pytest.raises(ValueError, match="empty prompt"):
        client.generate([[]], SamplingParams(n=2))
    with pytest.raises(ServerError, match="cannot be reached"):
        CompletionsClient("http://127.0.0.1:9", timeout_s=2)


def test_the_vllm_extra_pins_the_version_the_code_was_written_against() -> None:
    from pathlib import Path

    from trainer.config.io import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["vllm"] == [f"vllm=={VLLM_VERSION}"]
