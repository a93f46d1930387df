"""Compile every recorded Triton launch for real GPU targets on any machine, and report what each kernel costs.

Triton's own compiler (with the `ptxas` bundled in the triton wheel) builds a cubin for a named target without a
GPU: `triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32), options=...)`.
For each recorded launch (`bench.triton_launches`) and each target this gives: whether it compiles, registers per
thread and spill stores/loads (ptxas' verbose log, the same `ptxas -v` run Triton makes), shared memory and
num_warps (the kernel's metadata). Every compile runs in a fresh Triton cache so that ptxas does run and its log
is there to read (0.2-0.6 s per kernel and target on one core); the resulting row is kept under Triton's cache
folder (`~/.triton/fastslow_compile/`, keyed by Triton's source hash, target, options and version), so a rerun
compiles only the kernels that changed. `FASTSLOW_COMPILE_CACHE=0` turns that off, `=DIR` moves it;
`FASTSLOW_COMPILE_WORKERS` sets the processes (default: the cores, at most 8).

    python -m bench.triton_compile record    # run the kernel tests, write tests/triton_launches.json
    python -m bench.triton_compile report    # compile those for every target, write bench/results/triton_compile.md
    python -m bench.triton_compile compile --launches FILE --json OUT   # what tests/test_triton_compile.py runs

`make compile-report` runs `record` then `report`. The compiling commands must run without `TRITON_INTERPRET`
(under it `@triton.jit` gives interpreter objects that cannot be compiled); `main` refuses to run with it set.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import triton_launches
from fastslow.kernels._triton import tl, triton

# sm_80 (A100), sm_90 (H100/H200), sm_100 (B200): a target the bundled toolchain cannot build is reported as skipped.
TARGETS = (80, 90, 100)
REPORT_FILE = Path(__file__).resolve().parent / "results" / "triton_compile.md"
_ROOT = Path(__file__).resolve().parent.parent
_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@triton.jit
def _probe_kernel(x_ptr, BLOCK: tl.constexpr):
    """A trivial kernel: a target it does not compile for is one the bundled toolchain cannot build."""
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs) + 1.0)


def _jit_function(qualified: str) -> Any:
    module, name = qualified.split(":")
    fn = getattr(importlib.import_module(module), name)
    if fn.__class__.__name__ != "JITFunction":
        raise RuntimeError(f"{qualified} is a {type(fn).__name__}, not a JITFunction: is TRITON_INTERPRET set?")
    return fn


def _decode_constexpr(value: Any) -> Any:
    import triton.language as tl

    if isinstance(value, dict) and set(value) == {"dtype"}:
        return tl.dtype(value["dtype"])
    return value


def _source(record: dict[str, Any], backend: Any) -> Any:
    """The `ASTSource` the compiled launcher would build for this launch."""
    from triton.compiler import ASTSource

    fn = _jit_function(record["kernel"])
    signature = {name: record["signature"][name] for name in fn.arg_names}  # in parameter order
    # in parameter order, as the launcher builds them (the source's hash, hence the cache key, depends on it)
    consts, given = record["constexprs"], record["attrs"]
    constexprs = {(i,): _decode_constexpr(consts[k]) for i, k in enumerate(fn.arg_names) if k in consts}
    attrs = {(i,): backend.parse_attr(given[k]) for i, k in enumerate(fn.arg_names) if k in given}
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def variant(record: dict[str, Any]) -> str:
    """A short human name for one launch: its constexprs, then its pointer dtypes ("BLOCK=1024 | fp32,bf16")."""
    consts = " ".join(f"{k}={_short(v)}" for k, v in sorted(record["constexprs"].items()))
    ptrs = ",".join(t[1:] for t in record["signature"].values() if t.startswith("*"))
    aligned = "" if all(record["attrs"].get(k) for k, t in record["signature"].items() if t.startswith("*")) else " u"
    return f"{consts} | {ptrs}{aligned}"


def _short(value: Any) -> str:
    return value["dtype"] if isinstance(value, dict) else str(value)


def compiler_problem() -> str | None:
    """Why this triton cannot compile for a named target here (None: it can); checked before compiling anything."""
    try:
        from triton import knobs
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as e:
        return f"triton {triton.__version__} lacks {e.name or e}: its compiler cannot be driven for a named target"
    if not (hasattr(knobs, "cache") and hasattr(knobs.cache, "scope") and hasattr(knobs, "nvidia")):
        return f"triton {triton.__version__} has no knobs.cache.scope / knobs.nvidia (written for triton >= 3.9)"
    if not hasattr(knobs.nvidia, "dump_ptxas_log"):
        return f"triton {triton.__version__} cannot print ptxas' log (knobs.nvidia.dump_ptxas_log)"
    return None


def compile_one(record: dict[str, Any], capability: int) -> dict[str, Any]:
    """Compile one launch for `sm_<capability>`; the row of the report (with "error" set when it failed)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", capability, 32)
    row: dict[str, Any] = {
        "kernel": record["kernel"].split(":")[1],
        "variant": variant(record),
        "target": f"sm_{capability}",
        "num_warps": record["options"].get("num_warps", 4),
    }
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        src = _source(record, make_backend(target))
        cached = _cache_path(src, capability, record["options"])
        if cached is not None and cached.exists():
            return {**row, **json.loads(cached.read_text()), "cached": True}
        with (
            tempfile.TemporaryDirectory() as cache,
            knobs.cache.scope(),
            knobs.nvidia.scope(),
            contextlib.redirect_stdout(log),
        ):
            knobs.cache.dir = cache  # fresh cache: ptxas runs, so its -v log exists
            knobs.nvidia.dump_ptxas_log = True
            kernel = triton.compile(src, target=target, options=dict(record["options"]))
    except Exception as e:  # every failure is a finding of the report
        row["error"] = f"{type(e).__name__}: {str(e).strip()[:2000]}"
        return row
    text = log.getvalue()
    regs, spills = _REGS.search(text), _SPILLS.search(text)
    row.update(
        registers=int(regs.group(1)) if regs else None,
        stack_bytes=int(spills.group(1)) if spills else None,
        spill_stores=int(spills.group(2)) if spills else None,
        spill_loads=int(spills.group(3)) if spills else None,
        shared=int(kernel.metadata.shared),
        num_warps=int(kernel.metadata.num_warps),
        seconds=round(time.perf_counter() - t0, 3),
    )
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: v for k, v in row.items() if k not in ("kernel", "variant", "target")}))
        tmp.replace(cached)
    return row


