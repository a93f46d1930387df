"""A/B of the training step: the built-in job on HEAD (the working tree) and on another commit, interleaved.

    python -m bench.ab [--nproc 1 2] [--rounds 3] [--steps 30] REF [key=value ...]   # overrides for both trees

For each process count, each round runs `torchrun -m trainer.main` on both trees (the order alternates), reads
`metrics.jsonl` and takes the median of each phase (`time/rollout`, `time/logprobs`, `time/update`, `time/sync`,
`time/step`) over the steps after the first 5; the table gives each side's median over rounds and the ratio HEAD /
REF (< 1: HEAD is faster), with the machine's load average before and after. REF is checked out with `git worktree`
into a temporary folder (removed at the end) and run from there with the same Python: it must be a commit that runs
with this environment (the `fastslow.kernels` layout or later). Run it before and after changing the step, and quote
it (README, "Performance").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("time/rollout", "time/logprobs", "time/update", "time/sync", "time/step")
JOB = ("eval.enabled=false", "logging.plots=false", "checkpoint.every=0", "checkpoint.export_hf=false")


def phase_medians(metrics: Path, skip: int = 5) -> dict[str, float]:
    """Median of each phase over the training rows after the first `skip` steps."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "kind" not in r][skip:]
    return {p: statistics.median(r[p] for r in rows) for p in PHASES if rows and all(p in r for r in rows)}


def run_job(tree: Path, run_dir: Path, nproc: int, steps: int, warm: Path, extra: list[str]) -> dict[str, float]:
    """The built-in job in `tree` for `steps` steps on `nproc` processes; its phase medians."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "FASTSLOW_NO_NATIVE": "1"}
    env.pop("TRITON_INTERPRET", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "trainer.main", f"logging.run_dir={run_dir}", f"optim.total_steps={steps}",
        f"warm_start.cache={warm}", *JOB, *extra,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"{tree}: the job failed (exit {out.returncode}):\n{tail}")
    return phase_medians(run_dir / "metrics.jsonl")


def table(nproc: int, head: list[dict[str, float]], ref: list[dict[str, float]], label: str) -> list[str]:
    """Markdown rows: phase, HEAD and REF medians over rounds (ms), ratio."""
    lines = [f"| {nproc} proc | this tree (ms) | {label} (ms) | ratio |", "| --- | --- | --- | --- |"]
    for p in PHASES:
        if all(p in r for r in head + ref):
            a, b = statistics.median(r[p] for r in head), statistics.median(r[p] for r in ref)
            lines.append(f"| {p.split('/')[1]} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="the commit to compare HEAD's working tree with")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("overrides", nargs="*", help="trainer key=value overrides for both sides")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fastslow-ab-"))
    ref_tree = work / "ref"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(ref_tree), args.ref], check=True)
    try:
        load = [os.getloadavg()[0]]
        print(f"bench.ab: HEAD (working tree) vs {args.ref}; {os.cpu_count()} CPUs; {args.rounds} rounds")
        for nproc in args.nproc:
            head: list[dict[str, float]] = []
            ref: list[dict[str, float]] = []
            for r in range(args.rounds):
                order = [("head", ROOT, head), ("ref", ref_tree, ref)]
                for name, tree, into in order if r % 2 == 0 else order[::-1]:
                    run = work / f"{name}-{nproc}-{r}"
                    into.append(run_job(tree, run, nproc, args.steps, work / "warm", args.overrides))
            print("\n".join(table(nproc, head, ref, args.ref[:12])))
        load.append(os.getloadavg()[0])
        print(f"load average (1 min): {load[0]:.2f} before, {load[1]:.2f} after")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
