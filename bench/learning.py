"""The learning comparison on any config: GRPO, SFPO, FAST-GRPO and FAST+SFPO for fixed seeds, one rollout budget.

    python -m bench.learning [--seeds 0,1,2] [--algorithms grpo,sfpo,fast_grpo,fast_sfpo]
                             [--config FILE_OR_PRESET] [--nproc N] [--work DIR] [--out DIR] [section.key=value ...]
    python -m bench.learning --study quick | full_cpu | full_gpu | FILE [...]     (a study file: bench.learning_study)

Each (algorithm, seed) is one `torchrun -m trainer.main` run with the same config, overrides, steps, prompts per step
and group size (so the same rollout budget before filter refills), evaluated on the held-out set every
`eval.every` steps, all at the config's learning rate. Without `--study` it is an ad-hoc study of those algorithms
(no controls, no sweep) on any model and data, e.g. a seed preset with a local model folder on a GPU machine; the
scoring is the studies' (`bench.learning_claims`: mean held-out accuracy over the budget, rollouts to a target
from the smoothed GRPO curve, paired bootstrap intervals and a verdict per claim).

Writes `bench/results/study_learning_<device>_<date>.{json,md,png}` and prints a progress line per run. The seeds
are the ones given, fixed before looking at any result.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from bench import learning_study
from trainer import tasks
from trainer.config import load_config

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--study" or a.startswith("--study=") for a in argv):  # a study file: bench.learning_study
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
    nproc = args.nproc or torch.cuda.device_count() or 2
    levels = tasks.get(str(cfg.data.source)).MAX_LEVEL if tasks.is_builtin(cfg.data.source) else 0
    spec = {
        "description": f"{args.config or 'the built-in job'}, {', '.join(algorithms)}",
        "config": args.config,
        "overrides": overrides,
        "nproc": nproc,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
        "timeout_s": args.timeout,
        "shared_lr": cfg.optim.lr,
        "easy_levels": [1] if levels else [],
        "hard_levels": [levels] if levels else [],
        "generation_shares": [0.6, 0.7, 0.8],
    }
    study = learning_study.study_of("learning", spec, seeds, algorithms)
    learning_study.run_study(study, work=Path(args.work), out=Path(args.out), jobs=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
