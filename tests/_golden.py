"""The golden traces: the built-in job's first steps on CPU, recorded in tests/assets/golden/ and reproduced by
tests/test_golden.py. `make golden` (this file run as a script) writes them again, for a change meant to alter them.

The job is `make run`'s: `torchrun --nproc_per_node=2 -m trainer.main` (gloo, `trainer/configs/default.toml`, seed
0) at one torch thread per process, with only the overrides in `OVERRIDES`, each for time or for output files that
are no part of training: config -> warm start -> rollout -> reward -> update, end to end, as shipped. `TRACES`: GRPO
(the default, 20 steps), and SFPO and FAST-GRPO (8 steps each: the fast inner steps, reposition and slow
correction; the thinking reward, per-group KL and the Slow2Fast filter). Those two were recorded with the former key
`algorithm.name`, kept here on purpose: it now expands to the switches of the presets `--config sfpo` /
`--config fast_grpo` (the same config, tests/test_config_aliases.py), so reproducing them checks that path end to end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "tests" / "assets" / "golden"
GOLDEN = FOLDER / "default_grpo_cpu.json"
REGENERATE = "make golden"
NPROC = 2
STEPS = 20
TRACES: dict[str, tuple[int, tuple[str, ...]]] = {
    "default_grpo_cpu": (STEPS, ()),
    "sfpo_cpu": (8, ("algorithm.name=sfpo",)),
    "fast_grpo_cpu": (8, ("algorithm.name=fast_grpo",)),
}
"""Trace name (its file in FOLDER) -> (steps, overrides beside OVERRIDES). The step count is the trace's length
(`optim.total_steps`: at a constant lr, only the curriculum's progress reads it)."""
OVERRIDES = (
    # The default warm start (200 supervised steps of 128) takes ~25 s alone; 30 of 32 (~1 s) give the answer format,
    # so the reward has a signal from step 1 (accuracy ~0.1, mixed groups). The cache is fresh each run (`command`'s
    # warm_start.cache): the supervised pass is part of the trace, never a stale file.
    "warm_start.steps=30",
    "warm_start.batch_size=32",
    # What a run writes beside training, none of which changes a number of it:
    "eval.enabled=false",  # the held-out evaluation (~4 s a pass, three passes)
    "checkpoint.every=0",  # the default: one checkpoint, at the end
    "checkpoint.export_hf=false",
    "logging.plots=false",  # ~3 s of matplotlib
    "logging.tensorboard=false",
)
KEYS = ("actor/pg_loss", "actor/grad_norm", "reward", "accuracy", "response_length", "entropy")


def command(run_dir: Path | str, name: str = "default_grpo_cpu") -> list[str]:
    """The job, as `make run` starts it (torchrun via `python -m torch.distributed.run`), for trace `name`."""
    steps, extra = TRACES[name]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
        "-m", "trainer.main", f"logging.run_dir={run_dir}", f"warm_start.cache={Path(run_dir).parent / 'warm'}",
        f"optim.total_steps={steps}", *OVERRIDES, *extra,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    """What the numbers depend on beyond the code: a trace reproduces exactly only where all of these are equal."""
    import torch

    return {
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's vector kernels: AVX2, AVX512, ...
        # oneDNN and MKL choose their matmul kernels by vendor too: an AVX512 AMD EPYC and an AVX512 Intel Xeon sum
        # the same fp32 products in other orders (grad norms apart by ~4e-6 relative in the default trace)
        "cpu_vendor": _cpu_vendor(),
    }


def _cpu_vendor() -> str:
    """`vendor_id` of /proc/cpuinfo ("GenuineIntel", "AuthenticAMD"), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_job(tmp: Path, name: str = "default_grpo_cpu", *, timeout: int = 300) -> list[dict[str, float]]:
    """Runs trace `name`'s job in `tmp` (its run folder and warm-start cache); the trace: `KEYS` of each training
    row."""
    # TRITON_INTERPRET=0: the tests set it to 1 for themselves; `make run` has the compiled kernels' dispatch.
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = command(tmp / "run", name)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"the golden job failed (exit {out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-6000:]}")
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], **{k: r[k] for k in KEYS}} for r in rows if r.get("kind") is None]


def path_of(name: str) -> Path:
    return FOLDER / f"{name}.json"


def load(name: str = "default_grpo_cpu") -> dict:
    return json.loads(path_of(name).read_text())


def diff(golden: list[dict], got: list[dict], rel: float) -> list[str]:
    """The table of every value further than `rel` (relative; 0: any difference) from the golden one; [] if none."""
    lines = []
    if [r["step"] for r in got] != [r["step"] for r in golden]:
        lines.append(f"steps: golden {[r['step'] for r in golden]}, this run {[r['step'] for r in got]}")
    for g, r in zip(golden, got):
        for k in KEYS:
            a, b = g[k], r.get(k)
            far = b is None or a is None or not math.isclose(a, b, rel_tol=rel, abs_tol=0.0)
            if a != b and (rel == 0 or far):
                d = "-" if a is None or b is None else f"{abs(b - a) / max(abs(a), 1e-30):.2e}"
                lines.append(f"{g['step']:>4}  {k:<16} {a!r:>24} {b!r:>24} {d:>9}")
    if lines:
        lines.insert(0, f"{'step':>4}  {'key':<16} {'golden':>24} {'this run':>24} {'rel diff':>9}")
    return lines


def write(name: str = "default_grpo_cpu", path: Path | None = None) -> None:
    """Runs trace `name`'s job and writes the trace with a header saying how it was made."""
    path = path or path_of(name)
    steps, extra = TRACES[name]
    with tempfile.TemporaryDirectory(prefix="fastslow_golden_") as tmp:
        rows = run_job(Path(tmp), name)
    header = {
        "what": f"the built-in job's first {steps} steps on CPU (tests/test_golden.py reproduces them)",
        "command": "OMP_NUM_THREADS=1 TRITON_INTERPRET=0 python " + " ".join(command(Path("TMP", "run"), name)[1:]),
        "overrides": [f"optim.total_steps={steps}", *OVERRIDES, *extra],
        "overrides_why": "a warm start of 30 steps of 32 instead of 200 of 128 (time); eval, plots, TensorBoard "
        "and the HF export off (output, not training); see tests/_golden.py",
        "regenerate": REGENERATE,
        "environment": environment(),
        "written": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join("    " + json.dumps(r) for r in rows)  # one step a line: a diff reads step by step
    head = json.dumps(header, indent=2).replace("\n", "\n  ")
    path.write_text(f'{{\n  "header": {head},\n  "steps": [\n{body}\n  ]\n}}\n')
    print(f"wrote {path}: {len(rows)} steps")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(TRACES), help="traces to write (default: all)")
    for trace in parser.parse_args().names:
        write(trace)
