"""Asynchronous rollouts on the CPU (`rollout.max_staleness`), measured side by side: steps per minute, generated
tokens per second, the trainer's and the engine's idle fractions, the speedup against the ideal overlap, and held-
out accuracy over the same steps and seeds.

    .venv-vllm/bin/python -m bench.async_cpu [--steps 16] [--repeats 2] [--accuracy-steps 60] [--out bench/results]
    .venv/bin/python -m bench.async_cpu --job chain --engines hf_process --accuracy-steps 0   # generation-heavy

One trainer process (`--nproc_per_node=1`), so the engine can use the other core: the hf engine (generation in the
trainer's own generation thread), the hf_process engine (a rollout process of its own) and a loopback vLLM server
(its own process), all on the vllm_cpu preset (head size 32), each at max_staleness 0, 1 and 2 and at 1 in the
bypass form (no old-log-prob pass), interleaved `--repeats` times; medians of each run's steps after the first
three. The trainer is pinned to core 0, the rollout process and the server's threads to core 1. The ideal speedup of
a mode is its synchronous step time over the larger of its generation time and the rest of the step (both from the
synchronous runs). Staleness needs the old-log-prob pass (the batch is not the current policy's), which the
synchronous step skips: that cost is part of what is measured. Accuracy: the built-in job for `--accuracy-steps`
steps at max_staleness 0 and 1 (the hf_process engine, seeds 0 and 1, `is_correction = token_truncate` when stale),
held-out avg@4 at the end. Writes `async_cpu_<cpu>_<UTC time>.json` and `.md` under `--out`.

`--job chain` times the chain task instead (`--config chain`: responses up to 64 tokens, generation about half of a
synchronous step, the papers' regime more than the built-in job's 15-25%), with the engines of `--engines` (the
chain task's model has a head size of 16, below vLLM's CPU minimum of 32: hf and hf_process only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.vllm_server import ROOT, LoopbackServer, cpu_name, free_port, run_trainer, write_result

SKIP = 3
ENGINES = ("hf", "hf_process", "vllm-server")
VARIANTS = {  # name -> overrides: max_staleness 0, 1, 2 (decoupled: the old-log-prob pass) and 1 in bypass form
    "k0": ["rollout.max_staleness=0"],
    "k1": ["rollout.max_staleness=1"],
    "k2": ["rollout.max_staleness=2"],
    "k1-bypass": ["rollout.max_staleness=1", "rollout.is_form=bypass"],
}


def _train(run_dir: Path, extra: list[str]) -> list[dict]:
    """One trainer process pinned to core 0; the hf_process engine's child on core 1."""
    return run_trainer(run_dir, extra, nproc=1, pin_core0=True, FASTSLOW_ROLLOUT_CPUS="1")


