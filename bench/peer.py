"""fastslow against TRL's GRPOTrainer on the same work: seconds per step, generated tokens per second, the ratio.

    python -m bench.peer [--nproc 1 2] [--steps 30] [--rounds 3] [--trl-python .venv-trl/bin/python]  # make bench-peer

Both train the built-in job's warm-started tiny model (written once to a Hugging Face folder from the warm-start cache
they share) on the synthetic task with the same reward (`trainer.tasks.synthetic.check`, a cut response wrong), group 8,
16 prompts per step, 20 new tokens, temperature 1, no KL, one update per batch, token-mean loss, clip 0.2 / 0.28, lr
5e-4, AdamW, fp32, one thread per process (TRL without gradient checkpointing). Per process count: fastslow under
torchrun, TRL alone or under `accelerate launch --cpu` (its own multi-process mode: DDP on gloo), the batch split over
the processes; with several processes fastslow runs twice, as replicas (`parallel.replicate = N`, DDP's layout) and
as FSDP2 (its default). The runs alternate, `--rounds` times; each gives the median of its steps 6..N. TRL comes from
its own environment (`make bench-peer` makes `.venv-trl` with `trl==1.16.0` and the same torch wheel). Prints the table,
the settings that could not be matched, and writes `bench/results/peer_DEVICE_DATE.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FASTSLOW_ARGS = (
    "eval.enabled=false", "logging.plots=false", "checkpoint.every=0", "checkpoint.export_hf=false",
    "logging.tensorboard=false", "rollout.group_size=8", "rollout.prompts_per_step=16", "rollout.max_new_tokens=20",
    "rollout.temperature=1.0", "algorithm.update=grpo", "algorithm.kl_coef=0.0", "optim.epochs=1",
    "optim.minibatches=1", "algorithm.clip_low=0.2", "algorithm.clip_high=0.28", "algorithm.loss_agg=token-mean",
    "optim.lr=0.0005", "optim.grad_clip=1.0", "rollout.engine=hf",
)  # fmt: skip
UNMATCHED = (
    "prompt order: each trainer shuffles the same prompts with its own generator (the same task distribution)",
    "group std: fastslow divides by the group's std with Bessel's correction and an epsilon of 1e-6, TRL by "
    "torch.std + 1e-4",
    "layout: fastslow packs sequences into rows (model.packing); TRL pads each batch (an implementation choice, "
    "not a setting)",
    "TRL computes no old log-probs on-policy (num_iterations = 1); fastslow skips them too (optim.skip_old_logprobs)",
)


def prepare(work: Path) -> tuple[Path, Path, list[str]]:
    """The warm-started model as a Hugging Face folder and the task's prompts as JSONL; notes on what differs."""
    from trainer.config import load_config
    from trainer.data import load_prompts
    from trainer.model.load import load_tokenizer, model_config, model_from_config
    from trainer.model.warm_start import warm_start

    cfg = load_config([f"warm_start.cache={work / 'warm'}"])
    tok = load_tokenizer(cfg.model)
    model = warm_start(model_from_config(model_config(cfg.model, tok), seed=cfg.seed), tok, cfg, work, is_main=True)
    folder = work / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    prompts = load_prompts(cfg.data, tok, seed=cfg.seed)
    notes = []
    differ = sum(tok(p["prompt"], add_special_tokens=False)["input_ids"] != p["prompt_ids"] for p in prompts)
    if differ:
        notes.append(f"prompt tokens: {differ} of {len(prompts)} prompts tokenise differently in TRL")
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p["prompt"], "answer": p["answer"]}) + "\n" for p in prompts))
    return folder, path, notes


def _median_after(values: list[float], skip: int = 5) -> float:
    return statistics.median(values[skip:] if len(values) > skip else values)


def layout_args(name: str, nproc: int) -> tuple[str, ...]:
    """The settings of fastslow's run `name` at `nproc` processes: "fastslow" with several processes is
    `parallel.replicate = nproc` (each rank a full replica, gradients all-reduced once per optimizer step: what
    TRL's DDP does); "fastslow-fsdp" is the default layout, FSDP2, run beside it."""
    return (f"parallel.replicate={nproc}",) if name == "fastslow" and nproc > 1 else ()


def run_fastslow(work: Path, run: Path, steps: int, nproc: int, extra: tuple[str, ...] = ()) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "trainer.main", f"logging.run_dir={run}", f"optim.total_steps={steps}",
        f"warm_start.cache={work / 'warm'}", *FASTSLOW_ARGS, *extra,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError("fastslow failed:\n" + "\n".join((out.stdout + out.stderr).splitlines()[-8:]))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "kind" not in r]
    seconds = [r["time/step"] for r in rows]
    tokens = [r["response_length"] * 128 for r in rows]
    return {"s_per_step": _median_after(seconds), "tok_per_s": _median_after([t / s for t, s in zip(tokens, seconds)])}


