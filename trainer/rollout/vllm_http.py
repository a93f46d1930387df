"""HTTP side of the vllm server mode: generation over `/v1/completions` and the server's control routes.

Standard library only (urllib and a thread pool), so it runs and is tested anywhere; no vLLM import. The weight
push itself goes over NCCL (`trainer.rollout.vllm_transfer`), driven through vLLM's own `HTTPVLLMWeightSyncClient`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trainer.rollout.base import Completion, SamplingParams, check_prompts
from trainer.rollout.vllm_params import completion_request, completions_from_response


class ServerError(RuntimeError):
    """The vLLM server could not be reached or answered with an error."""


class CompletionsClient:
    """Token-in, token-out generation against a running vLLM server (`vllm serve`), one request per prompt.

    Requests run concurrently (`max_concurrency`), so the server batches them as it would any traffic. The served
    model's name is read from `/v1/models` unless given.
    """

    def __init__(
        self, base_url: str, *, model: str | None = None, timeout_s: float = 600.0, max_concurrency: int = 64
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_concurrency = max(1, max_concurrency)
        self.model = model or self._served_model()

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ServerError(f"vllm server {method} {path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ServerError(
                f"vllm server at {self.base_url} cannot be reached ({method} {path}: {exc}); start it first "
                "(README: 'vLLM rollouts') or fix rollout.vllm.server_url"
            ) from exc
        return json.loads(raw) if raw else None

    def _served_model(self) -> str:
        models = (self._call("GET", "/v1/models") or {}).get("data") or []
        if not models:
            raise ServerError(f"vllm server at {self.base_url} serves no model (/v1/models is empty)")
        return str(models[0]["id"])

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """`out[i][j]`: the j-th completion of `prompt_ids[i]` (see `RolloutEngine.generate`)."""
        if not prompt_ids:
            return []
        check_prompts(prompt_ids, "vllm engine")

        def one(i: int) -> list[Completion]:
            body = completion_request(self.model, prompt_ids[i], sampling, i)
            return completions_from_response(self._call("POST", "/v1/completions", body), sampling)

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompt_ids))) as pool:
            return list(pool.map(one, range(len(prompt_ids))))

    def collective_rpc(self, method: str, args: list[str]) -> Any:
        """Call a worker method on every server worker (`/collective_rpc`, development routes; string arguments
        only). Returns the server's `results` list."""
        return (self._call("POST", "/collective_rpc", {"method": method, "args": list(args)}) or {}).get("results")

    def reset_prefix_cache(self) -> None:
        """Drop the server's cached prefixes (their KV was computed with the old weights). Needs the server's
        development routes (`VLLM_SERVER_DEV_MODE=1`), which the weight-transfer routes need too. vLLM answers
        `{"success": bool}`; a refusal (e.g. requests still running) raises `ServerError`: generating on would
        reuse KV of the previous weights."""
        answer = self._call("POST", "/reset_prefix_cache")
        if isinstance(answer, dict) and answer.get("success") is False:
            raise ServerError(
                f"vllm server at {self.base_url} refused to reset its prefix cache after a weight update "
                f"({answer}); its cached prefixes hold KV of the previous weights"
            )
