"""`make gpu-check`: everything worth learning from a scarce GPU, in one command of at most 8 minutes.

    python -m bench.gpu_check [--wheels gpu_wheels/] [--budget-s 480] [--dry-run]

On a machine with one NVIDIA GPU, as it is (no registry; its own torch, triton, transformers, checked and reported,
never replaced), in this order, each step in a subprocess under what is left of the time budget:
1. deps: the pure-Python test and benchmark tools it lacks, from a carried wheel folder (`bench.gpu_deps`);
2. the kernel tests, compiled (no `TRITON_INTERPRET`): every test file that imports `kernels`;
3. `pytest bench/ --benchmark-only`, one module at a time (a module past its time loses only itself), headline
   shapes first, with the device's measured matmul and copy ceilings;
4. a 20-step training job on the GPU: nccl, `model.dtype = "bfloat16"` (FSDP2 mixed precision), the hf engine;
   then 5 SFPO steps of it with `model.cpu_offload = true` (host shards, nccl + gloo, SFPO's reposition on the
   host); each reports its peak GPU memory per rank (one rank here);
5. the vLLM GPU tests (tests/test_vllm_gpu.py) when vllm imports.
Then it writes `bench/results/<device>_<date>.json` (the benchmarks' pytest-benchmark JSON, with a `gpu_check`
key holding this summary) and `.md` (the summary, then `bench.report`'s tables), and prints one screen: pass/fail
per step, the headline ratios, fractions of the ceilings, peak GPU memory. Exit 0 only when every step passed.
`--dry-run` prints the plan (deps found and missing, every command and its time cap) and runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import gpu_deps

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# The headline first: the log-prob/loss kernels are the update's cost, then the memory-bound kernels, the step.
BENCH_MODULES = ("test_linear_logprobs", "test_grpo_kl", "test_reposition", "test_step", "test_weight_sync")
# Time caps in seconds (each step also stops at the overall deadline); measured sizes on a CPU, guessed for a GPU.
CAPS = {"kernel tests": 120, "bench": 260, "trainer": 120, "trainer offload": 60, "vllm": 180}
TRAINER_ARGS = ("optim.total_steps=20", "model.dtype=bfloat16", "rollout.engine=hf", "logging.tensorboard=false")
OFFLOAD_ARGS = (*TRAINER_ARGS, "optim.total_steps=5", "model.cpu_offload=true", "algorithm.update=sfpo")


@dataclass
class Step:
    """One step's outcome: "pass", "fail" or "skip", a one-line detail, its seconds, and its numbers."""

    name: str
    status: str = "skip"
    detail: str = ""
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str | None]:
    """The versions of what the run depends on, as this python has them (None: not installed)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("torch", "triton", "transformers", "vllm", "flash-attn", "liger-kernel", "numpy", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def version_warnings(found: dict[str, str | None]) -> list[str]:
    """What this machine's versions mean for the run (the project's floors are pyproject.toml's)."""
    notes = []
    floors = {"torch": (2, 6), "transformers": (4, 51), "triton": (3, 2)}
    for dist, floor in floors.items():
        v = found.get(dist)
        if v is None:
            notes.append(f"{dist} is not installed: steps that need it fail")
            continue
        nums = tuple(int(x) for x in re.findall(r"\d+", v)[:2])
        if nums < floor:
            notes.append(f"{dist} {v} is below the project's floor {'.'.join(map(str, floor))}")
    if found.get("vllm") is None:
        notes.append("no vllm: the vLLM GPU tests are skipped")
    return notes


