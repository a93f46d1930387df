"""The full learning comparison: arms (an algorithm and its settings) x learning rates x seeds on one task, each an
independent trainer run, several at a time, then scored with intervals that can tell (`bench.learning_claims`).

    python -m bench.learning --study full_cpu [--seeds 100,101] [--arms grpo,sfpo] [--jobs N] [--resume]
                             [--work DIR] [--out DIR]

A study is a TOML file (`bench/studies/<name>.toml`, or a path): the trainer config and overrides every run shares,
the seeds (fixed in the file before any result is seen), the shared learning rate and the sweep, and the arms. An arm
with `sweep = true` runs at every learning rate of the sweep; the others (the controls) at the shared one. Before
the runs, the warm start every run begins from is trained once and its accuracy-length frontier measured
(`bench.task_frontier`). With `--resume`, runs whose folder holds a finished run, and the frontier kept in the
work folder, are read, not run again.

Writes `bench/results/study_<name>_<device>_<date>.{json,md,png}` and the frontier's files beside them.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from bench import learning_claims as claims
from bench import task_frontier
from bench._harness import device_info, results_stem
from trainer.config import eval_source_name, load_config
from trainer.config.aliases import recipe_overrides
from trainer.model import warm_start

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "bench" / "studies"
DONE = "study_run.json"
"""Written into a run's folder when it finished: its command, seconds and the machine's load around it."""


@dataclass(frozen=True)
class Run:
    """One trainer run of the study."""

    arm: str
    lr: float
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.arm}-lr{self.lr:g}-seed{self.seed}"


@dataclass
class Study:
    """A study file, read."""

    name: str
    spec: dict[str, Any]
    seeds: list[int]
    arms: dict[str, dict[str, Any]]
    runs: list[Run] = field(default_factory=list)


def find_study(name: str) -> Path:
    """A study file: a path, or a name in `bench/studies/`."""
    path = Path(name)
    if path.is_file():
        return path
    preset = STUDIES / (name if name.endswith(".toml") else f"{name}.toml")
    if preset.is_file():
        return preset
    known = ", ".join(sorted(p.stem for p in STUDIES.glob("*.toml")))
    raise SystemExit(f"--study {name!r}: no such file, and no study of that name (known: {known})")


def load_study(name: str, *, seeds: list[int] | None = None, arms: list[str] | None = None) -> Study:
    """The study's spec and its runs (optionally fewer seeds or arms)."""
    path = find_study(name)
    spec = tomllib.loads(path.read_text())
    all_arms = spec["arms"]
    unknown = sorted(set(arms or []) - set(all_arms))
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(unknown)} (the study has {', '.join(all_arms)})")
    chosen = {k: v for k, v in all_arms.items() if not arms or k in arms}
    if "grpo" not in chosen:
        raise SystemExit("the study needs the grpo arm: its curve sets the target")
    study = Study(path.stem, spec, list(seeds or spec["seeds"]), chosen)
    shared = float(spec["shared_lr"])
    for seed in study.seeds:
        for arm, a in chosen.items():
            lrs = [float(x) for x in spec["sweep_lrs"]] if a.get("sweep") else [shared]
            for lr in lrs:
                extra = (*recipe_overrides(a["algorithm"]), f"optim.lr={lr:g}", *a.get("overrides", []))
                study.runs.append(Run(arm, lr, seed, tuple(extra)))
    return study


def _command(study: Study, run: Run, run_dir: Path) -> list[str]:
    s = study.spec
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={s.get('nproc', 1)}",
        "-m", "trainer.main", *(["--config", s["config"]] if s.get("config") else []), *s.get("overrides", []),
        *run.overrides, f"seed={run.seed}",
        f"logging.run_dir={run_dir}", "logging.overwrite=true", "checkpoint.export_hf=false",
        "logging.tensorboard=false", "logging.plots=false", "eval.enabled=true",
    ]  # fmt: skip


def _execute(study: Study, run: Run, work: Path, resume: bool) -> dict[str, Any]:
    """Runs one trainer run (once more after a crash, which is then reported); returns its `DONE` record."""
    run_dir = work / run.name
    done = run_dir / DONE
    if resume and done.is_file():
        return json.loads(done.read_text())
    cmd = _command(study, run, run_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(study.spec.get("threads", 1)))
    failures = []
    for _attempt in range(2):
        if run_dir.exists():
            shutil.rmtree(run_dir)
        load_before, start = os.getloadavg()[0], time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=study.spec.get("timeout_s", 1800))
        seconds = time.perf_counter() - start
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "output.log").write_text(out.stdout + out.stderr)
        if out.returncode == 0:
            record = {
                "run": run.name, "command": cmd, "seconds": round(seconds, 1), "load_before": load_before,
                "load_after": os.getloadavg()[0], "crashed_before": failures,
            }  # fmt: skip
            done.write_text(json.dumps(record, indent=1) + "\n")
            return record
        failures.append(f"exit {out.returncode}: {(out.stdout + out.stderr)[-600:]}")
        print(f"{run.name} failed (exit {out.returncode}); running it once more", flush=True)
    raise RuntimeError(f"{run.name} failed twice:\n" + "\n".join(failures))


