"""The learning comparison: GRPO, SFPO, FAST-GRPO and FAST+SFPO on one task, for fixed seeds, same rollout budget.

    python -m bench.learning [--seeds 0,1,2] [--algorithms grpo,sfpo,fast_grpo,fast_sfpo]
                             [--config FILE_OR_PRESET] [--nproc N] [--work DIR] [--out DIR] [section.key=value ...]
    python -m bench.learning --study full_cpu [...]      (the full comparison: see bench.learning_study)

Each (algorithm, seed) is one `torchrun -m trainer.main` run with the same config, overrides, steps, prompts per step
and group size (so the same rollout budget before filter refills), evaluated on the held-out set every
`eval.every` steps. The default is the built-in benchmark (`trainer/configs/default.toml`: the warm-started tiny
model on the synthetic task, whose warm start is trained once and shared by every run); `--config` and overrides
run the same comparison on any model and data (e.g. a seed preset with a local model folder on a GPU machine).

Writes `bench/results/learning_<device>_<date>.{json,md,png}` (see `bench.learning_report` for what is counted) and
prints a progress line per run. The seeds are the ones given, fixed before looking at any result.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import learning_report as report
from bench._harness import device_info, results_stem
from trainer.config import eval_source_name
from trainer.config_io import load_config

ALGORITHMS = ("grpo", "sfpo", "fast_grpo", "fast_sfpo")
ROOT = Path(__file__).resolve().parents[1]


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated; grpo is required")
    p.add_argument("--config", default=None, help="a TOML file or preset name (default: the built-in job)")
    p.add_argument("--nproc", type=int, default=0, help="processes per run (default: GPUs, or 2 on a CPU)")
    p.add_argument("--work", default="runs/learning", help="folder for the run folders (default runs/learning)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the results go")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is killed")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)} (overrides are section.key=value)")
    return args, overrides


def _run(alg: str, seed: int, args: argparse.Namespace, overrides: list[str], run_dir: Path, nproc: int) -> float:
    """One training run into `run_dir` (replaced), its output kept beside it in `<run_dir>.log`; its wall seconds.
    Raises with the run's last output on failure."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "trainer.main", *(["--config", args.config] if args.config else []), *overrides,
        f"algorithm.name={alg}", f"seed={seed}", f"logging.run_dir={run_dir}", "checkpoint.export_hf=false",
        "logging.tensorboard=false", "eval.enabled=true",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=Path.cwd(), env=env, capture_output=True, text=True, timeout=args.timeout)
    run_dir.with_suffix(".log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        tail = out.stdout[-2000:] + out.stderr[-4000:]
        raise RuntimeError(f"{alg} seed {seed} failed (exit {out.returncode}):\n{tail}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--study" or a.startswith("--study=") for a in argv):  # the full comparison: bench.learning_study
        from bench import learning_study

        return learning_study.main(argv)
    args, overrides = _parse(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = sorted(set(algorithms) - set(ALGORITHMS))
    if unknown or "grpo" not in algorithms or not seeds:
        allowed = ", ".join(ALGORITHMS)
        print(f"--algorithms must be among {allowed} and include grpo; --seeds must not be empty", file=sys.stderr)
        return 2
    cfg = load_config([*(["--config", args.config] if args.config else []), *overrides])
    source = eval_source_name(cfg.eval.source.split(",")[0].strip())
    nproc = args.nproc or torch.cuda.device_count() or 2
    r, steps = cfg.rollout, cfg.optim.total_steps
    work = Path(args.work)

    curves: dict[str, dict[int, report.Curve]] = {a: {} for a in algorithms}
    total = len(algorithms) * len(seeds)
    begin = time.perf_counter()
    retried: list[str] = []
    for k, (seed, alg) in enumerate(((s, a) for s in seeds for a in algorithms), start=1):
        run_dir = work / f"{alg}-seed{seed}"
        try:
            seconds = _run(alg, seed, args, overrides, run_dir, nproc)
        except RuntimeError as err:  # a crash is not a result: say so, keep its log, run it once more
            first = err.args[0].splitlines()[0]
            print(f"[{k}/{total}] {first}; log in {run_dir.with_suffix('.failed.log')}; running it again", flush=True)
            run_dir.with_suffix(".log").rename(run_dir.with_suffix(".failed.log"))
            retried.append(f"{alg}-seed{seed}")
            seconds = _run(alg, seed, args, overrides, run_dir, nproc)
        c = report.curve(run_dir, source=source, prompts_per_step=r.prompts_per_step, group_size=r.group_size)
        curves[alg][seed] = c
        length = "-" if c.length[-1] is None else f"{c.length[-1]:.1f}"
        print(
            f"[{k}/{total}] {alg} seed {seed}: held-out {c.accuracy[0]:.3f} -> {c.accuracy[-1]:.3f} "
            f"(best {max(c.accuracy):.3f}), length {length}, {c.rollouts[-1]:.0f} rollouts, {seconds:.0f} s",
            flush=True,
        )

    device = device_info()
    result = {
        "seeds": seeds,
        "algorithms": report.summarize(curves, seeds),
        "config": args.config or "default (built-in benchmark)",
        "overrides": overrides,
        "source": source,
        "metric": f"eval/{source}/avg@{cfg.eval.n}",
        "budget": {
            "steps": steps,
            "prompts_per_step": r.prompts_per_step,
            "group_size": r.group_size,
            "rollouts": steps * r.prompts_per_step * r.group_size,
        },
        "device": device["device"],
        "versions": {k: v for k, v in device.items() if k != "device"},
        "nproc": nproc,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "seconds": round(time.perf_counter() - begin, 1),
        "retried_after_a_crash": retried,
        "curves": {a: {str(s): c.__dict__ for s, c in by_seed.items()} for a, by_seed in curves.items()},
    }
    result["targets"] = report.targets(result["algorithms"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"learning_{results_stem()}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report.markdown(result))
    title = f"{result['config']}: {result['metric']}, seeds {args.seeds}"
    try:
        report.plot(curves, stem.with_suffix(".png"), title=title)
    except ModuleNotFoundError:
        print("matplotlib is not installed: no figure", file=sys.stderr)
    print(report.markdown(result))
    print(f"results: {stem}.json, .md, .png ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