def junit_counts(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped from a pytest `--junitxml` file (zeros when it is missing)."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if not path.exists():
        return counts
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def _pytest_step(step: Step, args: list[str], env: dict[str, str], timeout: float, junit: Path) -> None:
    proc = _run([sys.executable, "-m", "pytest", *args, f"--junitxml={junit}"], env, timeout)
    counts = junit_counts(junit)
    step.data.update(counts)
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    step.detail = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    if proc is None:
        step.status, step.detail = "fail", f"timed out after {timeout:.0f} s; {step.detail}"
    else:
        step.status = "pass" if proc.returncode == 0 else "fail"
        if proc.returncode not in (0, 1) or counts["tests"] == 0:  # not a test failure: say what it was
            step.detail += f" (exit {proc.returncode}: {_last_line(proc.stdout + proc.stderr)})"
        step.data["tail"] = (proc.stdout + proc.stderr)[-2000:]


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess | None:
    """The finished process, or None when it ran past `timeout` (then it is killed with its children)."""
    if timeout <= 0:
        return None
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc (torchrun's workers sit in sessions of their own, out of
    reach of a process-group kill)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid`'s process group and every descendant, wherever their session (the group is stopped first, so
    nothing new is started between the look-up and the kill)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGSTOP)
    tree = _descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, 9)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def merge_bench(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One pytest-benchmark JSON from the per-module ones (machine and commit info from the first)."""
    if not parts:
        return {"benchmarks": []}
    merged = {k: v for k, v in parts[0].items() if k != "benchmarks"}
    merged["benchmarks"] = [b for p in parts for b in p.get("benchmarks", [])]
    return merged


def headline(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per case with an `ours` row: ours' median, rate and fraction of the ceiling, and each baseline / ours."""
    from bench.report import group_rows, load_rows

    out = []
    for (group, mode, shape, dtype), members in group_rows(load_rows(data)).items():
        ours = next((r for r in members if r["provider"] == "ours"), None)
        if ours is None:
            continue
        t = float(ours["median_ms"])
        ratios = {r["provider"]: float(r["median_ms"]) / t for r in members if r["provider"] != "ours" and t > 0}
        out.append({
            "case": f"{group} {mode} {shape} {dtype}".strip(), "ours_ms": t, "rate": ours.get("rate"),
            "rate_unit": ours.get("rate_unit", ""), "fraction_of_ceiling": ours.get("fraction_of_ceiling"),
            "peak_extra_bytes": ours.get("peak_extra_bytes"), "ratios": ratios,
        })  # fmt: skip
    return out


def trainer_summary(metrics_file: Path) -> dict[str, Any]:
    """Steps done, the last step's numbers and the peak GPU memory of a run's metrics.jsonl."""
    if not metrics_file.exists():
        return {"steps": 0}
    lines = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
    rows = [r for r in lines if "step" in r and "actor/grad_norm" in r]
    if not rows:
        return {"steps": 0}
    last = rows[-1]
    finite = all(v == v and abs(v) != float("inf") for r in rows for v in r.values() if isinstance(v, float))
    return {
        "steps": len(rows),
        "finite": finite,
        "skipped_updates": sum(r.get("actor/skipped_updates", 0) for r in rows),
        "tokens_per_s": last.get("tokens_per_s"),
        "accuracy_last": last.get("accuracy"),
        "gpu_peak_alloc_gb": max((r.get("mem/gpu_peak_alloc_gb") or 0.0) for r in rows),
    }


class MemorySampler:
    """Peak device-wide GPU memory in use (every process's) while the steps run, sampled twice a second."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        import torch

        if torch.cuda.is_available():
            total = torch.cuda.mem_get_info()[1]

            def sample() -> None:
                while not self._stop.wait(0.5):
                    self.peak_bytes = max(self.peak_bytes, total - torch.cuda.mem_get_info()[0])

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def summary_lines(info: dict[str, Any], steps: list[Step], heads: list[dict[str, Any]]) -> list[str]:
    """The one-screen summary (also the top of the markdown)."""
    v = info["versions"]
    lines = [
        f"fastslow gpu-check: {info['device']} | torch {v.get('torch')} triton {v.get('triton')} "
        f"transformers {v.get('transformers')} vllm {v.get('vllm') or '-'} | {info['date']}",
        *info.get("deps", []),
        *(f"note: {n}" for n in info.get("notes", [])),
        "",
    ]
    for s in steps:
        lines.append(f"[{s.status.upper():4}] {s.name:<34} {s.detail}  ({s.seconds:.0f} s)")
    ceil = info.get("ceilings") or {}
    if ceil:
        lines.append(
            f"ceilings: matmul {ceil.get('matmul_tflops', 0):.4g} TFLOP/s, copy {ceil.get('copy_gbps', 0):.4g} GB/s"
        )
    if heads:
        lines += ["", "case | ours ms | ours rate (fraction of ceiling) | baseline time / ours"]
        for h in heads:
            frac = f" ({h['fraction_of_ceiling']:.0%})" if h.get("fraction_of_ceiling") is not None else ""
            rate = f"{h['rate']:.4g} {h['rate_unit']}{frac}" if h.get("rate") is not None else "-"
            ratios = ", ".join(f"{p} {r:.2f}x" for p, r in h["ratios"].items()) or "-"
            lines.append(f"{h['case']} | {h['ours_ms']:.3g} | {rate} | {ratios}")
    if info.get("peak_gpu_bytes"):
        lines.append(f"peak GPU memory in use (all processes): {info['peak_gpu_bytes'] / 2**30:.1f} GiB")
    verdict = "PASS" if steps and all(s.status in ("pass", "skip") for s in steps) else "FAIL"
    lines.append(f"gpu-check: {verdict}")
    return lines


def _env(deps_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels, never interpreted
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(deps_dir), env.get("PYTHONPATH")]))
    env.update(PYTHONUNBUFFERED="1", TRITON_DEFAULT_FP_FUSION=env.get("TRITON_DEFAULT_FP_FUSION", "1"))
    return env


def _trainer_step(title: str, cmd: list[str], run_dir: Path, want: int, env: dict[str, str], cap: float) -> Step:
    """One training job: passes when it exits 0 after `want` finite steps; its detail gives the GPU peak."""
    t0 = time.monotonic()
    step = Step(title)
    proc = _run(cmd, env, cap)
    summary = trainer_summary(run_dir / "metrics.jsonl")
    step.data = summary
    ok = proc is not None and proc.returncode == 0 and summary["steps"] == want and summary.get("finite")
    step.status = "pass" if ok else "fail"
    step.detail = (
        f"{summary['steps']} steps, {summary.get('tokens_per_s') or 0:.0f} tokens/s, "
        f"GPU peak {summary.get('gpu_peak_alloc_gb') or 0:.2f} GiB"
    )
    if proc is None:
        step.detail = "timed out; " + step.detail
    elif proc.returncode != 0:
        step.detail = f"exit {proc.returncode}: {_last_line(proc.stderr or proc.stdout)}"
        step.data["tail"] = (proc.stdout + proc.stderr)[-3000:]
    step.seconds = time.monotonic() - t0
    return step


def plan(work: Path) -> list[tuple[str, list[str]]]:
    """Every command the check runs, by step (pytest's junit and benchmark paths under `work`)."""
    from bench.triton_compile import kernel_test_files

    py = [sys.executable, "-m", "pytest"]
    cmds = [("kernel tests", [*py, *kernel_test_files(), "-q", "-p", "no:cacheprovider", "-m",
                              "not slow and not distributed"])]  # fmt: skip
    for m in BENCH_MODULES:
        cmds.append(("bench", [*py, f"bench/{m}.py", "--benchmark-only", f"--benchmark-json={work / m}.json",
                               "-q", "-p", "no:cacheprovider"]))  # fmt: skip
    cmds.append(("trainer", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                             "-m", "trainer.main", f"logging.run_dir={work / 'run'}", *TRAINER_ARGS]))  # fmt: skip
    cmds.append(("trainer offload", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node=1", "-m", "trainer.main",
                                     f"logging.run_dir={work / 'run_offload'}", *OFFLOAD_ARGS]))  # fmt: skip
    cmds.append(("vllm", [*py, "tests/test_vllm_gpu.py", "-q", "-p", "no:cacheprovider"]))
    return cmds


def run_steps(work: Path, env: dict[str, str], deadline: float, has_vllm: bool) -> tuple[list[Step], list[dict]]:
    """Runs the plan; returns the steps and the per-module benchmark JSONs."""
    steps: list[Step] = []
    bench_parts: list[dict] = []
    bench = Step("bench (pytest bench/ --benchmark-only)", data={"modules": {}})
    by_step: dict[str, list[list[str]]] = {}
    for name, cmd in plan(work):
        by_step.setdefault(name, []).append(cmd)

    def left(cap: float) -> float:
        return min(cap, deadline - time.monotonic())

    t0 = time.monotonic()
    kernel = Step("kernel tests (compiled)")
    _pytest_step(kernel, by_step["kernel tests"][0][3:], env, left(CAPS["kernel tests"]), work / "kernels.xml")
    kernel.seconds = time.monotonic() - t0
    steps.append(kernel)

    t0 = time.monotonic()
    bench_end = t0 + CAPS["bench"]
    statuses = []
    for m, cmd in zip(BENCH_MODULES, by_step["bench"]):
        part = Step(m)
        _pytest_step(part, cmd[3:], env, min(bench_end, deadline) - time.monotonic(), work / f"{m}.xml")
        bench.data["modules"][m] = part.detail
        statuses.append(part.status)
        if (work / f"{m}.json").exists():
            bench_parts.append(json.loads((work / f"{m}.json").read_text()))
    bench.status = "pass" if statuses and all(s == "pass" for s in statuses) else "fail"
    bench.detail = "; ".join(f"{m.removeprefix('test_')}: {d}" for m, d in bench.data["modules"].items())
    bench.seconds = time.monotonic() - t0
    steps.append(bench)

    runs = (("trainer", "trainer: 20 steps, nccl, bf16, hf engine", "run", 20),
            ("trainer offload", "trainer offload: 5 SFPO steps, model.cpu_offload", "run_offload", 5))  # fmt: skip
    for key, title, folder, want in runs:
        steps.append(_trainer_step(title, by_step[key][0], work / folder, want, env, left(CAPS[key])))

    vllm = Step("vLLM GPU tests")
    if has_vllm:
        t0 = time.monotonic()
        _pytest_step(vllm, by_step["vllm"][0][3:], env, left(CAPS["vllm"]), work / "vllm.xml")
        vllm.seconds = time.monotonic() - t0
    else:
        vllm.detail = "vllm does not import here"
    steps.append(vllm)
    return steps, bench_parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=Path(os.environ.get("FASTSLOW_WHEELS", ROOT / "gpu_wheels")))
    parser.add_argument("--deps-dir", type=Path, default=ROOT / ".gpu_deps", help="where missing wheels go")
    parser.add_argument("--budget-s", type=float, default=480.0, help="overall wall-time budget")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    found = versions()
    deps = gpu_deps.install(args.wheels, args.deps_dir, dry_run=args.dry_run)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastslow_gpu_check_{os.getpid()}"
    if args.dry_run:
        print("\n".join([f"versions: {found}", *deps.lines(), *version_warnings(found)]))
        for name, cmd in plan(work):
            print(f"[{name}, cap {CAPS[name]} s] {' '.join(cmd)}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU (torch.cuda.is_available() is False); --dry-run shows the plan")
        return 2
    from bench._harness import ceilings, results_stem

    work.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(dev)
    info: dict[str, Any] = {
        "device": f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)",
        "date": time.strftime("%Y-%m-%dT%H%MZ", time.gmtime()), "versions": found, "deps": deps.lines(),
        "notes": version_warnings(found),
    }  # fmt: skip
    env = _env(args.deps_dir)
    with MemorySampler() as mem:
        steps, parts = run_steps(work, env, deadline, has_vllm=found.get("vllm") is not None)
    info["peak_gpu_bytes"] = mem.peak_bytes
    merged = merge_bench(parts)
    rows = merged["benchmarks"]
    info["ceilings"] = (rows[0].get("extra_info") or {}).get("ceilings") if rows else dict(ceilings(dev))
    heads = headline(merged)
    lines = summary_lines(info, steps, heads)
    merged["gpu_check"] = {"info": info, "steps": [asdict(s) for s in steps], "headline": heads}
    stem = args.out / results_stem(dev)
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(merged, indent=1) + "\n")
    md = ["# gpu-check", "", "```", *lines, "```", ""]
    if rows:
        from bench.report import render

        md.append(render(merged))
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join([*lines, f"wrote {stem}.json and {stem}.md (step logs under {work})"]))
    return 0 if lines[-1].endswith("PASS") else 1


if __name__ == "__main__":
    raise SystemExit(main())