def _cache_path(src: Any, capability: int, options: dict[str, Any]) -> Path | None:
    """Where the result of this compile is kept between runs (None with `FASTSLOW_COMPILE_CACHE=0`).

    The key is Triton's own source hash (the kernel's code and every function it calls, the signature, constexprs
    and attributes) with the target, the options and the triton version: a changed kernel is compiled again.
    """
    import hashlib

    from triton import knobs

    where = os.environ.get("FASTSLOW_COMPILE_CACHE", "")
    if where == "0":
        return None
    base = Path(where) if where else Path(knobs.cache.dir).parent / "fastslow_compile"
    key = f"{src.hash()}-{capability}-{json.dumps(options, sort_keys=True)}-{triton.__version__}"
    return base / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def _compile_job(job: tuple[dict[str, Any], int]) -> dict[str, Any]:
    return compile_one(*job)


def supported_targets(targets: tuple[int, ...] = TARGETS) -> tuple[list[int], dict[int, str]]:
    """The targets this triton can build (a trivial kernel compiles), and why the others cannot."""
    probe = {
        "kernel": "bench.triton_compile:_probe_kernel",
        "signature": {"x_ptr": "*fp32", "BLOCK": "constexpr"},
        "constexprs": {"BLOCK": 128},
        "attrs": {},
        "options": {"num_warps": 4},
    }
    ok, skipped = [], {}
    for cap in targets:
        row = compile_one(probe, cap)
        if "error" in row:
            skipped[cap] = row["error"].splitlines()[0][:200]
        else:
            ok.append(cap)
    return ok, skipped


def compile_all(records: list[dict[str, Any]], targets: tuple[int, ...] = TARGETS) -> dict[str, Any]:
    """Every record for every supported target: {"rows": [...], "skipped_targets": {...}, versions}."""
    ok, skipped = supported_targets(targets)
    jobs = [(r, cap) for r in records for cap in ok]
    workers = min(len(jobs), int(os.environ.get("FASTSLOW_COMPILE_WORKERS", min(os.cpu_count() or 1, 8))))
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_compile_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        rows = [compile_one(r, cap) for r, cap in jobs]
    return {
        "triton": triton.__version__,
        "targets": [f"sm_{c}" for c in ok],
        "skipped_targets": {f"sm_{c}": why for c, why in skipped.items()},
        "launches": len(records),
        "rows": rows,
    }