def run_trl(python: str, model: Path, prompts: Path, out: Path, steps: int, nproc: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = [str(ROOT / "bench" / "peer_trl.py"), str(model), str(prompts), str(out), str(steps)]
    cmd = [python, *script]
    if nproc > 1:  # TRL's own multi-process mode
        launch = [str(Path(python).with_name("accelerate")), "launch", "--cpu", "--num_processes", str(nproc)]
        cmd = [*launch, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *script]
    res = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError("TRL failed:\n" + "\n".join((res.stdout + res.stderr).splitlines()[-8:]))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    seconds = [r["seconds"] for r in rows]
    return {
        "s_per_step": _median_after(seconds),
        "tok_per_s": _median_after([r["completion_tokens"] / r["seconds"] for r in rows]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if not Path(args.trl_python).exists():
        print(f"bench.peer: no TRL environment at {args.trl_python} (make bench-peer makes .venv-trl)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="fastslow-peer-"))
    model, prompts, notes = prepare(work)
    load = [os.getloadavg()[0]]
    per_nproc: dict[int, dict[str, list[dict[str, float]]]] = {}
    for nproc in args.nproc:
        names = ["fastslow", "trl"] + (["fastslow-fsdp"] if nproc > 1 else [])
        results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                if name.startswith("fastslow"):
                    run = work / f"{name}-{nproc}-{r}"
                    got = run_fastslow(work, run, args.steps, nproc, layout_args(name, nproc))
                else:
                    out = work / f"trl-{nproc}-{r}.jsonl"
                    got = run_trl(args.trl_python, model, prompts, out, args.steps, nproc)
                results[name].append(got)
                print(f"{nproc} proc, round {r + 1}, {name}: {got}", flush=True)
        per_nproc[nproc] = results
    load.append(os.getloadavg()[0])
    summaries = {n: summarize(res) for n, res in per_nproc.items()}
    lines = report(summaries, [*notes, *UNMATCHED], load, args)
    print("\n".join(lines))
    from bench._harness import results_stem

    stem = args.out / f"peer_{results_stem()}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    data = {"summary": summaries, "rounds": per_nproc, "load": load}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Median over rounds of each run's per-round medians, and fastslow / TRL (`ratio_time`; `ratio_time_fsdp` for
    the FSDP2 run beside it)."""
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("s_per_step", "tok_per_s")} for k, v in results.items()}
    out = {**med, "ratio_time": med["fastslow"]["s_per_step"] / med["trl"]["s_per_step"]}
    # each round's own ratio (its runs were next to each other): the spread says what one comparison is worth
    out["ratio_rounds"] = [f["s_per_step"] / t["s_per_step"] for f, t in zip(results["fastslow"], results["trl"])]
    if "fastslow-fsdp" in med:
        out["ratio_time_fsdp"] = med["fastslow-fsdp"]["s_per_step"] / med["trl"]["s_per_step"]
    return out


def report(summaries: dict[int, dict[str, Any]], notes: list[str], load: list[float], args: Any) -> list[str]:
    """The markdown report: one row per process count and trainer, the ratio, what was not matched."""
    lines = [
        f"# fastslow vs TRL GRPOTrainer ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, 1 thread a process)",
        "",
        f"{args.rounds} rounds, {args.steps} steps each, medians of steps 6-{args.steps}; load average "
        f"{load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        "| processes | trainer | s/step | generated tok/s | fastslow / TRL time |",
        "| --- | --- | --- | --- | --- |",
    ]
    for nproc, s in summaries.items():
        f, t = s["fastslow"], s["trl"]
        mode = "torchrun, replicas (`parallel.replicate`), as DDP" if nproc > 1 else "one process"
        trl_mode = "accelerate launch, DDP" if nproc > 1 else "one process"
        spread = s.get("ratio_rounds") or [s["ratio_time"]]
        lines.append(f"| {nproc} | fastslow ({mode}) | {f['s_per_step']:.3f} | {f['tok_per_s']:,.0f} | "
                     f"{s['ratio_time']:.2f}x (rounds {min(spread):.2f}-{max(spread):.2f}x) |")  # fmt: skip
        if "fastslow-fsdp" in s:
            g = s["fastslow-fsdp"]
            lines.append(f"| {nproc} | fastslow (torchrun, FSDP2: the default) | {g['s_per_step']:.3f} | "
                         f"{g['tok_per_s']:,.0f} | {s['ratio_time_fsdp']:.2f}x |")  # fmt: skip
        lines.append(f"| {nproc} | TRL 1.16.0 ({trl_mode}) | {t['s_per_step']:.3f} | {t['tok_per_s']:,.0f} | |")
    return [*lines, "", "Goal: fastslow / TRL <= 0.75x.", "", "Not matched:", *[f"- {n}" for n in notes]]


if __name__ == "__main__":
    sys.exit(main())