def _summary(rows: list[dict], samples: int) -> dict[str, float]:
    rows = [r for r in rows if "time/step" in r][SKIP:]
    med = lambda key: statistics.median(r.get(key, 0.0) for r in rows)
    step = med("time/step")
    return {
        "step_s": step,
        "steps_per_min": 60.0 / step,
        "gen_tokens_per_s": statistics.median(r["response_length"] * samples / r["time/step"] for r in rows),
        "rollout_s": med("time/rollout"),
        "trainer_idle_frac": med("time/trainer_idle") / step,
        "engine_idle_frac": med("time/engine_idle") / step,
        "staleness_max": max(r.get("rollout/staleness", 0.0) for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.async_cpu", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--accuracy-steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--job", choices=("builtin", "chain"), default="builtin")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=None)
    args = parser.parse_args(argv)
    engines = tuple(args.engines or (ENGINES if args.job == "builtin" else ("hf_process",)))
    if args.job == "chain" and "vllm-server" in engines:
        parser.error("the chain task's model has a head size of 16; vLLM's CPU attention needs 32: no vllm-server")
    if "vllm-server" in engines:
        import vllm  # noqa: F401  (the server mode needs .venv-vllm)

    from trainer.config import from_dict

    cfg = from_dict({})
    samples = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    modes = [f"{engine}-{v}" for engine in engines for v in VARIANTS]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    loads: list[float] = []
    preset = "vllm_cpu" if args.job == "builtin" else "chain"
    preset_task = "synthetic" if args.job == "builtin" else "chain"
    base = ["--config", preset, f"optim.total_steps={args.steps}", "eval.enabled=false"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = None
        for repeat in range(args.repeats):
            for engine in (e for e in engines if e != "vllm-server"):
                for name, overrides in VARIANTS.items():
                    run = work / f"{engine}_{name}_{repeat}"
                    loads.append(os.getloadavg()[0])
                    rows = _train(run, [*base, f"rollout.engine={engine}", *overrides])
                    runs[f"{engine}-{name}"].append(_summary(rows, samples))
                    model_dir = model_dir or run / "hf"
            if "vllm-server" not in engines:
                print(f"repeat {repeat}: " + ", ".join(f"{m} {runs[m][-1]['step_s']:.3f} s" for m in modes), flush=True)
                continue
            server = LoopbackServer(model_dir, work / f"server_{repeat}.log", VLLM_CPU_OMP_THREADS_BIND="1")  # core 1
            try:
                for name, overrides in VARIANTS.items():
                    loads.append(os.getloadavg()[0])
                    extra = [
                        "rollout.vllm.mode=server", f"rollout.vllm.server_url={server.url}",
                        "rollout.vllm.server_workers=1", f"rollout.vllm.nccl_port={free_port()}", *overrides,
                    ]  # fmt: skip
                    rows = _train(work / f"srv_{name}_{repeat}", [*base, *extra])
                    runs[f"vllm-server-{name}"].append(_summary(rows, samples))
            finally:
                server.stop()
            print(f"repeat {repeat}: " + ", ".join(f"{m} {runs[m][-1]['step_s']:.3f} s" for m in modes), flush=True)
        accuracy: dict[str, list[float]] = {"k0": [], "k1": []}
        for seed in (0, 1) if args.accuracy_steps > 0 else ():
            for k in (0, 1):
                extra = ["--config", preset] if args.job == "chain" else []
                extra += [f"seed={seed}", f"optim.total_steps={args.accuracy_steps}", "eval.every=0"]
                extra += ["rollout.engine=hf_process"]
                extra += [f"rollout.max_staleness={k}"] + (["rollout.is_correction=token_truncate"] if k else [])
                rows = _train(work / f"acc_{seed}_{k}", extra)
                key = next(k for r in rows for k in r if k.startswith(f"eval/{preset_task}/avg@"))
                last = [r for r in rows if key in r][-1][key]
                accuracy.setdefault(f"k{k}", []).append(last)
    table = {m: {key: statistics.median(r[key] for r in runs[m]) for key in runs[m][0]} for m in modes}
    for engine in engines:
        sync = table[f"{engine}-k0"]
        gen = sync["rollout_s"]
        ideal = sync["step_s"] / max(gen, sync["step_s"] - gen)
        for name in VARIANTS:
            row = table[f"{engine}-{name}"]
            row["speedup"] = sync["step_s"] / row["step_s"]
            row["ideal_speedup"] = ideal
            row["of_ideal"] = (row["speedup"] - 1) / (ideal - 1) if ideal > 1 else float("nan")
    result = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_1m_before_runs": loads},
        "job": f"--config {preset}, 1 trainer process, {args.steps} steps (medians of steps {SKIP + 1}+)",
        "modes": table,
        "accuracy_eval_avg4_at_end": {"steps": args.accuracy_steps, "seeds": [0, 1], **accuracy},
        "runs": runs,
    }
    lines = [
        "| engine, staleness | step s | steps/min | gen tok/s | speedup | ideal | of ideal | trainer idle "
        "| engine idle | staleness max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in modes:
        r = table[m]
        lines.append(
            f"| {m} | {r['step_s']:.3f} | {r['steps_per_min']:.0f} | {r['gen_tokens_per_s']:,.0f} | "
            f"{r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['of_ideal']:.0%} | {r['trainer_idle_frac']:.0%} | "
            f"{r['engine_idle_frac']:.0%} | {r['staleness_max']:.0f} |"
        )
    acc = result["accuracy_eval_avg4_at_end"]
    if args.accuracy_steps > 0:
        lines += [
            "",
            f"Held-out accuracy after {args.accuracy_steps} steps (hf_process engine, seeds 0 and 1): "
            f"max_staleness 0: {acc['k0']}, max_staleness 1 (token_truncate): {acc['k1']}",
        ]
    write_result(args.out, "async_cpu", result, f"Asynchronous rollouts on the CPU, {result['job']}", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