def spilling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose kernel spills registers to local memory."""
    return [r for r in rows if (r.get("spill_stores") or 0) + (r.get("spill_loads") or 0) > 0]


def markdown(result: dict[str, Any]) -> str:
    """The report: one summary row per kernel and target, then every variant."""
    rows = result["rows"]
    lines = [
        "# Triton kernels compiled for GPU targets (no GPU needed)",
        "",
        f"triton {result['triton']}, targets {', '.join(result['targets'])}; {result['launches']} distinct launches "
        "recorded from the kernel tests (`tests/triton_launches.json`), each compiled for every target with ptxas "
        "from the triton wheel. Regenerate with `make compile-report`. Registers are per thread; spills and stack "
        "in bytes per thread (ptxas -v); shared memory in bytes per program.",
        "",
    ]
    for t, why in result["skipped_targets"].items():
        lines.append(f"Skipped {t}: {why}")
    errors = [r for r in rows if "error" in r]
    lines += [f"**{len(errors)} compile errors, {len(spilling(rows))} spilling rows.**", ""]
    lines += [
        "| kernel | target | variants | registers (min-max) | spill stores / loads (max) | stack (max) | shared (max) "
        "| num_warps |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["target"]), []).append(r)
    for (kernel, target), group in sorted(groups.items(), key=lambda kv: (kv[0][0], int(kv[0][1][3:]))):
        good = [r for r in group if "error" not in r]
        if not good:
            lines.append(f"| {kernel} | {target} | {len(group)} | error | - | - | - | - |")
            continue
        regs = [r["registers"] or 0 for r in good]
        warps = sorted({r["num_warps"] for r in good})
        lines.append(
            f"| {kernel} | {target} | {len(group)} | {min(regs)}-{max(regs)} "
            f"| {max(r['spill_stores'] or 0 for r in good)} / {max(r['spill_loads'] or 0 for r in good)} "
            f"| {max(r['stack_bytes'] or 0 for r in good)} | {max(r['shared'] for r in good)} "
            f"| {','.join(map(str, warps))} |"
        )
    lines += [
        "",
        "## Every variant",
        "",
        "Registers per target (spill stores/loads in brackets when nonzero); "
        "`u` marks a launch with a pointer not 16-byte aligned.",
        "",
    ]
    targets = result["targets"]
    lines += ["| kernel | variant | " + " | ".join(targets) + " |", "|---|---|" + "---:|" * len(targets)]
    by_variant: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_variant.setdefault((r["kernel"], r["variant"]), {})[r["target"]] = r
    for (kernel, name), per_target in sorted(by_variant.items()):
        cells = [_cell(per_target.get(t)) for t in targets]
        lines.append(f"| {kernel} | `{name}` | " + " | ".join(cells) + " |")
    for r in errors:
        lines += ["", f"### error: {r['kernel']} `{r['variant']}` {r['target']}", "", "```", r["error"], "```"]
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "error"
    spills = (row["spill_stores"] or 0, row["spill_loads"] or 0)
    return f"{row['registers']}" + (f" ({spills[0]}/{spills[1]})" if any(spills) else "")


def kernel_test_files() -> list[str]:
    """The kernel tests: every tests/test_*.py that imports `kernels` (this compile test excepted), repo-relative."""
    return sorted(
        str(p.relative_to(_ROOT))
        for p in (_ROOT / "tests").glob("test_*.py")
        if p.name != "test_triton_compile.py" and re.search(r"^\s*(from|import) fastslow\.kernels", p.read_text(), re.M)
    )


def record(out: Path) -> int:
    """Run the kernel tests under the interpreter with the recorder on; write their launches to `out`."""
    tests = kernel_test_files()
    env = {**os.environ, "TRITON_INTERPRET": "1", "FASTSLOW_RECORD_TRITON": str(out)}
    cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", "-m",
           "not slow and not distributed and not gpu"]  # fmt: skip
    print("recording:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=_ROOT, env=env)
    print(f"{len(triton_launches.load(out))} distinct launches in {out}")
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.triton_compile", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("record", "report", "compile"))
    parser.add_argument("--launches", type=Path, default=triton_launches.RECORD_FILE, help="recorded launches")
    parser.add_argument("-o", "--output", type=Path, default=REPORT_FILE, help="markdown report (report)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--targets", default=",".join(map(str, TARGETS)), help="compute capabilities, comma-separated (80,90,100)"
    )
    args = parser.parse_args(argv)
    if args.command == "record":
        return record(args.launches)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    problem = compiler_problem()
    if problem:
        parser.error(problem)
    try:
        targets = tuple(int(t) for t in args.targets.split(",") if t.strip())
    except ValueError:
        parser.error(f"--targets {args.targets!r}: expected compute capabilities such as 80,90")
    result = compile_all(triton_launches.load(args.launches), targets)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.command == "report":
        args.output.write_text(markdown(result))
        print(f"wrote {args.output}")
    bad = [r for r in result["rows"] if "error" in r] + spilling(result["rows"])
    print(f"{len(result['rows'])} compiles, {len(bad)} failing or spilling", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