def _prepare(study: Study, work: Path, out: Path, resume: bool) -> dict[str, Any]:
    """Trains the shared warm start (once, on every core) and measures its frontier; kept in `work/frontier.json`,
    which `--resume` reads instead of measuring it again."""
    kept = work / "frontier.json"
    if resume and kept.is_file():
        return json.loads(kept.read_text())
    s = study.spec
    per_level = str(s.get("frontier_per_level", 64))
    args = ["--config", s.get("config") or "default", "--per-level", per_level, "--work", str(work), "--out", str(out),
            *s.get("overrides", [])]  # fmt: skip
    result = task_frontier.measure(args)
    work.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result, indent=1) + "\n")
    return result


def study_of(name: str, spec: dict[str, Any], seeds: list[int], algorithms: list[str]) -> Study:
    """An ad-hoc study: `algorithms` at one learning rate (`spec["shared_lr"]`), no controls (`python -m
    bench.learning` without `--study`)."""
    arms = {a: {"algorithm": a, "sweep": True} for a in algorithms}
    study = Study(name, {**spec, "sweep_lrs": [spec["shared_lr"]], "arms": arms}, seeds, arms)
    for seed in seeds:
        for arm in algorithms:
            overrides = (*recipe_overrides(arm), f"optim.lr={spec['shared_lr']:g}")
            study.runs.append(Run(arm, float(spec["shared_lr"]), seed, overrides))
    return study


def run_study(study: Study, *, work: Path, out: Path, jobs: int, resume: bool = False) -> dict[str, Any]:
    """Runs the study (the warm start and its frontier first, for a built-in task) and writes its results."""
    s = study.spec
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config([*(["--config", s["config"]] if s.get("config") else []), *s.get("overrides", [])])
    source = eval_source_name(cfg.eval.sources[0])
    begin = time.perf_counter()
    frontier = _prepare(study, work, out, resume) if warm_start.applies(cfg) else {"frontier": {}}
    total, finished = len(study.runs), []

    final_evals = int(s.get("final_evals", 3))

    def one(run: Run) -> dict[str, Any]:
        record = _execute(study, run, work, resume)
        finished.append(run.name)
        r = claims.read_run(work / run.name, run, source=source, prompts_per_step=cfg.rollout.prompts_per_step,
                            group_size=cfg.rollout.group_size, final_evals=final_evals, record=record)  # fmt: skip
        acc = r["curve"]["accuracy"]
        print(f"[{len(finished)}/{total}] {run.name}: held-out {acc[0]:.3f} -> {acc[-1]:.3f}, "
              f"{record['seconds']:.0f} s, load {record['load_before']:.1f}", flush=True)  # fmt: skip
        return r

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        runs = {r.name: result for r, result in zip(study.runs, pool.map(one, study.runs))}
    budget = cfg.optim.total_steps * cfg.rollout.prompts_per_step * cfg.rollout.group_size
    device = device_info()
    result = {
        "study": study.name,
        "spec": s,
        "seeds": study.seeds,
        "arms": list(study.arms),
        "source": source,
        "eval_every": cfg.eval.every,
        "eval_prompts": cfg.eval.synthetic_size,
        "budget": {
            "steps": cfg.optim.total_steps,
            "prompts_per_step": cfg.rollout.prompts_per_step,
            "group_size": cfg.rollout.group_size,
            "rollouts": budget,
        },
        "device": device["device"],
        "versions": {k: v for k, v in device.items() if k != "device"},
        "cpus": os.cpu_count(),
        "jobs": jobs,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "seconds": round(time.perf_counter() - begin, 1),
        "resumed": resume,
        "frontier": frontier["frontier"],
        "runs": runs,
    }
    result["analysis"] = claims.analyse(result)
    stem = out / f"study_{study.name}_{results_stem()}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(claims.markdown(result))
    try:
        claims.plot(result, stem.with_suffix(".png"))
    except ModuleNotFoundError:
        print("matplotlib is not installed: no figure", file=sys.stderr)
    print(claims.markdown(result))
    print(f"results: {stem}.json, .md, .png ({result['seconds']:.0f} s)")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.learning --study", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, help="a study file or a name in bench/studies/")
    p.add_argument("--seeds", default="", help="comma-separated seeds instead of the study's (a check, not a result)")
    p.add_argument("--arms", default="", help="comma-separated arms (default: all)")
    p.add_argument("--jobs", type=int, default=0, help="runs at once (default: the study's)")
    p.add_argument("--resume", action="store_true", help="read finished runs from --work instead of running them")
    p.add_argument("--work", default="", help="folder for the run folders (default runs/study_<name>)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the results go")
    args = p.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] or None
    study = load_study(args.study, seeds=seeds, arms=[a for a in args.arms.split(",") if a.strip()] or None)
    work = Path(args.work or f"runs/study_{study.name}")
    run_study(study, work=work, out=Path(args.out), jobs=args.jobs or int(study.spec.get("jobs", 1)),
              resume=args.resume)  # fmt: skip
    return 0
